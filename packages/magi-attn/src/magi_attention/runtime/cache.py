"""Per-cp-group LRU caches of runtime managers.

Why per group: building or evicting a runtime must happen identically on every rank of a group.
A single process-wide LRU shared by two groups could evict differently on ranks that belong to
different sets of groups; one LRU per group sees the same access sequence on each member rank.

Why cleared at exit: a cached key holds its process group. Left to interpreter finalization, a
gloo group's worker threads are torn down while Python is half gone, which can abort the process
("terminate called without an active exception") after all work finished; clearing the caches
from an ``atexit`` hook releases them while the interpreter is still whole.
"""

from __future__ import annotations

import atexit
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

from magi_attention.env import dist_attn_runtime_dict_size
from magi_attention.errors import KeyNotFoundError, MagiAttentionError
from magi_attention.meta.key import group_ranks
from magi_attention.runtime import prefetch

__all__ = ["DistAttnRuntimeDict", "DistAttnRuntimeDictManager", "dist_attn_runtime_dict_mgr"]


class DistAttnRuntimeDict(OrderedDict):
    """An OrderedDict LRU: ``get`` refreshes, ``put`` evicts the oldest beyond ``max_size``."""

    def __init__(self, max_size: int):
        super().__init__()
        self.max_size = max_size

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            value = self[key]
        except KeyError:
            return default
        self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if key in self:
            self.move_to_end(key)
        self[key] = value
        while len(self) > self.max_size:
            self.popitem(last=False)

    def most_recent_key(self) -> Any:
        if not self:
            return None
        return next(reversed(self))


class DistAttnRuntimeDictManager:
    """Holds one DistAttnRuntimeDict per cp group, keyed by the group's sorted global ranks."""

    def __init__(self) -> None:
        self._dicts: dict[tuple[int, ...], DistAttnRuntimeDict] = {}
        # id(group) -> (group, its sorted ranks): asking torch for a group's ranks on every call
        # costs host time; the group is held so that its id cannot name another group meanwhile
        self._ranks: dict[int, tuple[Any, tuple[int, ...]]] = {}

    def _ranks_of(self, group: Any) -> tuple[int, ...]:
        hit = self._ranks.get(id(group))
        if hit is not None and hit[0] is group:
            return hit[1]
        ranks = group_ranks(group)
        self._ranks[id(group)] = (group, ranks)
        return ranks

    def dict_for(self, group: Any) -> DistAttnRuntimeDict:
        ranks = self._ranks_of(group)
        d = self._dicts.get(ranks)
        if d is None:
            d = self._dicts[ranks] = DistAttnRuntimeDict(dist_attn_runtime_dict_size())
        return d

    def get_mgr(self, key: Any) -> Any:
        d = self.dict_for(key.cp_group)
        mgr = resolved(d, key)
        if mgr is None:
            raise KeyNotFoundError(
                "The dist attn runtime key does not exist! (it was never created in this process "
                "or was evicted from its group's LRU; raise MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE "
                "or recreate it with magi_attn_flex_key / magi_attn_varlen_key)")
        return mgr

    def most_recent_key(self, group: Any) -> Any:
        if group is None:
            raise MagiAttentionError("get_most_recent_key(): cp_group is None")
        key = self.dict_for(group).most_recent_key()
        if key is None:
            raise MagiAttentionError("get_most_recent_key(): no runtime key has been created for "
                                     "this cp group yet")
        return key

    def clear(self) -> None:
        for d in self._dicts.values():  # also empties dicts a caller still holds
            d.clear()
        self._dicts.clear()
        self._ranks.clear()


def resolved(d: DistAttnRuntimeDict, key: Any) -> Any:
    """``d``'s manager for ``key`` (None: not cached); a prefetched one is waited for and put in
    its place (its place in the LRU kept). A failed build leaves the cache, so the next use builds
    again, and raises here."""
    value = d.get(key)
    if not isinstance(value, Future):  # a manager, or None
        return value
    try:
        mgr = prefetch.ready(value)
    except BaseException:
        if dict.get(d, key) is value:
            del d[key]
        raise
    if dict.get(d, key) is value:
        d[key] = mgr
    return mgr


dist_attn_runtime_dict_mgr = DistAttnRuntimeDictManager()
atexit.register(dist_attn_runtime_dict_mgr.clear)
