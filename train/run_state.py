"""What an ``iclvsft-train`` run folder holds, read back: its status, checkpoints and milestones.

``launch`` writes the folder (data, ``resolved.yaml``, ``manifest.json``, TRL's ``checkpoint-<step>``
folders, then ``milestones/samples-<n>``); this module is the one place that names those files and
reads them, so callers (``iclvsft compare``) ask a :class:`TrainingRun` instead of parsing JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from iclvsft_tasks.errors import IclvsftError

MANIFEST = "manifest.json"
RESOLVED = "resolved.yaml"
DATA_DIR = "data"
ITEMS_FILE = "training_items.jsonl"
MILESTONES_DIR = "milestones"
#: TRL's checkpoint folders (``checkpoint-<step>``) and the file its trainer writes last into each.
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
#: Written by the main training process once training ended and the final model is saved (fast_sft),
#: removed again when the run is complete: a run that holds it lost nothing to a hang or kill after that.
TRAINED_FILE = ".iclvsft-train.done"


class RunStatus(str, enum.Enum):
    """Where a run folder stands; the manifest's ``status`` holds the value (never ``absent``)."""

    ABSENT = "absent"  # no manifest, or one that cannot be read: nothing iclvsft-train can use
    PREPARED = "prepared"  # data and config written (--dry-run, or a launch that has not started)
    RUNNING = "running"  # trl sft started (and may have been killed)
    FAILED = "failed"  # trl sft exited with an error
    COMPLETE = "complete"  # milestones finalized


def milestone_interval(steps: Iterable[int]) -> int | None:
    """The largest step interval that lands on every milestone step (their gcd); None without milestones.

    Checkpoints saved at this interval include every milestone, and TRL logging at it records the
    token count exactly at each milestone.
    """
    steps = list(steps)
    return math.gcd(*steps) if steps else None


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """TRL's ``trainer_state.json`` of a checkpoint (or milestone) folder."""
    path = Path(checkpoint) / TRAINER_STATE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise IclvsftError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise IclvsftError(f"{path} is not valid JSON: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Milestone:
    """The model after exactly ``samples`` training samples (optimizer step ``step``)."""

    samples: int
    step: int
    path: Path | None  # ``milestones/samples-<n>`` inside the run folder; None until the run completes
    samples_seen: int  # step x effective batch
    adapter: bool  # True: ``path`` holds a LoRA adapter for the base model; False: a full model
    counted: bool = True  # the run kept the trainer's token counter (``include_num_input_tokens_seen``)

    def training_tokens(self) -> int:
        """Training tokens processed up to this milestone, repeats across epochs included.

        The trainer's ``num_input_tokens_seen`` at the milestone step: the input tokens of every batch
        trained on, kept in the checkpoint's state and restored on resume, so a resumed run reports what
        an uninterrupted one does (TRL's logged ``num_tokens`` restarts at 0 in the resumed process).
        With one sample per forward pass (every recipe) no batch holds padding, and this is exactly
        the tokens of the samples seen, TRL's count; with larger per-device batches it includes the
        padding the model processed. It is read from the trainer rather than replayed from the data:
        a replay would have to copy transformers' and accelerate's sampler seeding and sharding and
        TRL's tokenization, and would drift from them silently. Runs made before the counter was
        kept (``counted`` False) fall back to TRL's last ``num_tokens`` logged at or before the step,
        which is right only for a run that was never resumed.
        """
        if self.path is None:
            raise IclvsftError(f"milestone {self.samples} has no checkpoint yet (the run has not completed)")
        state = read_trainer_state(self.path)
        if self.counted:
            return int(state.get("num_input_tokens_seen") or 0)
        history = state.get("log_history", [])
        logged = [h for h in history if "num_tokens" in h and h.get("step", 0) <= self.step]
        return int(float(logged[-1]["num_tokens"])) if logged else 0


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """One run folder as it was when loaded: the manifest's status and fields.

    Checkpoints are looked up on disk at each call, since the trainer adds them while the run lives.
    """

    directory: Path
    status: RunStatus
    manifest: Mapping[str, Any]  # as launch wrote it; empty when ``status`` is ABSENT

    @classmethod
    def load(cls, directory: Path) -> TrainingRun:
        """Read ``directory``; a missing or unreadable manifest (or an unknown status) is ABSENT."""
        directory = Path(directory)
        try:
            manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
            status = RunStatus(manifest["status"])
        except (OSError, ValueError, TypeError, KeyError):
            return cls(directory, RunStatus.ABSENT, {})
        if status is RunStatus.ABSENT:  # never written: not a manifest of ours
            return cls(directory, RunStatus.ABSENT, {})
        return cls(directory, status, manifest)

    # --- checkpoints -------------------------------------------------------------------------------

    def checkpoint_folders(self) -> list[Path]:
        """Every ``checkpoint-*`` entry, complete or not."""
        return list(self.directory.glob(CHECKPOINT_PREFIX + "*"))

    def complete_checkpoints(self) -> list[Path]:
        """Checkpoints that finished writing (the trainer writes trainer_state.json last), oldest first."""
        found = []
        for path in self.checkpoint_folders():
            suffix = path.name[len(CHECKPOINT_PREFIX) :]
            if path.is_dir() and suffix.isdigit() and (path / TRAINER_STATE).is_file():
                found.append((int(suffix), path))
        return [p for _, p in sorted(found)]

    @property
    def can_resume(self) -> bool:
        """Started (running or failed) and left a complete checkpoint to continue from."""
        return self.status in (RunStatus.RUNNING, RunStatus.FAILED) and bool(self.complete_checkpoints())

    @property
    def only_prepared(self) -> bool:
        """A folder left by --dry-run: prepared, never trained, so it may be prepared again."""
        return self.status is RunStatus.PREPARED and not self.checkpoint_folders()

    # --- manifest fields ---------------------------------------------------------------------------

    @property
    def peft(self) -> bool:
        """Whether the run trains a LoRA adapter (else the full model)."""
        return bool(self.manifest.get("peft"))

    @property
    def effective_batch(self) -> int | None:
        return self.manifest.get("effective_batch")

    @property
    def counts_tokens(self) -> bool:
        """Whether the trainer kept its token counter in its checkpoints (runs prepared since it was added)."""
        resolved = self.manifest.get("resolved_config") or {}
        return resolved.get("include_num_input_tokens_seen") in (True, "all", "non_padding")

    def milestone_path(self, samples: int, stored: str) -> Path:
        """The folder of milestone ``samples`` in this run folder, from the manifest's ``stored`` path.

        Manifests store it relative to the run folder; older ones stored it absolute (or relative to
        the working directory). Either way a milestone lives in ``milestones/samples-<n>`` of its run,
        so such a path is read as that folder here, wherever the run folder has been copied or moved:
        a copy never loads the original's checkpoints.
        """
        own = Path(MILESTONES_DIR) / f"samples-{samples}"
        path = Path(stored)
        if path.parts[-2:] != own.parts:
            raise IclvsftError(
                f"{self.directory / MANIFEST} gives milestone {samples} the path {stored}, which is not "
                f"{own} of a run folder; train the run again into a new --output_dir"
            )
        return self.directory / own

    @property
    def milestones(self) -> tuple[Milestone, ...]:
        """The milestones by sample count (empty for an ABSENT run)."""
        batch = self.effective_batch or 0
        out = []
        for samples, entry in self.manifest.get("milestones", {}).items():
            path = self.milestone_path(int(samples), entry["path"]) if entry.get("path") else None
            step = int(entry["step"])
            out.append(Milestone(int(samples), step, path, step * batch, self.peft, self.counts_tokens))
        return tuple(sorted(out, key=lambda m: m.samples))

    def milestone(self, samples: int) -> Milestone:
        """The milestone after ``samples`` samples, with its checkpoint on disk."""
        for milestone in self.milestones:
            if milestone.samples == samples:
                if milestone.path is None:
                    raise IclvsftError(
                        f"milestone {samples} of {self.directory} has no checkpoint (run {self.status.value})"
                    )
                return milestone
        raise IclvsftError(f"{self.directory} has no milestone at {samples} samples")

    @property
    def logging_steps(self) -> int | None:
        """The TRL ``logging_steps`` that logs at every milestone step (None without milestones)."""
        return milestone_interval(m.step for m in self.milestones)
