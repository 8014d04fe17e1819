"""magi_attention.api: the main user surface (reference §1.2)."""

from magi_attention.api.functools import (
    apply_padding,
    compute_pad_size,
    infer_attn_mask_from_cu_seqlens,
    infer_attn_mask_from_sliding_window,
    infer_varlen_mask_from_batch,
    pad_at_dim,
    squash_batch_dim,
    unpad_at_dim,
)
from magi_attention.api.interface import (
    calc_attn,
    dispatch,
    get_most_recent_key,
    get_position_ids,
    magi_attn_flex_dispatch,
    magi_attn_flex_key,
    magi_attn_varlen_dispatch,
    magi_attn_varlen_key,
    make_flex_key_for_new_mask_after_dispatch,
    make_varlen_key_for_new_mask_after_dispatch,
    prefetch_flex_key,
    prefetch_varlen_key,
    undispatch,
)
from magi_attention.common.enum import AttnOverlapMode
from magi_attention.common.ranges import AttnMaskType, AttnRanges
from magi_attention.config import (
    CostAwareDispatchAlg,
    DispatchConfig,
    DistAttnConfig,
    GrpCollConfig,
    MinHeapDispatchAlg,
    OverlapConfig,
    SequentialDispatchAlg,
    SortedSequentialSelectAlg,
    ToppHeapDispatchAlg,
    UniformOverlapAlg,
)
from magi_attention.functional import flex_flash_attn_func

__all__ = [
    "calc_attn", "dispatch", "undispatch", "magi_attn_flex_key", "magi_attn_varlen_key",
    "get_most_recent_key", "get_position_ids", "make_varlen_key_for_new_mask_after_dispatch",
    "make_flex_key_for_new_mask_after_dispatch", "magi_attn_flex_dispatch",
    "magi_attn_varlen_dispatch", "prefetch_flex_key", "prefetch_varlen_key", "flex_flash_attn_func",
    "compute_pad_size", "squash_batch_dim",
    "infer_varlen_mask_from_batch", "infer_attn_mask_from_sliding_window",
    "infer_attn_mask_from_cu_seqlens", "pad_at_dim", "unpad_at_dim", "apply_padding",
    "AttnMaskType", "AttnOverlapMode", "AttnRanges", "DistAttnConfig", "DispatchConfig",
    "MinHeapDispatchAlg", "SequentialDispatchAlg", "SortedSequentialSelectAlg", "CostAwareDispatchAlg",
    "ToppHeapDispatchAlg", "OverlapConfig", "UniformOverlapAlg", "GrpCollConfig",
]
