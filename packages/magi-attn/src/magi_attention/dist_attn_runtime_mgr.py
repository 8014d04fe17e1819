"""Anchor-compatible module path for the runtime manager API (reference §1.6)."""

from magi_attention.env import check_flag_comb
from magi_attention.meta.key import DistAttnRuntimeKey
from magi_attention.runtime.cache import DistAttnRuntimeDict, DistAttnRuntimeDictManager
from magi_attention.runtime.runtime_mgr import (
    DistAttnRuntimeMgr,
    init_dist_attn_runtime_key,
    init_dist_attn_runtime_mgr,
)

__all__ = ["DistAttnRuntimeKey", "DistAttnRuntimeMgr", "DistAttnRuntimeDict",
           "DistAttnRuntimeDictManager", "init_dist_attn_runtime_key",
           "init_dist_attn_runtime_mgr", "check_flag_comb"]
