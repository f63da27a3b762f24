"""What the two users of a reused KV cache (``lm_backend``, ``circuits``) must know about transformers' caches.

A prompt prefix's cache can be computed once and resumed by later forward passes only if the
cache grows by concatenation (so a deep copy stays independent of the original) and resumes
exactly; transformers' ``DynamicCache`` of full-attention and sliding-window layers does both.
"""

from __future__ import annotations

import inspect
from typing import Any


def cache_keyword(model: Any) -> str | None:
    """The ``forward`` keyword that takes a cache: transformers 5 renamed ``past_key_values`` to
    ``cache`` (the old name is deprecated); None when the model takes neither."""
    params = inspect.signature(model.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def output_cache(output: Any) -> Any:
    """The cache a forward pass returned, under either name."""
    cache = output.get("cache", None)
    return output.get("past_key_values", None) if cache is None else cache


def resumable(cache: Any) -> bool:
    """Whether ``cache`` is one whose ``update`` concatenates (never writes in place) and that resumes exactly."""
    try:
        from transformers.cache_utils import (
            DynamicCache,
            DynamicLayer,
            DynamicSlidingWindowLayer,
        )
    except ImportError:  # older transformers: a different cache API
        return False
    layers = getattr(cache, "layers", None)
    return (
        type(cache) is DynamicCache
        and bool(layers)
        and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)
    )
