"""Resume points spaced by what a save costs: a ``TrainerCallback`` the fast_sft worker installs.

iclvsft-train asks the trainer for a checkpoint every ``save_steps`` (the gcd of the milestone steps,
or a tenth of the run): the milestone checkpoints it keeps, and resume points in between that it
deletes when the run ends. A full fine-tune's checkpoint holds the model and AdamW's state (3.2 GB for
Gemma 3 270M, ~9 s to write on the benchmark machine), so on a short CPU run six resume points were a
quarter of the training time (BENCHMARKS.md). This callback skips a resume point while less training
time than ``SAVE_SPACING`` times the last save's duration has passed since the last save ended: resume
points then cost at most about a tenth of the training time, and a kill loses at most about ten saves'
worth of training more than it would have. The first save, every milestone step and the run's last step
(``max_steps``, or where another callback stops training) are always saved. Where saves are cheap (LoRA,
tiny models) every resume point is kept. Not installed where the best checkpoint is to be loaded at the
end (a skipped save could be the best one).

The decision depends on this process's clock, so it is only installed in one-process runs: the ranks of
a multi-process run would disagree, and a checkpoint save is collective there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from transformers import TrainerCallback

#: Training time between two saves, at least, in units of the last save's duration.
SAVE_SPACING = 10.0


class SpacedResumePoints(TrainerCallback):
    """Skip a scheduled save that is not a milestone or the last step while too little training has
    passed since the last save (see the module docstring)."""

    def __init__(
        self, keep_steps: Iterable[int], spacing: float = SAVE_SPACING, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.keep_steps = frozenset(keep_steps)
        self.spacing = spacing
        self.clock = clock
        self.since = clock()  # when training began or the last save ended
        self.save_began: float | None = None
        self.save_cost = 0.0  # seconds the last save took; none measured yet: the first save happens

    def on_train_begin(self, args, state, control, **kwargs):
        self.since = self.clock()

    def on_step_begin(self, args, state, control, **kwargs):
        self.save_began = None  # a save another callback called off is not pending any more

    def on_step_end(self, args, state, control, **kwargs):
        # Runs after transformers' DefaultFlowCallback, which set should_save from save_steps.
        if not control.should_save:
            return
        now = self.clock()
        last = state.global_step >= state.max_steps or control.should_training_stop  # the run's last checkpoint
        if not last and state.global_step not in self.keep_steps and now - self.since < self.spacing * self.save_cost:
            control.should_save = False
            return
        self.save_began = now

    def _restart_save_clock(self) -> None:
        # The trainer logs and evaluates before it saves: only the save itself is its cost.
        if self.save_began is not None:
            self.save_began = self.clock()

    def on_log(self, args, state, control, **kwargs):
        self._restart_save_clock()

    def on_evaluate(self, args, state, control, **kwargs):
        self._restart_save_clock()

    def on_save(self, args, state, control, **kwargs):
        now = self.clock()
        if self.save_began is not None:
            self.save_cost = now - self.save_began
        self.save_began = None
        self.since = now
