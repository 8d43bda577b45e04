"""A small LRU of recent engine answers, keyed by document and request.

The key is everything the engine sees (prompt, limits, stops, sampling), so an answer is
reused exactly when the model would be asked the same thing again — returning to an earlier
spot, repeating a request, or a suggestion precomputed after an accept. Entries are grouped by
document so that closing one frees its answers.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

V = TypeVar("V")


class LruCache(Generic[V]):
    # ---------------------------------------------------------------------------------------
    # Public API

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, Hashable], V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, uri: str, key: Hashable) -> V | None:
        """The value stored for (uri, key), now the most recently used; None if absent."""
        with self._lock:
            value = self._entries.get((uri, key))
            if value is not None:
                self._entries.move_to_end((uri, key))
            return value

    def put(self, uri: str, key: Hashable, value: V) -> None:
        with self._lock:
            self._entries[(uri, key)] = value
            self._entries.move_to_end((uri, key))
            self._evict()

    def forget(self, uri: str) -> None:
        """Drop every entry of one document."""
        with self._lock:
            for entry in [entry for entry in self._entries if entry[0] == uri]:
                del self._entries[entry]

    def resize(self, capacity: int) -> None:
        with self._lock:
            self._capacity = capacity
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # ---------------------------------------------------------------------------------------
    # Internal helpers

    def _evict(self) -> None:
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
