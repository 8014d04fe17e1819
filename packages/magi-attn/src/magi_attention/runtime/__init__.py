"""The distributed runtime: per-key managers, the per-group LRU and the stage pipeline."""

from magi_attention.runtime.cache import (
    DistAttnRuntimeDict,
    DistAttnRuntimeDictManager,
    dist_attn_runtime_dict_mgr,
)
from magi_attention.runtime.dist_attn import DistAttnFunc, DistAttnRuntime, dist_attn_func
from magi_attention.runtime.qo_comm import QOCommFunc, QOCommRuntime, qo_comm_attn_func
from magi_attention.runtime.runtime_mgr import (
    DistAttnRuntimeMgr,
    init_dist_attn_runtime_key,
    init_dist_attn_runtime_mgr,
)

__all__ = ["DistAttnRuntimeDict", "DistAttnRuntimeDictManager", "dist_attn_runtime_dict_mgr",
           "DistAttnFunc", "DistAttnRuntime", "dist_attn_func", "DistAttnRuntimeMgr",
           "init_dist_attn_runtime_key", "init_dist_attn_runtime_mgr", "QOCommFunc",
           "QOCommRuntime", "qo_comm_attn_func"]
