"""Small enums and type aliases of the public API (reference §1.4)."""

from __future__ import annotations

from enum import Enum
from typing import Literal, Union

import torch

__all__ = ["GroupReduceOp", "AttnSinkLayout", "OutMaybeWithLSE", "AttnType", "AttnRole",
           "AttnOverlapMode", "DispatchAlgType", "OverlapAlgType", "DynamicAttnAlgType",
           "GrpCollBufferName"]

GroupReduceOp = Literal["sum", "avg", "lse"]
AttnSinkLayout = Literal["sh", "shd", "ssh"]
OutMaybeWithLSE = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


class AttnType(Enum):
    SELF_ATTN = "self_attn"
    CROSS_ATTN = "cross_attn"


class AttnRole(Enum):
    QUERY = "query"
    KEY = "key"
    VALUE = "value"


class AttnOverlapMode(Enum):
    STATIC = "static"
    DYNAMIC = "dynamic"


class DispatchAlgType(Enum):
    LOWER_BOUND = "lower_bound"
    DYNAMIC_PROGRAMMING = "dynamic_programming"
    BINARY_SEARCH = "binary_search"
    MIN_HEAP = "min_heap"
    BACKTRACKING_PRUNING = "backtracking_pruning"
    TOPP_HEAP = "topp_heap"
    RANDOM_SELECT = "random_select"
    SEQUENTIAL = "sequential"
    BATCH_TOPP_HEAP = "batch_topp_heap"
    SORTED_SEQUENTIAL_SELECT = "sorted_sequential_select"
    COST_AWARE = "cost_aware"  # magi-attn's addition: the best of several algorithms by planned work


class OverlapAlgType(Enum):
    UNIFORM = "uniform"
    GREEDY = "greedy"


class DynamicAttnAlgType(Enum):
    BINARY_GREEDY_PARALLEL = "binary_greedy_parallel"


class GrpCollBufferName(Enum):
    GroupCastDefault = "group_cast_default"
    GroupReduceDefault = "group_reduce_default"
    GroupCastQO = "group_cast_qo"
    GroupReduceQO = "group_reduce_qo"
