"""TrainingRun reads an iclvsft-train folder back: status (robust to a broken manifest), resumability,
milestones, the logging steps that hit every milestone, and token counts from TRL's trainer state.
Hand-written folders only: no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iclvsft_tasks.errors import IclvsftError
from iclvsft_train import launch
from iclvsft_train.run_state import (
    MANIFEST,
    TRAINER_STATE,
    Milestone,
    RunStatus,
    TrainingRun,
    milestone_interval,
)


def _manifest(folder: Path, status: str = "running", peft: bool = True, paths: bool = False) -> dict:
    """A manifest like launch writes: effective batch 4, milestones at 8, 24 and 48 samples."""
    milestones = {
        str(n): {"step": n // 4, "path": str(folder / "milestones" / f"samples-{n}") if paths else None}
        for n in (8, 24, 48)
    }
    manifest = {"status": status, "peft": peft, "effective_batch": 4, "max_steps": 12, "milestones": milestones}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def _checkpoint(folder: Path, step: int, complete: bool = True, log_history: list | None = None) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / TRAINER_STATE).write_text(json.dumps({"global_step": step, "log_history": log_history or []}))
    return path


@pytest.mark.parametrize(
    "content",
    [None, "", "{not json", "[1, 2]", '{"peft": true}', '{"status": "absent"}', '{"status": "paused"}', "\udcff"],
)
def test_a_missing_or_unreadable_manifest_is_absent(tmp_path, content):
    if content is not None:
        (tmp_path / MANIFEST).write_bytes(content.encode("utf-8", "surrogateescape"))
    folder = TrainingRun.load(tmp_path / "run" if content is None else tmp_path)
    assert folder.status is RunStatus.ABSENT and folder.manifest == {}
    assert folder.milestones == () and folder.logging_steps is None
    assert not folder.can_resume and not folder.only_prepared


@pytest.mark.parametrize("status", ["prepared", "running", "failed", "complete"])
def test_status_is_the_manifests(tmp_path, status):
    _manifest(tmp_path, status)
    assert TrainingRun.load(tmp_path).status is RunStatus(status)
    assert TrainingRun.load(tmp_path).status.value == status


def test_only_started_runs_with_a_complete_checkpoint_can_resume(tmp_path):
    for status in ("prepared", "running", "failed", "complete"):
        folder = tmp_path / status
        _manifest(folder, status)
        assert not TrainingRun.load(folder).can_resume  # no checkpoint yet
        _checkpoint(folder, 3, complete=False)  # killed while saving
        assert not TrainingRun.load(folder).can_resume
        _checkpoint(folder, 2)
        assert TrainingRun.load(folder).can_resume == (status in ("running", "failed"))


def test_complete_checkpoints_are_finished_ones_oldest_first(tmp_path):
    for step in (10, 2, 6):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 12, complete=False)
    (tmp_path / "checkpoint-latest").mkdir()
    (tmp_path / "checkpoint-4").write_text("a file, not a checkpoint")
    folder = TrainingRun.load(tmp_path)  # no manifest needed to list checkpoints
    assert [p.name for p in folder.complete_checkpoints()] == ["checkpoint-2", "checkpoint-6", "checkpoint-10"]
    assert len(folder.checkpoint_folders()) == 6


def test_a_prepared_folder_may_be_prepared_again_until_a_checkpoint_appears(tmp_path):
    _manifest(tmp_path, "prepared")
    assert TrainingRun.load(tmp_path).only_prepared
    launch.check_output_dir(tmp_path, resume=False)  # accepted
    _checkpoint(tmp_path, 1, complete=False)
    assert not TrainingRun.load(tmp_path).only_prepared
    with pytest.raises(IclvsftError, match="already holds a run"):
        launch.check_output_dir(tmp_path, resume=False)
    _manifest(tmp_path / "ran", "running")
    assert not TrainingRun.load(tmp_path / "ran").only_prepared


def test_milestones_from_the_manifest(tmp_path):
    _manifest(tmp_path, "running", peft=False)
    folder = TrainingRun.load(tmp_path)
    assert folder.milestones == (
        Milestone(8, 2, None, 8, adapter=False, counted=False),
        Milestone(24, 6, None, 24, adapter=False, counted=False),
        Milestone(48, 12, None, 48, adapter=False, counted=False),
    )
    with pytest.raises(IclvsftError, match=r"milestone 24 .* has no checkpoint"):
        folder.milestone(24)  # not finished yet

    _manifest(tmp_path, "complete", peft=True, paths=True)
    folder = TrainingRun.load(tmp_path)
    milestone = folder.milestone(24)
    assert milestone.path == tmp_path / "milestones" / "samples-24" and milestone.adapter and folder.peft
    assert str(milestone.path) == folder.manifest["milestones"]["24"]["path"]  # records keep the string
    with pytest.raises(IclvsftError, match="no milestone at 16 samples"):
        folder.milestone(16)


def test_logging_steps_hit_every_milestone_step(tmp_path):
    _manifest(tmp_path)  # steps 2, 6, 12
    steps = TrainingRun.load(tmp_path).logging_steps
    assert steps == 2 and all(m.step % steps == 0 for m in TrainingRun.load(tmp_path).milestones)
    assert milestone_interval([6, 9, 15]) == 3 and milestone_interval([]) is None


def test_the_schedule_saves_at_the_same_interval_the_run_logs_at():
    schedule = launch.plan_schedule(96, 1, per_device=4, accumulation=1, processes=1, milestones=[24, 36, 96])
    assert schedule.save_steps == milestone_interval(schedule.milestone_steps.values()) == 3
    assert launch.plan_schedule(96, 1, 4, 1, 1, []).save_steps == 3  # about a tenth of 24 steps


def test_training_tokens_are_trls_logged_count_at_the_milestone_step(tmp_path):
    _manifest(tmp_path, "complete", paths=True)
    history = [
        {"step": 2, "loss": 1.0, "num_tokens": 100.0},
        {"step": 4, "loss": 0.9},  # a log entry without a token count
        {"step": 6, "num_tokens": 310.0},
        {"step": 8, "num_tokens": 420.0},  # past the milestone: the checkpoint ran on (a resumed run's state)
    ]
    for n in (8, 24):
        path = tmp_path / "milestones" / f"samples-{n}"
        path.mkdir(parents=True)
        (path / TRAINER_STATE).write_text(json.dumps({"log_history": history if n == 24 else []}))
    folder = TrainingRun.load(tmp_path)
    assert folder.milestone(24).training_tokens() == 310
    assert folder.milestone(8).training_tokens() == 0  # nothing logged
    with pytest.raises(IclvsftError, match=r"cannot read .*samples-48"):
        folder.milestone(48).training_tokens()
