"""The answer LRU: least recently used out first, per-document forgetting."""
from __future__ import annotations

from completion.cache import LruCache


def test_least_recently_used_goes_first():
    cache = LruCache(2)
    cache.put("a", 1, "one")
    cache.put("a", 2, "two")
    assert cache.get("a", 1) == "one"      # 1 is now the most recent
    cache.put("b", 3, "three")
    assert cache.get("a", 2) is None and cache.get("a", 1) == "one" and len(cache) == 2


def test_forget_drops_one_document_and_resize_evicts():
    cache = LruCache(4)
    for key in range(3):
        cache.put("a", key, key)
    cache.put("b", 0, "b0")
    cache.forget("a")
    assert len(cache) == 1 and cache.get("b", 0) == "b0"
    cache.put("b", 1, "b1")
    cache.resize(1)
    assert len(cache) == 1 and cache.get("b", 1) == "b1"
    cache.clear()
    assert len(cache) == 0


def test_a_capacity_of_zero_keeps_nothing():
    cache = LruCache(0)
    cache.put("a", 1, "x")
    assert cache.get("a", 1) is None
