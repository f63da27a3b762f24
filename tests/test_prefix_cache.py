"""The byte-bounded LRU of prefix caches, without a model: values are strings, a value's size is its length."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from iclvsft_tasks.backend.prefix_cache import PrefixCache, kv_cache_nbytes


def _cache(max_bytes: int) -> PrefixCache[str, str]:
    return PrefixCache(max_bytes, size=len)


def test_get_counts_hits_and_misses():
    cache = _cache(10)
    assert cache.get("a") is None
    assert cache.put("a", "xxx")
    assert cache.get("a") == "xxx" and cache.get("a") == "xxx"
    assert cache.get("b") is None
    assert (cache.hits, cache.misses, cache.evictions, cache.uncached) == (2, 2, 0, 0)


def test_least_recently_used_is_evicted_first_and_a_hit_counts_as_use():
    cache = _cache(9)
    for key in "abc":
        cache.put(key, key * 3)
    assert list(cache) == ["a", "b", "c"] and cache.nbytes == 9
    cache.get("a")  # "b" is now the least recently used
    cache.put("d", "ddd")
    assert list(cache) == ["c", "a", "d"] and cache.evictions == 1
    # A big newcomer evicts as many as it needs, oldest first.
    cache.put("e", "e" * 7)
    assert list(cache) == ["e"] and cache.evictions == 4 and cache.nbytes == 7


def test_stored_bytes_never_exceed_the_bound():
    cache = _cache(10)
    for i, n in enumerate([4, 3, 6, 1, 10, 2, 5, 5, 9]):
        assert cache.put(i, "x" * n)
        assert cache.nbytes == sum(cache.sizes()) <= 10
        assert i in cache
    assert cache.peak_nbytes == 10


def test_an_entry_larger_than_the_bound_is_not_stored_and_evicts_nothing():
    cache = _cache(5)
    cache.put("a", "aaaa")
    assert not cache.put("big", "x" * 6)
    assert "big" not in cache and list(cache) == ["a"] and cache.nbytes == 4
    assert (cache.uncached, cache.evictions) == (1, 0)
    assert cache.put("exact", "x" * 5)  # exactly the bound fits
    assert list(cache) == ["exact"] and cache.nbytes == cache.peak_nbytes == 5


def test_re_put_replaces_the_entry_and_its_size_without_an_eviction():
    cache = _cache(10)
    cache.put("a", "aaaa")
    cache.put("b", "bbbb")
    cache.put("a", "AAAAAA")  # 4 -> 6 bytes: fits beside "b" once the old "a" is gone
    assert cache.get("a") == "AAAAAA" and list(cache) == ["b", "a"]
    assert cache.nbytes == 10 and cache.evictions == 0
    cache.put("a", "x" * 11)  # over the bound: the stale value must not be served
    assert "a" not in cache and cache.nbytes == 4 and cache.uncached == 1


def test_clear_and_reset_counters():
    cache = _cache(10)
    cache.put("a", "aaaa")
    cache.put("b", "bbbbbb")
    cache.get("a")
    cache.get("z")
    cache.put("c", "cc")  # evicts "b"
    cache.reset_counters()
    assert (cache.hits, cache.misses, cache.evictions, cache.uncached) == (0, 0, 0, 0)
    assert cache.peak_nbytes == cache.nbytes == 6  # restarts from what is stored
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.peak_nbytes == 6
    assert cache.get("a") is None and cache.misses == 1


def test_kv_cache_nbytes_sums_keys_and_values_of_every_layer():
    layer = SimpleNamespace(keys=np.zeros((1, 2, 3, 4), np.float32), values=np.zeros((1, 2, 3, 4), np.float32))
    empty = SimpleNamespace(keys=None, values=None)  # a layer not filled yet
    assert kv_cache_nbytes(SimpleNamespace(layers=[layer, layer, empty])) == 4 * 96
    cache = PrefixCache(4 * 96)
    assert cache.put((1, 2), SimpleNamespace(layers=[layer, layer])) and cache.nbytes == 4 * 96
