"""`iclvsft data export --format trl`: the records iclvsft-train trains on, in a folder plain `trl sft` loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
SIZES = ["--train-size", "200", "--test-size", "12", "--test-broken-size", "12", "--validation-size", "10"]


def _run(argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_trl_export_is_what_iclvsft_train_trains_on_and_trl_sft_loads_it(tiny_llama, tmp_path):
    task = ["--task", "parity_pattern,boolean_pattern", "--train-shots", "0,2", *SIZES]
    exported = tmp_path / "export"
    proc = _run([str(BIN / "iclvsft"), "data", "export", "--format", "trl", "--samples", "16", "--seed", "3",
                 "--out", str(exported), *task])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in exported.iterdir()) == ["train.jsonl"]  # dataset_name must hold nothing else

    run = tmp_path / "run"
    proc = _run([str(BIN / "iclvsft-train"), "--samples", "16", "--data-seed", "3", "--model_name_or_path",
                 str(tiny_llama), "--output_dir", str(run), "--dry-run", *task])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (exported / "train.jsonl").read_bytes() == (run / "data" / "train.jsonl").read_bytes()

    # Plain TRL, as a TRL user would call it: no iclvsft in the loop.
    trained = tmp_path / "trained"
    proc = _run([str(BIN / "trl"), "sft", "--dataset_name", str(exported), "--model_name_or_path", str(tiny_llama),
                 "--output_dir", str(trained), "--max_steps", "2", "--per_device_train_batch_size", "2",
                 "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none",
                 "--save_strategy", "no", "--num_processes", "1"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (trained / "config.json").is_file() or (trained / "model.safetensors").is_file(), list(trained.iterdir())


def test_trl_export_flags_are_checked(tmp_path):
    base = [str(BIN / "iclvsft"), "data", "export", "--task", "parity_pattern", "--out", str(tmp_path / "x")]
    for extra, message in [
        (["--format", "trl"], "--format trl needs --samples"),
        (["--format", "trl", "--samples", "4", "--split", "test"], "comes from the train split"),
        (["--samples", "4"], "--samples and --train-shots belong to --format trl"),
    ]:
        proc = _run(base + extra)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "x").exists()
