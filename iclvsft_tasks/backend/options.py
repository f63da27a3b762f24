"""The ``iclvsft-hf`` backend's own arguments, validated once (their meaning: ``hflm``'s docstring).

They arrive from ``--model_args`` as strings or from Python as numbers; ``PrefixOptions`` parses
both, so the backend can check them before it spends time loading the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from iclvsft_tasks.errors import IclvsftError

DEFAULT_PREFIX_CACHE_MB = 512
DEFAULT_MIN_PREFIX_TOKENS = 16
DEFAULT_PREFIX_BATCH_SIZE = 8


def _parse_number(name: str, value: Any, *, integer: bool, minimum: float) -> float | int:
    """``value`` as an int (or a number when not ``integer``) >= ``minimum``; strings come from --model_args."""
    kind = "an integer" if integer else "a number"
    parsed: float | int | None = None
    if isinstance(value, bool):
        parsed = None
    elif isinstance(value, int):
        parsed = value
    elif isinstance(value, float):
        parsed = int(value) if integer and value.is_integer() else (None if integer else value)
    elif isinstance(value, str):
        try:
            parsed = int(value.strip()) if integer else float(value.strip())
        except ValueError:
            parsed = None
    if parsed is None or not math.isfinite(parsed) or parsed < minimum:
        raise IclvsftError(f"{name} must be {kind} >= {minimum:g}, got {value!r}")
    return parsed


@dataclass(frozen=True)
class PrefixOptions:
    """``prefix_cache_mb`` (a number >= 0), ``min_prefix_tokens`` and ``prefix_batch_size`` (integers >= 1).

    Each field also accepts its ``--model_args`` string (``"0.5"``, ``"8"``) and holds the parsed number.
    """

    prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB
    min_prefix_tokens: int = DEFAULT_MIN_PREFIX_TOKENS
    prefix_batch_size: int = DEFAULT_PREFIX_BATCH_SIZE

    def __post_init__(self) -> None:
        # Frozen: the parsed values go in through object.__setattr__, once, here.
        object.__setattr__(
            self, "prefix_cache_mb", _parse_number("prefix_cache_mb", self.prefix_cache_mb, integer=False, minimum=0)
        )
        for name in ("min_prefix_tokens", "prefix_batch_size"):
            object.__setattr__(self, name, int(_parse_number(name, getattr(self, name), integer=True, minimum=1)))

    @property
    def cache_bytes(self) -> int:
        """The bound on stored prefix caches in bytes; 0 turns prefix caching off."""
        return int(self.prefix_cache_mb * 2**20)
