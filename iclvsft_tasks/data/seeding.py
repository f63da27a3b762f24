"""The one place that turns (task, split, seed) into a random number generator.

Seeds are hashed, never combined as ``seed + index``: with additive seeds, seed 1 of split A and
seed 0 of split B would share a stream, and two runs with neighbouring seeds would share almost
every item. SHA-256 of the labelled tuple gives independent streams that are identical in every
process, whatever ``PYTHONHASHSEED`` says.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    """A 64-bit integer seed from labelled parts, e.g. ``derive_seed("parity_pattern", "test", 0)``."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def rng_for(task: str, split: str, seed: int) -> random.Random:
    """The generator that draws the items of one split of one task."""
    return random.Random(derive_seed("iclvsft", task, split, seed))


def demo_rng(task: str, seed: int, draw: int) -> random.Random:
    """The generator that orders the train split into draw ``draw``'s fixed demonstrations."""
    return random.Random(derive_seed("iclvsft", task, "demos", seed, draw))
