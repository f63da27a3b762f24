"""Every mistake a user can make on every command: one ``error:`` line that says what to do, exit
status 2, no traceback, nothing above it, and no file or folder left behind.

``CASES`` is the table; BENCHMARKS.md shows it (``test_the_documented_table_is_this_table`` keeps
the two in step; ``ICLVSFT_UPDATE_GOLDEN=1`` rewrites the documented copy). Commands run in-process
through their ``main(argv)``; placeholders in capitals are set up once by the ``world`` fixture.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "BENCHMARKS.md"
START, END = "<!-- bad-input-table:start -->", "<!-- bad-input-table:end -->"
LONG = "a" * 300  # one path component over the 255 bytes of common file systems
SMALL = ["--test-size", "2", "--test-broken-size", "2", "--validation-size", "2", "--train-size", "20"]


class Case(NamedTuple):
    what: str  # the input class, for the documented table
    command: str  # iclvsft, iclvsft-train, iclvsft-train merge, iclvsft-eval
    argv: tuple[str, ...]  # placeholders: MODEL, OTHER_MODEL, ADAPTER, BROKEN_* , *_YAML, A_FILE, LONG
    says: str  # a substring of the error line


def case(what: str, command: str, argv: str, says: str) -> Case:
    return Case(what, command, tuple(argv.split()), says)


EVAL_MODEL = "--model hf --model_args pretrained=MODEL --tasks parity_pattern_0shot"
TRAIN = "--model_name_or_path MODEL --output_dir run --dry-run"
CMP = "--model MODEL --tasks parity_pattern --shots 0 --ft-samples 4"

CASES: list[Case] = [
    # iclvsft data export / fingerprint / tasks
    case("task", "iclvsft", "data export --task nope --out x.jsonl", "unknown task 'nope'"),
    case("size", "iclvsft", "data export --task parity_pattern --size 0 --out x.jsonl", "expected a positive integer"),
    case("size", "iclvsft", "data export --task parity_pattern --size ten --out x.jsonl", "expected an integer"),
    case("size", "iclvsft", "data export --task parity_pattern --train-size -1 --out x.jsonl", "non-negative"),
    case("size", "iclvsft", "data export --task parity_pattern --size 10000000 --out x.jsonl", "between 0 and"),
    case("seed", "iclvsft", "data export --task parity_pattern --seed -4 --out x.jsonl", "non-negative integer"),
    case("flag", "iclvsft", "data export --task parity_pattern --out x.jsonl --sise 3", "unrecognized arguments"),
    case("flag", "iclvsft", "data export --task parity_pattern --out x.jsonl --samples 4", "belong to --format trl"),
    case("flag", "iclvsft", "data export --format trl --task parity_pattern --out d", "needs --samples"),
    case("path", "iclvsft", f"data export --task parity_pattern --size 3 --out {LONG}", "choose a shorter name"),
    case("path", "iclvsft", f"data export --format trl --task parity_pattern --samples 3 --out {LONG}", "shorter"),
    case("path", "iclvsft", "data export --task parity_pattern --size 3 --out A_FILE/x.jsonl", "is a file"),
    case("path", "iclvsft", "data export --task parity_pattern --size 3 --out /proc/iclvsft/x.jsonl", "cannot be"),
    case("task", "iclvsft", "data fingerprint --task parity_pattern,nope", "unknown task 'nope'"),
    case("flag", "iclvsft", "tasks --loud", "unrecognized arguments"),
    case("flag", "iclvsft", "nope", "invalid choice"),
    # iclvsft compare
    case("config", "iclvsft", "compare --config NON_UTF8_YAML", "is not UTF-8 text"),
    case("config", "iclvsft", "compare --config OUT5_YAML", "out must be a path, got 5"),
    case("config", "iclvsft", "compare --config LIST_YAML", "must hold a YAML mapping"),
    case("config", "iclvsft", "compare --config BAD_YAML", "is not valid YAML"),
    case("config", "iclvsft", "compare --config UNKNOWN_KEY_YAML", "unknown experiment setting(s) shotz"),
    case("config", "iclvsft", "compare --config nope.yaml", "not found (a YAML path, or one of: demo"),
    case("task", "iclvsft", f"compare {CMP} --tasks nope", "unknown task 'nope'"),
    case("shots", "iclvsft", "compare --model MODEL --shots 0,x", "shots must be comma-separated integers"),
    case("shots", "iclvsft", "compare --model MODEL --shots 30 --train-size 20", "need at least that many train"),
    case("size", "iclvsft", "compare --model MODEL --test-size 0", "test_size must be at least 1"),
    case("seed", "iclvsft", "compare --model MODEL --seed -1", "non-negative integer"),
    case("recipe", "iclvsft", "compare --model MODEL --recipe ../x", "unknown recipe '../x'"),
    case("device", "iclvsft", f"compare {CMP} --device tpu9", "unknown --device 'tpu9'"),
    case("device", "iclvsft", f"compare {CMP} --device cuda:7", "use --device cpu"),
    case("dtype", "iclvsft", f"compare {CMP} --dtype nn", "invalid choice: 'nn'"),
    case("model", "iclvsft", f"compare {CMP} --model ./nomodel --out o", "model directory ./nomodel does not exist"),
    case("model", "iclvsft", f"compare {CMP} --model nomodel --out o", "unknown model"),
    case("model", "iclvsft", f"compare {CMP} --model acme/nomodel --out o", "not in the Hugging Face cache"),
    case("model", "iclvsft", f"compare {CMP} --model ADAPTER --out o", "is a LoRA adapter, not a model"),
    case("path", "iclvsft", f"compare {CMP} --out {LONG}", "choose a shorter name"),
    case("path", "iclvsft", f"compare {CMP} --out A_FILE", "exists and is not a directory"),
    case("path", "iclvsft", f"compare {CMP} --out /proc/iclvsft/o", "choose a folder you can write to"),
    case("engine", "iclvsft", f"compare {CMP} --eval-backend vllm --out o", "pip install vllm"),
    case("engine", "iclvsft", f"compare {CMP} --out o --accelerate_config zero3", "pip install deepspeed"),
    case("flag", "iclvsft", f"compare {CMP} --eval-args ,=x --out o", "--eval-args must look like key=value"),
    case("flag", "iclvsft", f"compare {CMP} --jobs x --out o", "expected an integer"),
    # iclvsft circuits
    case("task", "iclvsft", "circuits --model MODEL --task nope", "unknown task 'nope'"),
    case("device", "iclvsft", "circuits --model MODEL --task parity_pattern --device tpu9 --out o", "unknown --device"),
    case("dtype", "iclvsft", "circuits --model MODEL --task parity_pattern --dtype nn", "invalid choice: 'nn'"),
    case("flag", "iclvsft", "circuits --model MODEL --task parity_pattern --top-fraction 2", "fraction in (0, 1]"),
    case("flag", "iclvsft", "circuits --model MODEL --task parity_pattern --items 0", "positive integer"),
    case("model", "iclvsft", "circuits --model ./nomodel --task parity_pattern --out o", "does not exist"),
    case("adapter", "iclvsft", "circuits --model MODEL --task parity_pattern --ft-checkpoint nope", "milestone"),
    case(
        "adapter",
        "iclvsft",
        "circuits --model OTHER_MODEL --task parity_pattern --ft-checkpoint ADAPTER --out o",
        "give the base model it was trained on",
    ),
    case(
        "adapter",
        "iclvsft",
        "circuits --model MODEL --task parity_pattern --ft-checkpoint OTHER_MODEL --out o",
        "another architecture than the base model",
    ),
    case("path", "iclvsft", f"circuits --model MODEL --task parity_pattern --out {LONG}", "choose a shorter name"),
    # iclvsft-train
    case("task", "iclvsft-train", f"--task nope --samples 4 {TRAIN}", "unknown task 'nope'"),
    case("samples", "iclvsft-train", f"--task parity_pattern --samples 0 {TRAIN}", "must be a positive integer"),
    case("samples", "iclvsft-train", f"--task parity_pattern --samples 6 {TRAIN}", "use 4 or 8"),
    case("samples", "iclvsft-train", f"--task parity_pattern --samples 8 --milestones 6 {TRAIN}", "nearest: 4 or 8"),
    case("seed", "iclvsft-train", f"--task parity_pattern --samples 4 --data-seed -3 {TRAIN}", "non-negative"),
    case("recipe", "iclvsft-train", f"--task parity_pattern --samples 4 --recipe big {TRAIN}", "invalid choice: 'big'"),
    case("flag", "iclvsft-train", f"--task parity_pattern --samples 4 --learnig_rate 1 {TRAIN}", "--learning_rate?"),
    case("flag", "iclvsft-train", f"--task parity_pattern --samples 4 --learning_rate abc {TRAIN}", "invalid float"),
    case("flag", "iclvsft-train", f"--task parity_pattern --samples 4 --max_steps 3 {TRAIN}", "max_steps is set by"),
    case("config", "iclvsft-train", f"--task parity_pattern --samples 4 --config nope.yaml {TRAIN}", "cannot read"),
    case("config", "iclvsft-train", f"--task parity_pattern --samples 4 --config NON_UTF8_YAML {TRAIN}", "UTF-8"),
    case("config", "iclvsft-train", f"--task parity_pattern --samples 4 --config LIST_YAML {TRAIN}", "YAML mapping"),
    case(
        "model",
        "iclvsft-train",
        "--task parity_pattern --samples 4 --model_name_or_path ./nomodel --output_dir run",
        "does not exist",
    ),
    case(
        "model",
        "iclvsft-train",
        "--task parity_pattern --samples 4 --model_name_or_path acme/nomodel --output_dir run",
        "not in the Hugging Face cache",
    ),
    case("path", "iclvsft-train", f"--task parity_pattern --samples 4 {TRAIN} --output_dir {LONG}", "shorter name"),
    case("path", "iclvsft-train", f"--task parity_pattern --samples 4 {TRAIN} --output_dir /proc/iclvsft/r", "cannot"),
    case("path", "iclvsft-train", f"--task parity_pattern --samples 4 {TRAIN} --output_dir A_FILE", "not a directory"),
    case("resume", "iclvsft-train", f"--task parity_pattern --samples 4 {TRAIN} --resume", "nothing to resume"),
    case("engine", "iclvsft-train", f"--task parity_pattern --samples 32 {TRAIN} --accelerate_config zero3", "pip"),
    case("engine", "iclvsft-train", f"--task parity_pattern --samples 4 {TRAIN} --accelerate_config zero9", "profile"),
    # iclvsft-train merge
    case("adapter", "iclvsft-train merge", "--adapter BROKEN_JSON_ADAPTER --out m", "is not valid JSON"),
    case("adapter", "iclvsft-train merge", "--adapter BROKEN_TYPES_ADAPTER --out m", "r must be int, got 'x'"),
    case("adapter", "iclvsft-train merge", "--adapter NO_WEIGHTS_ADAPTER --out m", "holds no adapter weights"),
    case("adapter", "iclvsft-train merge", "--adapter ADAPTER --base OTHER_MODEL --out m", "does not fit model"),
    case("adapter", "iclvsft-train merge", "--adapter nope --out m", "does not exist"),
    case("adapter", "iclvsft-train merge", "--adapter MODEL --out m", "a full fine-tune needs no merge"),
    case("model", "iclvsft-train merge", "--adapter ADAPTER --base ./nomodel --out m", "does not exist"),
    case("dtype", "iclvsft-train merge", "--adapter ADAPTER --out m --dtype nn", "unknown dtype 'nn'"),
    case("path", "iclvsft-train merge", f"--adapter ADAPTER --out {LONG}", "choose a shorter name"),
    # iclvsft-eval
    case("flag", "iclvsft-eval", f"{EVAL_MODEL} --metadata {{bad", "--metadata is not valid JSON"),
    case("flag", "iclvsft-eval", f"{EVAL_MODEL} --bogus 1", "unrecognized arguments: --bogus"),
    case("flag", "iclvsft-eval", "register now", "takes no arguments"),
    case("device", "iclvsft-eval", f"{EVAL_MODEL} --device tpu9", "unknown --device 'tpu9'"),
    case("path", "iclvsft-eval", f"{EVAL_MODEL} --output_path /proc/iclvsft/out", "choose a folder you can write to"),
    case("path", "iclvsft-eval", f"{EVAL_MODEL} --output_path {LONG}", "choose a shorter name"),
    case(
        "model",
        "iclvsft-eval",
        "--model hf --model_args pretrained=./nomodel --tasks parity_pattern_0shot",
        "model directory ./nomodel does not exist",
    ),
    case(
        "model",
        "iclvsft-eval",
        "--model hf --model_args pretrained=acme/nomodel --tasks parity_pattern_0shot",
        "not in the Hugging Face cache",
    ),
    case("task", "iclvsft-eval", "--model hf --model_args pretrained=MODEL --tasks nope_task", "Tasks not found"),
]


@pytest.fixture(scope="module")
def world(tiny_llama, tmp_path_factory) -> dict[str, str]:
    """The files the placeholders name: models, adapters (good and broken), YAMLs, a plain file."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("bad-input-world")
    torch.manual_seed(0)
    adapter = root / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    other = root / "other-model"
    sizes = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = LlamaConfig(vocab_size=64, **sizes)
    LlamaForCausalLM(config).save_pretrained(other)
    broken = {}
    for name in ("json", "types", "weights"):
        broken[name] = root / f"broken-{name}"
        shutil.copytree(adapter, broken[name])
    (broken["json"] / "adapter_config.json").write_text("{bad")
    settings = json.loads((broken["types"] / "adapter_config.json").read_text())
    (broken["types"] / "adapter_config.json").write_text(json.dumps({**settings, "r": "x"}))
    (broken["weights"] / "adapter_model.safetensors").unlink()
    files = {
        "NON_UTF8_YAML": b"tasks: [parity_pattern]\nname: \xff\xfe\n",
        "OUT5_YAML": b"out: 5\n",
        "LIST_YAML": b"- a\n- b\n",
        "BAD_YAML": b"tasks: [parity_pattern\n",
        "UNKNOWN_KEY_YAML": b"shotz: [0, 1]\n",
        "A_FILE": b"a plain file\n",
    }
    paths = {}
    for key, content in files.items():
        paths[key] = root / key.lower()
        paths[key].write_bytes(content)
    return {
        "MODEL": str(tiny_llama),
        "OTHER_MODEL": str(other),
        "ADAPTER": str(adapter),
        "BROKEN_JSON_ADAPTER": str(broken["json"]),
        "BROKEN_TYPES_ADAPTER": str(broken["types"]),
        "NO_WEIGHTS_ADAPTER": str(broken["weights"]),
        **{key: str(path) for key, path in paths.items()},
    }


def _main(command: str):
    if command == "iclvsft":
        from iclvsft.cli import main
    elif command == "iclvsft-eval":
        from iclvsft_tasks.eval_cli import main
    else:
        from iclvsft_train.cli import main

        if command == "iclvsft-train merge":
            return lambda argv: main(["merge", *argv])
    return main


def _argv(argv: tuple[str, ...], world: dict[str, str]) -> list[str]:
    pattern = re.compile("|".join(sorted(map(re.escape, world), key=len, reverse=True)))
    return [pattern.sub(lambda m: world[m.group(0)], arg) for arg in argv]


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _is_error_line(line: str, command: str) -> bool:
    return line.startswith(f"{command.split()[0]}") and ": error: " in line


@pytest.mark.parametrize("row", CASES, ids=[f"{c.command}:{' '.join(c.argv)[:60]}" for c in CASES])
def test_a_mistake_ends_in_one_error_line_and_writes_nothing(row, world, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [row.command])  # iclvsft-eval rewrites sys.argv for lm-eval
    before = _snapshot(tmp_path)
    try:
        code = _main(row.command)(_argv(row.argv, world))
    except SystemExit as exc:  # argparse's own exit
        code = exc.code
    _, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected the error line alone, got:\n{err}"
    assert _is_error_line(lines[0], row.command), lines[0]
    assert row.says in lines[0], lines[0]
    assert _snapshot(tmp_path) == before
    assert not [p for p in Path("/proc").glob("iclvsft*")]


#: Rows run again with -v / --verbose: the traceback (and library log lines) come above the same error line.
VERBOSE_ROWS = [
    (case("task", "iclvsft", "data export --task nope --out x.jsonl -v", "unknown task 'nope'"), "KeyError: 'nope'"),
    (case("task", "iclvsft", "-v circuits --model MODEL --task nope", "unknown task 'nope'"), "KeyError: 'nope'"),
    (
        case(
            "adapter", "iclvsft-train merge", "--adapter ADAPTER --base OTHER_MODEL --out m --verbose", "does not fit"
        ),
        "Traceback",
    ),
    (case("samples", "iclvsft-train", f"--task parity_pattern --samples 6 {TRAIN} -v", "use 4 or 8"), "Traceback"),
    (case("device", "iclvsft-eval", f"{EVAL_MODEL} --device tpu9 --verbose", "unknown --device"), "RuntimeError"),
]


@pytest.mark.parametrize(
    "row,shows", VERBOSE_ROWS, ids=[f"{r.command}:{' '.join(r.argv)[:60]}" for r, _ in VERBOSE_ROWS]
)
def test_verbose_shows_the_traceback_and_logs_above_the_same_error_line(
    row, shows, world, tmp_path, monkeypatch, capfd
):
    from iclvsft_tasks.cliutil import verbose

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [row.command])
    code = _main(row.command)(_argv(row.argv, world))
    _, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback (most recent call last)" in err and shows in err, err[-3000:]
    assert _is_error_line(lines[-1], row.command) and row.says in lines[-1], lines[-1]
    assert list(tmp_path.iterdir()) == []
    assert not verbose(), "-v outlived its command"


@pytest.mark.parametrize("flags", [[], ["--verbose"]], ids=["plain", "verbose"])
def test_eval_uncached_hub_id_in_a_real_process(flags, tmp_path):
    """One line plain; lm-eval's INFO lines and the traceback above the same line with --verbose. In a real
    process: in-process, lm-eval's log handler keeps the stderr of the first test that configured it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LMEVAL_LOG_LEVEL", None)
    argv = ["--model", "hf", "--model_args", "pretrained=acme/nomodel", "--tasks", "parity_pattern_0shot", *flags]
    code = "import sys; from iclvsft_tasks.eval_cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[-1].startswith("iclvsft-eval: error: --model_args pretrained: model acme/nomodel"), lines[-1]
    assert "not in the Hugging Face cache" in lines[-1] and list(tmp_path.iterdir()) == []
    if flags:
        assert " INFO " in proc.stderr and "Traceback (most recent call last)" in proc.stderr, proc.stderr[-3000:]
    else:
        assert len(lines) == 1, proc.stderr[-3000:]


def test_verbose_is_ours_and_not_passed_on(tiny_llama, tmp_path, capfd):
    """iclvsft-train consumes -v (trl sft has none): the dry-run's trl command does not carry it."""
    from iclvsft_train.cli import main

    argv = ["--task", "parity_pattern", "--samples", "4", "--model_name_or_path", str(tiny_llama)]
    assert main([*argv, "--output_dir", str(tmp_path / "run"), "--dry-run", "-v", *SMALL]) == 0
    out, err = capfd.readouterr()
    assert "trl sft" in out + err and " -v" not in out + err and "--verbose" not in out + err


def test_trl_usage_is_cut_to_its_error_line_in_a_real_process(tiny_llama, tmp_path):
    """The case that printed TRL's 150-line usage, as a console script (not through capfd)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = ["--task", "parity_pattern", "--samples", "4", "--model_name_or_path", str(tiny_llama)]
    argv += ["--output_dir", "run", "--learning_rate", "abc"]
    code = "import sys; from iclvsft_train.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("iclvsft-train: error: trl sft rejects the flags: argument --learning_rate")
    assert list(tmp_path.iterdir()) == []


def test_iclvsft_hf_says_once_that_a_batch_size_turns_its_fast_path_off(tiny_llama, caplog):
    from iclvsft_tasks.backend.hflm import IclvsftHFLM

    with caplog.at_level("WARNING"):
        IclvsftHFLM(pretrained=str(tiny_llama), batch_size=4, device="cpu")
        IclvsftHFLM(pretrained=str(tiny_llama), batch_size=1, device="cpu")
    said = [r.getMessage() for r in caplog.records if "fast path" in r.getMessage()]
    assert len(said) == 1 and "batch_size=4" in said[0] and "--batch_size 1" in said[0]


def documented_table() -> str:
    """The Markdown table of ``CASES`` that BENCHMARKS.md shows."""
    rows = ["| command | input | class | the one error line contains |", "|---|---|---|---|"]
    for row in CASES:
        shown = " ".join("LONG_NAME" if arg == LONG else arg.replace(LONG, "LONG_NAME") for arg in row.argv)
        shown = shown.replace("|", "\\|")
        rows.append(f"| `{row.command}` | `{shown}` | {row.what} | `{row.says.replace('|', chr(92) + '|')}` |")
    return "\n".join(rows)


def test_the_documented_table_is_this_table():
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text, f"{DOC.name} lacks the {START} ... {END} section"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    wanted = f"{head}{START}\n{documented_table()}\n{END}{tail}"
    if os.environ.get("ICLVSFT_UPDATE_GOLDEN"):
        DOC.write_text(wanted, encoding="utf-8")
        return
    assert text == wanted, "BENCHMARKS.md's bad-input table is stale: rerun with ICLVSFT_UPDATE_GOLDEN=1"
