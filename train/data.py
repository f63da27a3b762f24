"""Fine-tuning data: prompt/completion records rendered by the same formatter lm-eval uses.

A record's prompt is byte-identical to what lm-eval shows the model for the same item (at 0 shots:
description + question + cue) and its completion is the target delimiter plus the answer; TRL adds
EOS and puts the loss on the completion only. With ``train_shots`` some prompts carry k
demonstrations drawn from the other training items, in lm-eval's few-shot layout.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from iclvsft_tasks.atomic import atomic_open
from iclvsft_tasks.data.seeding import derive_seed
from iclvsft_tasks.data.spec import HELD_OUT_SPLITS, DataSpec
from iclvsft_tasks.data.splits import SplitSpec, build_splits, fingerprint
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.prompts import render_completion, render_prompt
from iclvsft_tasks.tasks.registry import parse_task_list

#: The file TRL reads (``dataset_name`` = its directory, which must hold nothing else).
TRAIN_FILE = "train.jsonl"


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """What determines the training records."""

    tasks: tuple[str, ...]
    samples: int
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    train_shots: tuple[int, ...] = (0,)

    @classmethod
    def create(
        cls,
        task: str,
        samples: int,
        data: DataSpec | None = None,
        train_shots: Sequence[int] = (0,),
    ) -> DataOptions:
        tasks = tuple(parse_task_list(task))
        if len(set(tasks)) != len(tasks):
            raise IclvsftError(f"a task is listed twice in {task!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
            raise IclvsftError(f"--samples must be a positive integer, got {samples!r}")
        if samples < len(tasks):
            raise IclvsftError(f"--samples {samples} is fewer than the {len(tasks)} tasks to mix")
        shots = tuple(sorted(set(train_shots)))
        if not shots or any(k < 0 for k in shots):
            raise IclvsftError(f"--train-shots must be non-negative integers, got {list(train_shots)}")
        options = cls(tasks, samples, data or DataSpec(), shots)
        for task_name, n in options.per_task().items():
            if n > options.data.train_size:
                raise IclvsftError(
                    f"--samples asks {n:,} items of {task_name}, but its train split holds "
                    f"{options.data.train_size:,}; lower --samples or raise --train-size"
                )
            if max(shots) > max(n - 1, 0):
                raise IclvsftError(
                    f"--train-shots {max(shots)} needs more than {n} {task_name} samples "
                    "(demonstrations come from the other training samples)"
                )
        return options

    def spec(self, task: str) -> SplitSpec:
        return self.data.split_spec(task)

    def per_task(self) -> dict[str, int]:
        """Samples per task: as even as possible, earlier tasks take the remainder."""
        base, extra = divmod(self.samples, len(self.tasks))
        return {t: base + (1 if i < extra else 0) for i, t in enumerate(self.tasks)}


def check_no_evaluation_overlap(options: DataOptions, items: Sequence[dict[str, Any]]) -> None:
    """No training item's id may be in a validation, test or test_broken split (same seed and sizes)."""
    held_out: set[str] = set()
    for task in options.tasks:
        splits = build_splits(options.spec(task))
        for split in HELD_OUT_SPLITS:
            held_out.update(item["id"] for item in splits[split])
    leaked = [item["id"] for item in items if item["id"] in held_out]
    if leaked:  # the split builder makes this impossible; guard against a future regression
        raise AssertionError(f"{len(leaked)} training items are also evaluation items, e.g. {leaked[0]}")


def split_fingerprints(options: DataOptions) -> dict[str, dict[str, str]]:
    return {t: {s: fingerprint(items) for s, items in build_splits(options.spec(t)).items()} for t in options.tasks}


def build_records(options: DataOptions, progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Training records (prompt, completion and provenance), shuffled reproducibly across tasks."""
    rng = random.Random(derive_seed("iclvsft-train", ",".join(options.tasks), options.data.seed, options.train_shots))
    pools = {t: build_splits(options.spec(t))["train"][:n] for t, n in options.per_task().items()}
    items = [item for pool in pools.values() for item in pool]
    check_no_evaluation_overlap(options, items)
    records = []
    for item in items:
        pool = pools[item["task"]]
        k = rng.choice(options.train_shots)
        demos = []
        while len(demos) < k:  # other training items of the same task, like lm-eval's sampler
            demo = pool[rng.randrange(len(pool))]
            if demo is not item and demo not in demos:
                demos.append(demo)
        records.append(
            {
                "prompt": render_prompt(item, demos),
                "completion": render_completion(item),
                "id": item["id"],
                "task": item["task"],
                "shots": k,
                "demo_ids": [d["id"] for d in demos],
            }
        )
        if progress is not None:
            progress(1)
    rng.shuffle(records)
    return records


def write_records(records: Sequence[dict[str, Any]], data_dir: Path) -> Path:
    """Write TRL's training file (prompt and completion only) and return its path."""
    path = data_dir / TRAIN_FILE
    with atomic_open(path) as handle:
        for record in records:
            handle.write(
                json.dumps({"prompt": record["prompt"], "completion": record["completion"]}, ensure_ascii=False) + "\n"
            )
    return path
