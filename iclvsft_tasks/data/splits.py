"""Deterministic, disjoint, fingerprinted splits of every task.

Splits are drawn in a fixed priority order: ``test``, ``test_broken``, ``validation``, ``train``.
Each has its own hash-derived random stream (``seeding.rng_for``), and an item whose normalized
question was already drawn (in this split or an earlier one) is skipped. Consequences:
  * no question appears in two splits, and none twice in one split;
  * the first n items of a split do not depend on its own size, nor on the sizes of the splits
    after it (so evaluation splits stay put when the training pool grows);
  * a space too small for the requested sizes is reported instead of repeating items.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from iclvsft_tasks.data.seeding import rng_for
from iclvsft_tasks.data.spec import DEFAULT_SIZES, SPLITS, DataSpec
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.base import PatternTask, TaskConfig, question_id
from iclvsft_tasks.tasks.registry import get_task

#: Splits of pattern items; the rest hold pattern-broken items.
PATTERN_SPLITS = frozenset({"test", "validation", "train"})
#: Duplicates in a row after which the generator's question space counts as exhausted.
_MAX_REJECTS_IN_A_ROW = 2_000

Item = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Everything that determines the items of a task's splits.

    The flat fields are the public constructor (``SplitSpec("parity_pattern", test_size=100)``);
    our own code builds it from a ``DataSpec`` (``DataSpec.split_spec``), and ``data`` is that
    DataSpec again, whose checks are the only ones on the seed and sizes.
    """

    task: str
    seed: int = 0
    test_size: int = DEFAULT_SIZES["test"]
    test_broken_size: int = DEFAULT_SIZES["test_broken"]
    validation_size: int = DEFAULT_SIZES["validation"]
    train_size: int = DEFAULT_SIZES["train"]
    config: TaskConfig | None = None  # None: the task's default generator settings
    data: DataSpec = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        get_task(self.task)  # unknown task -> IclvsftError
        sizes = {f"{split}_size": getattr(self, f"{split}_size") for split in SPLITS}
        object.__setattr__(self, "data", DataSpec(self.seed, **sizes))

    def size(self, split: str) -> int:
        return self.data.size(split)

    def sizes(self) -> dict[str, int]:
        return self.data.sizes

    def make_task(self) -> PatternTask:
        task = get_task(self.task)
        return type(task)(self.config) if self.config is not None else task


def _draw(
    task: PatternTask, spec: SplitSpec, split: str, seen: set[str], progress: Callable[[int], None] | None
) -> list[Item]:
    rng = rng_for(spec.task, split, spec.seed)
    pattern = split in PATTERN_SPLITS
    size = spec.size(split)
    items: list[Item] = []
    rejects = 0
    while len(items) < size:
        draft = task.generate(rng, pattern)
        item_id = question_id(draft.question)
        if item_id in seen:
            rejects += 1
            if rejects >= _MAX_REJECTS_IN_A_ROW:
                earlier = sum(spec.size(s) for s in SPLITS[: SPLITS.index(split)])
                raise IclvsftError(
                    f"{spec.task}: only {len(items):,} distinct {split} items of the {size:,} requested "
                    f"could be generated (seed {spec.seed}, after {earlier:,} "
                    "items in earlier splits); the question space is too small: ask for fewer items "
                    "or widen the task's generator settings"
                )
            continue
        rejects = 0
        seen.add(item_id)
        items.append(
            {
                "id": item_id,
                "task": spec.task,
                "split": split,
                "question": draft.question,
                "answer": draft.answer,
                "pattern": pattern,
                "shortcut_answer": draft.shortcut_answer,
                "meta": draft.meta,
            }
        )
        if progress is not None:
            progress(1)
    return items


def draw_splits(
    spec: SplitSpec, upto: str = SPLITS[-1], progress: Callable[[int], None] | None = None
) -> dict[str, tuple[Item, ...]]:
    """Draw the splits up to ``upto`` (uncached); ``progress(n)`` is told of every n new items."""
    spec.size(upto)
    task = spec.make_task()
    seen: set[str] = set()
    splits: dict[str, tuple[Item, ...]] = {}
    for split in SPLITS[: SPLITS.index(upto) + 1]:
        splits[split] = tuple(_draw(task, spec, split, seen, progress))
    return splits


_build = functools.lru_cache(maxsize=64)(draw_splits)


def build_splits(spec: SplitSpec) -> dict[str, tuple[Item, ...]]:
    """All four splits of one task. Cached per spec within the process: do not mutate the items."""
    return _build(spec, SPLITS[-1])


def build_split(spec: SplitSpec, split: str) -> tuple[Item, ...]:
    """One split, drawing only the splits it depends on (those before it in ``SPLITS``)."""
    spec.size(split)
    return _build(spec, split)[split]


def fingerprint(items: tuple[Item, ...] | list[Item]) -> str:
    """A short hash of a split's exact content; any change in the generator changes it."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def fingerprints(spec: SplitSpec) -> dict[str, str]:
    """Fingerprint of each split of ``spec``, keyed by split name."""
    return {split: fingerprint(items) for split, items in build_splits(spec).items()}
