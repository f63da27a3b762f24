"""The data settings of a run: one seed and four split sizes, checked once and passed whole.

Every config that needs data (``iclvsft compare``'s experiment, ``iclvsft-train``'s options,
``iclvsft circuits``' config) holds a ``DataSpec``. It owns the conversions the settings go
through: to a task's ``SplitSpec`` (``split_spec``, the one place our code builds one), and to and
from lm-eval metadata (``to_metadata`` / ``from_metadata``, the ``iclvsft_seed`` and
``iclvsft_<split>_size`` keys).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from iclvsft_tasks.errors import IclvsftError

if TYPE_CHECKING:
    from iclvsft_tasks.data.splits import SplitSpec
    from iclvsft_tasks.tasks.base import TaskConfig

#: Generation order, which is also the order in which splits win duplicates.
SPLITS: tuple[str, ...] = ("test", "test_broken", "validation", "train")
#: The splits a model is evaluated on, never trained on: validation (choices), then the two test splits.
HELD_OUT_SPLITS: tuple[str, ...] = ("validation", "test", "test_broken")
DEFAULT_SIZES: dict[str, int] = {"test": 500, "test_broken": 500, "validation": 200, "train": 20_000}
#: Upper bound on any split, far above any use, so a typo like 10**9 fails at once.
MAX_SPLIT_SIZE = 5_000_000
#: Our lm-eval metadata keys carry this prefix, so they cannot clash with a model's own ``seed``.
METADATA_PREFIX = "iclvsft_"
#: lm-eval metadata key -> DataSpec field.
METADATA_KEYS: dict[str, str] = {
    f"{METADATA_PREFIX}seed": "seed",
    **{f"{METADATA_PREFIX}{split}_size": f"{split}_size" for split in SPLITS},
}


def metadata_int(key: str, value: Any) -> int:
    """An integer from lm-eval metadata, which may arrive as a string (``--metadata``, model args)."""
    if isinstance(value, bool):
        raise IclvsftError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise IclvsftError(f"{key} must be an integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The seed and split sizes that, with a task, determine every item a run sees."""

    seed: int = 0
    test_size: int = DEFAULT_SIZES["test"]
    test_broken_size: int = DEFAULT_SIZES["test_broken"]
    validation_size: int = DEFAULT_SIZES["validation"]
    train_size: int = DEFAULT_SIZES["train"]

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise IclvsftError(f"seed must be an integer, got {self.seed!r}")
        if self.seed < 0:  # hashed, so it would work, but a negative seed is nearly always a slip
            raise IclvsftError(f"seed must be 0 or more, got {self.seed}")
        for split in SPLITS:
            size = self.size(split)
            if isinstance(size, bool) or not isinstance(size, int):
                raise IclvsftError(f"{split} size must be an integer, got {size!r}")
            if not 0 <= size <= MAX_SPLIT_SIZE:
                raise IclvsftError(f"{split} size must be between 0 and {MAX_SPLIT_SIZE:,}, got {size:,}")

    @classmethod
    def from_sizes(cls, sizes: Mapping[str, int | None], seed: int = 0) -> DataSpec:
        """From ``{split: size}``; a missing split, or None, keeps its default."""
        unknown = sorted(set(sizes) - set(SPLITS))
        if unknown:
            raise IclvsftError(f"unknown split {', '.join(unknown)}; splits are: {', '.join(SPLITS)}")
        return cls(seed=seed, **{f"{split}_size": n for split, n in sizes.items() if n is not None})

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> DataSpec:
        """From lm-eval metadata: the ``METADATA_KEYS`` it holds (others are not ours to read here)."""
        return cls(
            **{field: metadata_int(key, metadata[key]) for key, field in METADATA_KEYS.items() if key in metadata}
        )

    def to_metadata(self) -> dict[str, int]:
        """The lm-eval metadata that ``from_metadata`` reads back as this spec."""
        return {key: getattr(self, field) for key, field in METADATA_KEYS.items()}

    def size(self, split: str) -> int:
        if split not in SPLITS:
            raise IclvsftError(f"unknown split {split!r}; splits are: {', '.join(SPLITS)}")
        return getattr(self, f"{split}_size")

    @property
    def sizes(self) -> dict[str, int]:
        """``{split: size}`` in ``SPLITS`` order (a fresh dict, so it serializes as JSON)."""
        return {split: self.size(split) for split in SPLITS}

    def split_spec(self, task: str, config: TaskConfig | None = None) -> SplitSpec:
        """The ``SplitSpec`` of ``task`` under these settings (``config``: its generator settings)."""
        from iclvsft_tasks.data.splits import SplitSpec  # splits builds on this module

        return SplitSpec(task, seed=self.seed, **{f"{s}_size": n for s, n in self.sizes.items()}, config=config)
