"""Training tokens per milestone survive a resume, and a copied run folder loads its own checkpoints.

Real `trl sft` runs on the tiny model (about 10 s each): an uninterrupted run, and the same run stopped
after 4 of its 8 steps and resumed with iclvsft-train's --resume.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from iclvsft_tasks.data.spec import DataSpec
from iclvsft_train import launch
from iclvsft_train.run_state import MANIFEST, TRAINER_STATE, RunStatus, TrainingRun

DATA = DataSpec(seed=0, test_size=6, test_broken_size=6, validation_size=6, train_size=60)
MILESTONES = (8, 16, 32)  # batch 4: steps 2, 4 and 8


def _options(model: Path, out: Path, resume: bool = False) -> launch.TrainOptions:
    return launch.TrainOptions(
        task="parity_pattern",
        samples=32,
        model=str(model),
        output_dir=out,
        milestones=MILESTONES,
        data=DATA,
        resume=resume,
        passthrough=("--learning_rate", "3e-3", "--logging_steps", "2"),
    )


def _trl_num_tokens(milestone: Path, step: int) -> int:
    """TRL's logged ``num_tokens`` at ``step`` (what compare reported before: it restarts on resume)."""
    history = json.loads((milestone / TRAINER_STATE).read_text())["log_history"]
    return int(next(h["num_tokens"] for h in history if h.get("step") == step and "num_tokens" in h))


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = tmp_path_factory.mktemp("tokens")
    whole, resumed = root / "whole", root / "resumed"
    assert launch.run(_options(tiny_llama, whole)) == 0
    # The same run, stopped after step 4 (its checkpoint-4 written) as a kill would leave it, then resumed.
    manifest = launch.prepare(_options(tiny_llama, resumed))
    manifest["status"] = RunStatus.RUNNING.value
    (resumed / MANIFEST).write_text(json.dumps(manifest))
    cmd = launch.trl_command(resumed, _options(tiny_llama, resumed).passthrough) + ["--max_steps", "4"]
    subprocess.run(cmd, check=True, capture_output=True)
    assert [p.name for p in TrainingRun.load(resumed).complete_checkpoints()] == ["checkpoint-2", "checkpoint-4"]
    assert launch.run(_options(tiny_llama, resumed, resume=True)) == 0
    return whole, resumed


def test_a_resumed_runs_milestone_tokens_equal_an_uninterrupted_runs(runs, tiny_llama):
    whole, resumed = (TrainingRun.load(p) for p in runs)
    assert whole.status is resumed.status is RunStatus.COMPLETE
    tokens = {n: whole.milestone(n).training_tokens() for n in MILESTONES}
    assert {n: resumed.milestone(n).training_tokens() for n in MILESTONES} == tokens
    assert 0 < tokens[8] < tokens[16] < tokens[32]
    # What TRL counts (the attention mask of every batch), in the uninterrupted run ...
    assert all(_trl_num_tokens(whole.milestone(n).path, n // 4) == tokens[n] for n in MILESTONES)
    # ... and what it reports after the resume: only the steps after checkpoint-4 (the old, wrong figure).
    assert _trl_num_tokens(resumed.milestone(32).path, 8) == tokens[32] - tokens[16]
    # From the data: one epoch, so the last milestone saw every record once, as TRL tokenizes it (+ EOS).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    records = [json.loads(line) for line in (runs[0] / "data" / "train.jsonl").read_text().splitlines()]
    assert len(records) == 32
    expected = sum(len(tokenizer(r["prompt"] + r["completion"] + tokenizer.eos_token)["input_ids"]) for r in records)
    assert tokens[32] == expected


def test_manifests_store_paths_inside_the_run_folder(runs):
    manifest = json.loads((runs[0] / MANIFEST).read_text())
    assert manifest["final_model"] == "."
    assert {n: e["path"] for n, e in manifest["milestones"].items()} == {
        str(n): f"milestones/samples-{n}" for n in MILESTONES
    }


def test_a_copied_run_folder_loads_its_own_checkpoints(runs, tiny_llama, tmp_path):
    from iclvsft_train.checkpoints import load_causal_lm

    original = tmp_path / "original"
    shutil.copytree(runs[0], original)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    tokens = TrainingRun.load(original).milestone(16).training_tokens()
    shutil.rmtree(original)
    folder = TrainingRun.load(copy)
    milestone = folder.milestone(16)
    assert milestone.path == copy / "milestones" / "samples-16" and milestone.training_tokens() == tokens
    model, _ = load_causal_lm(str(tiny_llama), adapter=str(milestone.path), dtype="float32", device="cpu")
    assert model is not None


def test_an_old_manifests_absolute_paths_are_read_inside_the_folder(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs[0], copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    for n, entry in manifest["milestones"].items():  # as launch wrote them before: absolute, the original's
        entry["path"] = str(runs[0] / "milestones" / f"samples-{n}")
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert TrainingRun.load(copy).milestone(8).path == copy / "milestones" / "samples-8"
    manifest["milestones"]["8"]["path"] = str(tmp_path / "somewhere" / "else")
    (copy / MANIFEST).write_text(json.dumps(manifest))
    from iclvsft_tasks.errors import IclvsftError

    with pytest.raises(IclvsftError, match="not milestones/samples-8 of a run folder"):
        TrainingRun.load(copy).milestone(8)


def test_resume_ignores_where_the_run_folder_is():
    view = launch._resume_view
    here = {"learning_rate": 1e-3, "output_dir": "/a/run", "dataset_name": "/a/run/data"}
    there = {"learning_rate": 1e-3, "output_dir": "/b/copy", "dataset_name": "/b/copy/data"}
    assert view("resolved_config", here) == view("resolved_config", there)
    assert view("resolved_config", {**here, "learning_rate": 2e-3}) != view("resolved_config", there)
