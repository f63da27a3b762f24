"""`iclvsft`: task list, data export (JSONL and datasets), fingerprints, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iclvsft.cli import main
from iclvsft_tasks.data.splits import SplitSpec, build_split, fingerprints


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tasks_lists_all_five(capsys):
    code, out, _ = run(capsys, "tasks")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [
        "expression_pattern",
        "code_pattern",
        "boolean_pattern",
        "relation_pattern",
        "parity_pattern",
    ]


def test_export_jsonl_writes_the_split_items(tmp_path, capsys):
    out = tmp_path / "sub" / "relation.jsonl"
    code, _, err = run(
        capsys,
        "data",
        "export",
        "--task",
        "relation_pattern",
        "--split",
        "validation",
        "--size",
        "25",
        "--seed",
        "4",
        "--out",
        str(out),
    )
    assert code == 0 and "wrote 25" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = build_split(SplitSpec("relation_pattern", seed=4, validation_size=25), "validation")
    assert rows == [json.loads(json.dumps(item)) for item in expected]
    assert list(tmp_path.rglob(".*tmp")) == []


def test_export_hf_writes_a_datasets_directory(tmp_path, capsys):
    import datasets

    out = tmp_path / "hf"
    code, _, _ = run(
        capsys,
        "data",
        "export",
        "--task",
        "code_pattern",
        "--split",
        "test_broken",
        "--size",
        "10",
        "--format",
        "hf",
        "--out",
        str(out),
    )
    assert code == 0
    loaded = datasets.load_from_disk(str(out))
    assert len(loaded) == 10 and set(loaded[0]["meta"]) == {"program", "input"}
    assert not any(loaded["pattern"])


def test_fingerprint_prints_every_split(capsys):
    code, out, _ = run(capsys, "data", "fingerprint", "--task", "parity_pattern", "--train-size", "300", "--json")
    assert code == 0
    rows = json.loads(out)
    expected = fingerprints(SplitSpec("parity_pattern", train_size=300))
    assert {r["split"]: r["fingerprint"] for r in rows} == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "parity"], "unknown task 'parity'"),
        (["--task", "parity_pattern,code_pattern"], "one task at a time"),
        (["--task", "parity_pattern", "--size", "-5"], "positive integer"),
        (["--task", "parity_pattern", "--train-size", "-1"], "non-negative integer"),
        (["--task", "parity_pattern", "--size", "x"], "expected an integer"),
        (["--task", "parity_pattern", "--seed", "1.5"], "expected an integer"),
        (["--task", "parity_pattern", "--split", "dev"], "invalid choice"),
        (["--task", "parity_pattern", "--split", "train", "--size", "99999999"], "train size must be between"),
    ],
)
def test_bad_input_is_one_line_and_non_zero_and_writes_nothing(tmp_path, argv, message):
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "iclvsft.cli", "data", "export", *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_impossible_size_for_the_generator_is_reported(tmp_path, monkeypatch, capsys):
    import iclvsft_tasks.data.splits as splits
    from iclvsft_tasks.tasks.parity import ParityConfig

    # The default parity space is huge; shrink it to 27 questions through the task's settings.
    original = splits.SplitSpec.make_task

    def small_space(self):
        task = original(self)
        return type(task)(ParityConfig(count=(3, 3), value=(10, 15)))

    monkeypatch.setattr(splits.SplitSpec, "make_task", small_space)
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "data", "export", "--task", "parity_pattern", "--size", "100", "--out", str(out))
    assert code == 2 and "question space is too small" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "make_target, says",
    [
        (lambda tmp: tmp / "a_file" / "out.jsonl", "a_file is a file; choose another path"),
        (lambda tmp: tmp / "a_dir", "a_dir is a directory; give a file name"),
    ],
)
def test_unwritable_output_is_one_line_and_leaves_nothing(tmp_path, capsys, make_target, says):
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "a_dir").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(
        capsys, "data", "export", "--task", "parity_pattern", "--size", "3", "--out", str(make_target(tmp_path))
    )
    assert code == 2 and err.startswith("iclvsft: error: --out ") and len(err.strip().splitlines()) == 1
    assert says in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_failed_export_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    import iclvsft.cli as cli

    def explode(item, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.json, "dumps", explode)
    code, _, _ = run(capsys, "data", "export", "--task", "parity_pattern", "--size", "3", "--out", str(out))
    assert code == 130
    assert out.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_console_scripts_are_installed():
    bin_dir = Path(sys.executable).parent
    for script in ("iclvsft", "iclvsft-eval"):
        assert (bin_dir / script).exists(), script
    proc = subprocess.run([str(bin_dir / "iclvsft"), "tasks"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "parity_pattern" in proc.stdout


@pytest.mark.parametrize(
    ("command", "driven"),
    [("iclvsft", "lm_eval"), ("iclvsft-train", "trl"), ("iclvsft-eval", "lm_eval")],
)
def test_every_command_says_its_version(command, driven):
    import iclvsft_tasks

    proc = subprocess.run(
        [str(Path(sys.executable).parent / command), "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    assert line.startswith(f"{command} {iclvsft_tasks.__version__} (") and f"{driven} " in line


def test_iclvsft_eval_help_names_what_it_adds(capsys):
    from iclvsft_tasks import eval_cli

    assert eval_cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for addition in ("register", "unregister", "status", "--model iclvsft-hf", "--version", "usage: lm-eval"):
        assert addition in out


@pytest.mark.parametrize("command", ["status", "register", "--version"])
def test_iclvsft_eval_without_lm_eval_says_so_in_one_line(command):
    # sys.modules[name] = None makes both `import lm_eval` and find_spec("lm_eval") see no lm-eval.
    code = (
        "import sys; sys.modules['lm_eval'] = None; from iclvsft_tasks.eval_cli import main; "
        f"sys.exit(main([{command!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if command == "--version":
        assert proc.returncode == 0 and "lm_eval" in proc.stdout
        return
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr
        == "iclvsft-eval: error: lm_eval is not installed in this environment (pip install 'lm_eval>=0.4.13,<0.5')\n"
    )


#: A child that starts ``iclvsft data export`` and dies by SIGKILL in the middle of writing its output.
_KILLED_EXPORT = """
import os, signal, sys
import iclvsft.cli as cli, iclvsft_train.data as data, datasets

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

cli.json.dumps = data.json.dumps = die  # jsonl and trl rows go through json.dumps while the temp is open
datasets.Dataset.save_to_disk = die
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--task", "parity_pattern", "--size", "3"],
        ["--task", "parity_pattern", "--split", "train", "--size", "3", "--format", "hf"],
        ["--task", "parity_pattern", "--samples", "4", "--format", "trl"],
    ],
    ids=["jsonl", "hf", "trl"],
)
def test_the_temporaries_of_a_killed_export_are_removed_by_the_next_one(tmp_path, capsys, args):
    out = tmp_path / "export"
    argv = ["data", "export", *args, "--train-size", "40", "--out", str(out)]
    killed = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, *argv], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = [p.name for p in tmp_path.iterdir()]
    assert left and all(name.startswith(".export.") and name.endswith(".tmp") for name in left), left
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
