"""Resume points spaced by what a save costs: the first save, milestones and the last step (also where
another callback stops the run) always happen; in between, a save waits for ten saves' worth of training,
not counting the logging and evaluation before it; cheap saves are all kept; iclvsft-train's worker
installs the spacing only in one-process runs it started that keep no best checkpoint."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

from iclvsft_train import fast_sft
from iclvsft_train.save_spacing import SpacedResumePoints


class _StopAt(TrainerCallback):
    """Another callback that ends training early (as early stopping does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _saved_steps(
    tmp_path, *, max_steps: int, save_steps: int, step_s: float, save_s: float, keep=(), eval_s=0.0, stop_at=None
) -> list[int]:
    """Trainer's loop as far as saving goes, on a fake clock: each step's callbacks (transformers'
    DefaultFlowCallback first, as in every Trainer), then, as ``_maybe_log_save_evaluate`` does, a log
    and an evaluation taking ``eval_s`` before the save where should_save says so."""
    now = [0.0]
    args = TrainingArguments(output_dir=str(tmp_path), save_strategy="steps", save_steps=save_steps, report_to=[])
    state = TrainerState(max_steps=max_steps, save_steps=save_steps, logging_steps=500)
    handler = CallbackHandler([DefaultFlowCallback], None, None, None, None)
    if stop_at is not None:
        handler.add_callback(_StopAt(stop_at))
    handler.add_callback(SpacedResumePoints(keep, clock=lambda: now[0]))
    control = handler.on_train_begin(args, state, TrainerControl())
    saved = []
    for step in range(1, max_steps + 1):
        control = handler.on_step_begin(args, state, control)
        now[0] += step_s
        state.global_step = step
        control = handler.on_step_end(args, state, control)
        if control.should_save:
            control = handler.on_log(args, state, control, logs={})
            now[0] += eval_s
            control = handler.on_evaluate(args, state, control, metrics={})
            now[0] += save_s
            saved.append(step)
            control = handler.on_save(args, state, control)
        if control.should_training_stop:
            break
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


def test_a_run_another_callback_stops_saves_its_last_step(tmp_path):
    saved = _saved_steps(tmp_path, max_steps=60, save_steps=1, step_s=1.0, save_s=5.0, stop_at=7)
    assert saved == [1, 7]  # 7 would have been skipped (6 s of training < 50 s), but the run ends there


def test_logging_and_evaluation_before_a_save_are_not_its_cost(tmp_path):
    saved = _saved_steps(tmp_path, max_steps=12, save_steps=2, step_s=1.0, save_s=0.05, eval_s=30.0)
    assert saved == [2, 4, 6, 8, 10, 12]


class _Trainer:
    """What fast_sft's train hook touches of a Trainer."""

    def __init__(self, world_size: int, load_best_model_at_end: bool = False) -> None:
        self.args = type("Args", (), {"world_size": world_size, "load_best_model_at_end": load_best_model_at_end})()
        self.callbacks: list[object] = []

    def add_callback(self, callback: object) -> None:
        self.callbacks.append(callback)


@pytest.mark.parametrize(
    ("env", "world_size", "installed"),
    [("2,4,8", 1, True), (None, 1, False), ("2,4,8", 2, False), ("", 1, True), ("2,4,8", "best", False)],
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
    trainer = _Trainer(1, load_best_model_at_end=True) if world_size == "best" else _Trainer(world_size)
    assert Trainer.train(trainer) == "trained"
    assert fast_sft._trainers == [trainer]  # kept referenced either way
    spacing = [c for c in trainer.callbacks if isinstance(c, SpacedResumePoints)]
    assert len(spacing) == installed
    if installed:
        assert spacing[0].keep_steps == ({2, 4, 8} if env else set())
