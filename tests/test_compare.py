"""iclvsft compare end to end on a tiny random Llama: cells, fine-tuning milestones, resumption,
fingerprint invalidation, results, plots and report; plus its bad-input paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iclvsft.compare import run as compare_run
from iclvsft.compare.config import Experiment, load_experiment

BIN = Path(sys.executable).parent
SMALL = {
    "tasks": ["parity_pattern"],
    "shots": [0, 1, 3],
    "test_size": 6,
    "test_broken_size": 6,
    "validation_size": 6,
    "train_size": 60,
    "draws": 2,
}


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _compare(args, timeout=900, **kwargs):
    return subprocess.run(
        [str(BIN / "iclvsft"), "compare", *args], capture_output=True, text=True, timeout=timeout, env=_env(), **kwargs
    )


def _flags(model: Path, out: Path, ft: str = "8,16") -> list[str]:
    return [
        "--model",
        str(model),
        "--tasks",
        "parity_pattern",
        "--shots",
        "0,1,3",
        "--ft-samples",
        ft,
        "--test-size",
        "6",
        "--test-broken-size",
        "6",
        "--validation-size",
        "6",
        "--train-size",
        "60",
        "--draws",
        "2",
        "--out",
        str(out),
    ]


def _stable(records):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "checkpoint")} for r in records]


@pytest.fixture(scope="module")
def full_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    proc = _compare([*_flags(tiny_llama, out), "--learning_rate", "3e-3"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_compare_writes_every_cell_result_plot_and_report(full_run):
    out, proc = full_run
    records = json.loads((out / "results.json").read_text())
    icl = [r for r in records if r["condition"] == "icl"]
    ft = [r for r in records if r["condition"] == "ft"]
    assert len(icl) == (1 + 2 + 2) * 3 and len(ft) == 2 * 3  # k=0 once, k=1 and k=3 in 2 draws each
    assert {r["split"] for r in records} == {"validation", "test", "test_broken"}
    for r in records:
        assert set(r) >= {
            "condition",
            "model",
            "task",
            "split",
            "shots",
            "ft_samples",
            "n",
            "accuracy",
            "ci_low",
            "ci_high",
            "fingerprint",
            "prompt_tokens",
            "train_tokens",
            "wall_time_s",
            "predictions",
        }
        assert r["n"] == 6 and r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        rows = [json.loads(line) for line in (out / r["predictions"]).read_text().splitlines()]
        assert len(rows) == 6 and sum(row["correct"] for row in rows) == r["correct"]
    assert all(r["train_tokens"] > 0 for r in ft) and all(r["train_tokens"] == 0 for r in icl)
    by_k = {r["shots"]: r["prompt_tokens"] for r in icl if r["split"] == "test" and r["draw"] in (0, 1)}
    assert by_k[0] < by_k[1] < by_k[3]
    demos = {(r["shots"], r["draw"]): r["demo_ids"] for r in icl if r["split"] == "validation" and r["shots"]}
    assert demos[(3, 1)][:1] == demos[(1, 1)] and demos[(3, 2)][:1] == demos[(1, 2)]  # nested across k
    assert demos[(3, 1)] != demos[(3, 2)] and len(demos[(3, 1)]) == 3
    assert {r["demos"] for r in icl} == {None, "fixed"} and {r["draw"] for r in ft} == {0}
    test_items = {
        json.loads(line)["id"]
        for r in records
        if r["split"] == "test"
        for line in (out / r["predictions"]).read_text().splitlines()
    }
    assert len(test_items) == 6  # every condition is scored on the same items
    assert (out / "results.csv").read_text().count("\n") == len(records) + 1
    import matplotlib.image

    image = matplotlib.image.imread(out / "plots" / "parity_pattern.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    report = (out / "report.md").read_text()
    assert "plots/parity_pattern.png" in report and "validation" in report and "McNemar" in report
    assert "report.md" in proc.stdout
    import torch

    machine = json.loads((out / "run.json").read_text())["machine"]
    assert f"({torch.backends.cpu.get_cpu_capability()})" in machine  # what decides bfloat16's speed on a CPU
    for milestone in ("samples-8", "samples-16"):
        assert list((out / "ft").glob(f"*/milestones/{milestone}/adapter_model.safetensors"))


def test_a_rerun_skips_finished_cells_and_gives_the_same_results(full_run, tiny_llama):
    out, _ = full_run
    before = (out / "results.json").read_text()
    started = time.perf_counter()
    proc = _compare(_flags(tiny_llama, out) + ["--learning_rate", "3e-3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.json").read_text() == before
    assert "Training completed" not in proc.stdout + proc.stderr
    assert time.perf_counter() - started < 120


def test_a_killed_run_resumes_to_the_same_results(full_run, tiny_llama, tmp_path):
    reference = json.loads((full_run[0] / "results.json").read_text())
    out = tmp_path / "killed"
    args = [str(BIN / "iclvsft"), "compare", *_flags(tiny_llama, out), "--learning_rate", "3e-3"]
    process = subprocess.Popen(
        args, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and len(list((out / "cells").glob("*.json"))) < 2:
            assert process.poll() is None
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done = len(list((out / "cells").glob("*.json")))
    assert 2 <= done < 15
    proc = _compare([*_flags(tiny_llama, out), "--learning_rate", "3e-3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _stable(json.loads((out / "results.json").read_text())) == _stable(reference)


def test_a_changed_generator_invalidates_cells_instead_of_mixing(tiny_llama, tmp_path, monkeypatch):
    exp = Experiment(model=str(tiny_llama), out=str(tmp_path / "inv"), ft_samples=[], jobs=1, **SMALL)  # patched here
    compare_run.run_compare(exp)
    first = json.loads((tmp_path / "inv" / "results.json").read_text())
    calls = []
    original_eval = compare_run.evaluate_cell
    monkeypatch.setattr(compare_run, "evaluate_cell", lambda *a, **k: calls.append(a[-1]) or original_eval(*a, **k))
    original_fps = compare_run.fingerprints

    def changed(spec):
        fps = original_fps(spec)
        return {**fps, "test": "0" * 16}  # as if the test generator had changed

    monkeypatch.setattr(compare_run, "fingerprints", changed)
    compare_run.run_compare(exp)
    second = json.loads((tmp_path / "inv" / "results.json").read_text())
    assert {c.split for c in calls} == {"test"} and len(calls) == 1 + 2 + 2
    assert len(second) == len(first)
    assert {r["fingerprint"] for r in second if r["split"] == "test"} == {"0" * 16}
    assert {r["key"] for r in second if r["split"] == "test"}.isdisjoint({r["key"] for r in first})


def test_vllm_backend_arguments_are_passed_through(tmp_path):
    exp = Experiment(
        eval_backend="vllm",
        eval_args={"tensor_parallel_size": 2, "data_parallel_size": 4, "gpu_memory_utilization": 0.8},
        ft_samples=[],
        **SMALL,
    )
    name, args = compare_run.lm_spec(exp, "/models/base")
    assert name == "vllm"
    assert args == {
        "pretrained": "/models/base",
        "dtype": "float32",
        "tensor_parallel_size": 2,
        "data_parallel_size": 4,
        "gpu_memory_utilization": 0.8,
        "enable_prefix_caching": True,
    }
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 32}))
    _, with_lora = compare_run.lm_spec(exp, "/models/base", adapter=str(adapter))
    assert with_lora["lora_local_path"] == str(adapter) and with_lora["max_lora_rank"] == 32
    hf_name, hf_args = compare_run.lm_spec(Experiment(**SMALL, ft_samples=[]), "/m", adapter="/a")
    assert hf_name == "iclvsft-hf" and hf_args == {"pretrained": "/m", "dtype": "float32", "peft": "/a"}
    assert compare_run.lm_spec(Experiment(**SMALL, ft_samples=[], eval_backend="hf"), "/m")[0] == "hf"


def test_experiment_flags_override_the_yaml(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("tasks: [boolean_pattern]\nshots: [0, 4]\ntest_size: 50\n")
    exp = load_experiment(str(config), {"shots": "1,2", "out": "x", "seed": None})
    assert exp.tasks == ["boolean_pattern"] and exp.shots == [1, 2] and exp.test_size == 50
    assert exp.test_broken_size == 50 and exp.out == "x"
    demo = load_experiment("demo", {})
    assert demo.model == "default" and len(demo.tasks) == 2
    assert (exp.demos, exp.draws) == ("fixed", 3)
    assert load_experiment(None, {"demos": "per-item"}).draws == 1
    assert exp.draws_for(0) == [0] and exp.draws_for(2) == [1, 2, 3]


def test_per_item_demonstrations_run_one_cell_per_k(tiny_llama, tmp_path):
    exp = Experiment(
        model=str(tiny_llama),
        out=str(tmp_path / "pi"),
        ft_samples=[],
        **{**SMALL, "draws": None, "shots": [0, 2]},
        demos="per-item",
    )
    compare_run.run_compare(exp)
    records = json.loads((tmp_path / "pi" / "results.json").read_text())
    assert len(records) == 2 * 3 and {r["draw"] for r in records} == {0}
    assert {r["demos"] for r in records if r["shots"] == 2} == {"per-item"}
    assert all("demo_ids" not in r for r in records)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--model", "no-such-alias"], "no-such-alias"),
        (["--shots", "0,5000", "--train-size", "100"], "5000 shots"),
        (["--ft-samples", "500", "--train-size", "100"], "exceed the train split"),
        (["--ft-samples", "10"], "not a multiple of the effective batch 4"),
        (["--config", "nonexistent.yaml"], "not found"),
        (["--eval-backend", "tgi"], "invalid choice"),
        (["--draws", "0"], "draws must be an integer >= 1"),
        (["--demos", "random"], "invalid choice"),
        (["--demos", "per-item", "--draws", "3"], "draws apply to fixed demonstrations"),
        (["--eval-args", "no_such_arg=1", "--ft-samples", ""], "cannot load model"),
    ],
)
def test_bad_input_is_one_line(tiny_llama, tmp_path, args, message):
    base = [
        "--model",
        str(tiny_llama),
        "--tasks",
        "parity_pattern",
        "--shots",
        "0",
        "--ft-samples",
        "8",
        "--test-size",
        "4",
        "--validation-size",
        "4",
        "--train-size",
        "60",
        "--out",
        str(tmp_path / "o"),
    ]
    proc = _compare([*base, *args], timeout=300)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "o" / "results.json").exists()
    assert not list((tmp_path / "o").glob("cells/*")) if (tmp_path / "o").exists() else True


def test_out_that_is_a_file_and_a_model_that_fails_to_load(tiny_llama, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = _compare(["--model", str(tiny_llama), "--out", str(afile), "--ft-samples", "", "--shots", "0"], timeout=300)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and afile.read_text() == "x"
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    proc = _compare(
        [
            "--model",
            str(broken),
            "--tasks",
            "parity_pattern",
            "--shots",
            "0",
            "--ft-samples",
            "",
            "--test-size",
            "4",
            "--validation-size",
            "4",
            "--train-size",
            "20",
            "--out",
            str(tmp_path / "o2"),
        ],
        timeout=300,
    )
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip() and "%" not in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in lines if "error:" in line] == [lines[-1]] and "cannot load model" in lines[-1]
