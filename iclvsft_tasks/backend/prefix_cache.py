"""A byte-bounded LRU store of prompt-prefix KV caches, with its own counters.

The backend (``hflm``) keys each stored cache by the prefix's token ids. The store knows nothing
about models or tensors: an entry's size comes from a size function (by default
``kv_cache_nbytes``, which reads ``.nbytes`` of a transformers cache's key/value tensors), so it is
tested with plain values and a made-up size.

Rules: the least recently used entry (by ``get`` hit or ``put``) is evicted first, until the new
entry fits; an entry larger than the whole bound is not stored (counted as ``uncached``; the caller
uses it once); storing under a key already present replaces that entry (not an eviction).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def kv_cache_nbytes(cache: Any) -> int:
    """Bytes of the key/value tensors of a transformers cache with ``layers`` (e.g. ``DynamicCache``)."""
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


class PrefixCache(Generic[K, V]):
    """At most ``max_bytes`` (by ``size``) of values, least recently used evicted first.

    Counters, for benchmarks: ``hits`` / ``misses`` (``get`` found / did not find the key),
    ``evictions``, ``uncached`` (``put`` of a value over the bound), ``nbytes`` (stored now) and
    ``peak_nbytes`` (most stored at once since the last ``reset_counters``).
    """

    def __init__(self, max_bytes: int, size: Callable[[V], int] = kv_cache_nbytes) -> None:
        self.max_bytes = max_bytes
        self._size = size
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = self.uncached = self.peak_nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """Keys from least to most recently used (the eviction order); counts nothing."""
        return iter(self._entries)

    def sizes(self) -> list[int]:
        """Each stored entry's size, least recently used first."""
        return [n for _, n in self._entries.values()]

    def get(self, key: K) -> V | None:
        """The value stored under ``key`` (now the most recently used), or None; counts a hit or a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: K, value: V) -> bool:
        """Store ``value`` under ``key``, evicting least recently used entries until it fits.

        Returns False, storing nothing, when ``value`` alone is over the bound (an old entry under
        ``key`` is dropped then too: it no longer is what the caller holds for ``key``).
        """
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        nbytes = self._size(value)
        if nbytes > self.max_bytes:
            self.uncached += 1
            return False
        while self._entries and self.nbytes + nbytes > self.max_bytes:
            _, (_, freed) = self._entries.popitem(last=False)
            self.nbytes -= freed
            self.evictions += 1
        self._entries[key] = (value, nbytes)
        self.nbytes += nbytes
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
        return True

    def clear(self) -> None:
        """Drop every entry (the counters stay; ``peak_nbytes`` keeps its peak)."""
        self._entries.clear()
        self.nbytes = 0

    def reset_counters(self) -> None:
        """Zero the counters; the entries stay, so ``peak_nbytes`` restarts from what is stored now."""
        self.hits = self.misses = self.evictions = self.uncached = 0
        self.peak_nbytes = self.nbytes
