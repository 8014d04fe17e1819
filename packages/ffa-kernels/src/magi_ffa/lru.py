"""A small thread-safe LRU map for host-built per-mask data (Triton work lists, FA4 block masks).

Values are built outside the lock (a build may take milliseconds): two threads missing the same
key at once both build and the later put wins, which is harmless since equal keys give equal
values.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["LRUCache"]


class LRUCache:
    """At most ``max_entries`` values; a hit makes its key the most recent."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The stored value of `key`, or ``build()`` stored under it (evicting the oldest)."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        value = build()
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value
