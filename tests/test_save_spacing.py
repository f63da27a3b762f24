"""Resume points spaced by what a save costs: the first save, milestones and the last step always happen;
in between, a save waits for ten saves' worth of training; cheap saves are all kept; iclvsft-train's
worker installs the spacing only in one-process runs it started."""

from __future__ import annotations

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

from iclvsft_train import fast_sft
from iclvsft_train.save_spacing import SpacedResumePoints


def _saved_steps(tmp_path, *, max_steps: int, save_steps: int, step_s: float, save_s: float, keep=()) -> list[int]:
    """Trainer's loop as far as saving goes: each step's callbacks, then a save where should_save says so
    (transformers' DefaultFlowCallback first, as in every Trainer; a fake clock)."""
    now = [0.0]
    args = TrainingArguments(output_dir=str(tmp_path), save_strategy="steps", save_steps=save_steps, report_to=[])
    state = TrainerState(max_steps=max_steps, save_steps=save_steps, logging_steps=500)
    handler = CallbackHandler([DefaultFlowCallback], None, None, None, None)
    handler.add_callback(SpacedResumePoints(keep, clock=lambda: now[0]))
    control = handler.on_train_begin(args, state, TrainerControl())
    saved = []
    for step in range(1, max_steps + 1):
        now[0] += step_s
        state.global_step = step
        control = handler.on_step_end(args, state, control)
        if control.should_save:
            now[0] += save_s
            saved.append(step)
            control = handler.on_save(args, state, control)
    return saved


def test_expensive_saves_are_spaced_by_ten_saves_worth_of_training(tmp_path):
    # 1 s steps, 2 s saves: after the first save, the next resume point needs 20 s of training
    saved = _saved_steps(tmp_path, max_steps=60, save_steps=2, step_s=1.0, save_s=2.0, keep=(30,))
    assert saved == [2, 22, 30, 50, 60]  # the first, spaced ones, the milestone (30), the last step


def test_cheap_saves_keep_every_resume_point(tmp_path):
    saved = _saved_steps(tmp_path, max_steps=12, save_steps=2, step_s=1.0, save_s=0.05, keep=(4,))
    assert saved == [2, 4, 6, 8, 10, 12]


def test_milestones_and_the_last_step_are_saved_however_dear(tmp_path):
    saved = _saved_steps(tmp_path, max_steps=12, save_steps=3, step_s=1.0, save_s=100.0, keep=(6, 9))
    assert saved == [3, 6, 9, 12]


class _Trainer:
    """What fast_sft's train hook touches of a Trainer."""

    def __init__(self, world_size: int) -> None:
        self.args = type("Args", (), {"world_size": world_size})()
        self.callbacks: list[object] = []

    def add_callback(self, callback: object) -> None:
        self.callbacks.append(callback)


@pytest.mark.parametrize(
    ("env", "world_size", "installed"),
    [("2,4,8", 1, True), (None, 1, False), ("2,4,8", 2, False), ("", 1, True)],
)
def test_the_worker_spaces_saves_only_in_one_process_runs_it_was_asked_to(monkeypatch, env, world_size, installed):
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda self, *a, **k: "trained")
    monkeypatch.setattr(fast_sft, "_trainers", [])
    if env is None:
        monkeypatch.delenv(fast_sft.MILESTONE_STEPS_ENV, raising=False)
    else:
        monkeypatch.setenv(fast_sft.MILESTONE_STEPS_ENV, env)
    fast_sft.hook_train()
    trainer = _Trainer(world_size)
    assert Trainer.train(trainer) == "trained"
    assert fast_sft._trainers == [trainer]  # kept referenced either way
    spacing = [c for c in trainer.callbacks if isinstance(c, SpacedResumePoints)]
    assert len(spacing) == installed
    if installed:
        assert spacing[0].keep_steps == ({2, 4, 8} if env else set())
