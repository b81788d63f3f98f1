"""A bounded, thread-safe least-recently-used map: the one shape of every memo the explorer and the app keep
(decoded slider results, ground-truth renders, graphs, transition steps, encoded output files).

A visitor's events run on gradio's worker threads, so each read and write holds the map's own lock; a memo that
must check several structures at once (``TransitionCache``: kept steps and steps being computed) holds its own lock
around the calls, always taken before this one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``size`` entries; ``get`` marks an entry as used, ``put`` drops the least recently used ones past
    ``size``.

    Raises:
        ValueError: ``size`` < 1.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value kept for ``key`` (now the most recently used), else None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` for ``key`` as the most recently used entry, dropping the least recently used past
        ``size``."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:  # never the size + 1 of a put between its insert and its eviction
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items
