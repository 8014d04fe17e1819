"""The user-facing distributed API: keys, dispatch/undispatch, calc_attn (reference §4).

Typical use (every rank holds the same global x):
    key = magi_attn_varlen_key(cu_q, cu_k, num_heads_q, num_heads_kv, head_dim, pad_size,
                               chunk_size, cp_group, causal=True)
    local_x = dispatch(x, key)                      # [T'/cp, ...], no communication
    out, meta = calc_attn(q, k, v, key)             # local out, meta.lse local
    y = undispatch(out, key)                        # [T, ...], all-gather
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from typing_extensions import deprecated

from magi_attention import _compat
from magi_attention.api.functools import cu_seqlens_slices, pad_at_dim, unpad_at_dim
from magi_attention.config import DistAttnConfig
from magi_attention.errors import MagiAttentionError
from magi_attention.meta.key import DistAttnRuntimeKey
from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr
from magi_attention.runtime.runtime_mgr import get_or_create_mgr, init_dist_attn_runtime_key, prefetch_mgr

__all__ = ["magi_attn_flex_key", "magi_attn_varlen_key", "dispatch", "undispatch", "calc_attn",
           "get_position_ids", "get_most_recent_key", "make_flex_key_for_new_mask_after_dispatch",
           "make_varlen_key_for_new_mask_after_dispatch", "magi_attn_flex_dispatch",
           "magi_attn_varlen_dispatch", "prefetch_flex_key", "prefetch_varlen_key"]


def _made(build, fn: str, *key_args) -> DistAttnRuntimeKey:
    """The key of ``key_args`` (init_dist_attn_runtime_key's, checked now), its manager made by
    ``build``: at once (get_or_create_mgr) or on the prefetch thread (prefetch_mgr)."""
    key = init_dist_attn_runtime_key(*key_args, fn=fn)
    build(key)
    return key


def _varlen_made(build, fn: str, cu_seqlens_q, cu_seqlens_k, num_heads_q, num_heads_kv, head_dim, pad_size,
                 chunk_size, cp_group_or_mesh, causal, window_size, dist_attn_config) -> DistAttnRuntimeKey:
    qs, ks, ts, tq, tk = cu_seqlens_slices(cu_seqlens_q, cu_seqlens_k, causal, window_size)
    return _made(build, fn, qs, ks, ts, tq, tk, num_heads_q, num_heads_kv, head_dim, pad_size, chunk_size,
                 cp_group_or_mesh, dist_attn_config)


def magi_attn_flex_key(q_ranges, k_ranges, attn_mask_type, total_seqlen_q: int,
                       total_seqlen_k: int, num_heads_q: int, num_heads_kv: int, head_dim: int,
                       pad_size: int, chunk_size: int, cp_group_or_mesh: Any,
                       dist_attn_config: DistAttnConfig | None = None, is_same_source: bool = True,
                       is_q_permutable: bool = True,
                       is_k_permutable: bool = True) -> DistAttnRuntimeKey:
    """Create (or fetch from the cp group's LRU) the runtime for a slice mask.

    Args:
        q_ranges, k_ranges: AttnRanges (or (start, end) pairs) of the unpadded mask.
        attn_mask_type: one type for all slices or one per slice (str, AttnMaskType or 0..3).
        total_seqlen_q, total_seqlen_k: unpadded lengths (equal: self-attention only).
        num_heads_q, num_heads_kv, head_dim: the shapes calc_attn will receive.
        pad_size: from compute_pad_size; chunk_size: dispatch granularity.
        cp_group_or_mesh: ProcessGroup, or a 1-D / 2-D DeviceMesh (2-D for hierarchical comm).
    Returns:
        A hashable DistAttnRuntimeKey for dispatch / calc_attn / undispatch.
    """
    return _made(get_or_create_mgr, "magi_attn_flex_key", q_ranges, k_ranges, attn_mask_type, total_seqlen_q,
                 total_seqlen_k, num_heads_q, num_heads_kv, head_dim, pad_size, chunk_size, cp_group_or_mesh,
                 dist_attn_config, is_same_source, is_q_permutable, is_k_permutable)


def magi_attn_varlen_key(cu_seqlens_q, cu_seqlens_k, num_heads_q: int, num_heads_kv: int,
                         head_dim: int, pad_size: int, chunk_size: int, cp_group_or_mesh: Any,
                         causal: bool = False, window_size: Sequence[int] = (-1, -1),
                         dist_attn_config: DistAttnConfig | None = None) -> DistAttnRuntimeKey:
    """Varlen (cu_seqlens) front end of magi_attn_flex_key; optional causal or sliding window."""
    return _varlen_made(get_or_create_mgr, "magi_attn_varlen_key", cu_seqlens_q, cu_seqlens_k, num_heads_q,
                        num_heads_kv, head_dim, pad_size, chunk_size, cp_group_or_mesh, causal, window_size,
                        dist_attn_config)


def prefetch_flex_key(q_ranges, k_ranges, attn_mask_type, total_seqlen_q: int, total_seqlen_k: int,
                      num_heads_q: int, num_heads_kv: int, head_dim: int, pad_size: int, chunk_size: int,
                      cp_group_or_mesh: Any, dist_attn_config: DistAttnConfig | None = None,
                      is_same_source: bool = True, is_q_permutable: bool = True,
                      is_k_permutable: bool = True) -> DistAttnRuntimeKey:
    """magi_attn_flex_key's key at once, its runtime built on a background thread (magi-attn's
    addition; runtime/prefetch.py).

    Call it for the next batch's mask while the current step runs: the dispatch choice, the plans
    and the first calls' host work (stage comm plans, native collective bindings, fa4 mask
    translations) are then ready, or nearly, when that step starts. The arguments are checked now;
    a failure of the build is raised where the key is first used. ``dispatch`` / ``calc_attn`` with the key, or
    ``magi_attn_flex_key`` with the same arguments, wait for the build. Every rank of the group must
    prefetch (or create) the same keys in the same order, as with magi_attn_flex_key.
    """
    return _made(prefetch_mgr, "prefetch_flex_key", q_ranges, k_ranges, attn_mask_type, total_seqlen_q,
                 total_seqlen_k, num_heads_q, num_heads_kv, head_dim, pad_size, chunk_size, cp_group_or_mesh,
                 dist_attn_config, is_same_source, is_q_permutable, is_k_permutable)


def prefetch_varlen_key(cu_seqlens_q, cu_seqlens_k, num_heads_q: int, num_heads_kv: int,
                        head_dim: int, pad_size: int, chunk_size: int, cp_group_or_mesh: Any,
                        causal: bool = False, window_size: Sequence[int] = (-1, -1),
                        dist_attn_config: DistAttnConfig | None = None) -> DistAttnRuntimeKey:
    """Varlen (cu_seqlens) front end of prefetch_flex_key: magi_attn_varlen_key's key at once, its
    runtime built on a background thread."""
    return _varlen_made(prefetch_mgr, "prefetch_varlen_key", cu_seqlens_q, cu_seqlens_k, num_heads_q,
                        num_heads_kv, head_dim, pad_size, chunk_size, cp_group_or_mesh, causal, window_size,
                        dist_attn_config)


def _mgr(key: DistAttnRuntimeKey, fn: str):
    if not isinstance(key, DistAttnRuntimeKey):
        raise MagiAttentionError(f"{fn}(): key must be a DistAttnRuntimeKey, got "
                                 f"{type(key).__name__}")
    return dist_attn_runtime_dict_mgr.get_mgr(key)


def dispatch(x: torch.Tensor, key: DistAttnRuntimeKey, pad_value: float = 0.0) -> torch.Tensor:
    """Global ``x`` [T, ...] -> this rank's tokens [T'/cp, ...] (differentiable, no comm)."""
    mgr = _mgr(key, "dispatch")
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] != key.unpadded_seqlen:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise MagiAttentionError(f"dispatch(): x has shape {got}; dim 0 must be the unpadded "
                                 f"total seqlen {key.unpadded_seqlen}")
    return mgr.dispatch_qo(pad_at_dim(x, 0, key.pad_size, value=pad_value))


def undispatch(x: torch.Tensor, key: DistAttnRuntimeKey) -> torch.Tensor:
    """This rank's tokens [T'/cp, ...] -> global [T, ...] (differentiable, all-gather)."""
    mgr = _mgr(key, "undispatch")
    return unpad_at_dim(mgr.undispatch_qo(x), 0, key.pad_size)


def calc_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key: DistAttnRuntimeKey,
              sink: torch.Tensor | None = None, softmax_scale: float | None = None,
              softcap: float = 0.0, return_max_logits: bool = False):
    """Distributed attention on dispatched tensors.

    Args:
        q: [Sq_local, hq, d]; k, v: [Sk_local, hk, d] from dispatch with the same key.
        sink: global replicated [s_sink, hq] fp32 (layout "sh"), or None.
    Returns:
        (out [Sq_local, hq, d] q.dtype, AttnForwardMeta(lse=[Sq_local, hq] fp32 local,
        max_logits=[hq] global MAX over the group or None)).
    """
    mgr = _mgr(key, "calc_attn")
    out, lse, max_logits = mgr.calc_attn(q, k, v, sink=sink, softmax_scale=softmax_scale,
                                         softcap=softcap, return_max_logits=return_max_logits)
    return out, _compat.ffa.AttnForwardMeta(lse=lse, max_logits=max_logits)


def get_position_ids(key: DistAttnRuntimeKey) -> torch.Tensor:
    """Global position of each local token (int64), padding clamped to the last valid id."""
    return _mgr(key, "get_position_ids").get_position_ids()


def get_most_recent_key(cp_group: Any) -> DistAttnRuntimeKey:
    """The most recently created or used key of ``cp_group``'s cache."""
    return dist_attn_runtime_dict_mgr.most_recent_key(cp_group)


def make_flex_key_for_new_mask_after_dispatch(q_ranges, k_ranges, attn_mask_type,
                                              key_for_dispatch: DistAttnRuntimeKey,
                                              dist_attn_config: DistAttnConfig | None = None):
    """A key for another mask that reuses ``key_for_dispatch``'s chunk partition.

    Only the overlap config of ``dist_attn_config`` is used; load balance is not guaranteed.
    """
    ref = _mgr(key_for_dispatch, "make_flex_key_for_new_mask_after_dispatch")
    base = key_for_dispatch.dist_attn_config
    cfg = base if dist_attn_config is None else DistAttnConfig(
        dispatch_config=base.dispatch_config, overlap_config=dist_attn_config.overlap_config)
    total = key_for_dispatch.unpadded_seqlen
    key = init_dist_attn_runtime_key(
        q_ranges, k_ranges, attn_mask_type, total, total, key_for_dispatch.num_heads_q,
        key_for_dispatch.num_heads_kv, key_for_dispatch.head_dim, key_for_dispatch.pad_size,
        key_for_dispatch.chunk_size,
        key_for_dispatch.cp_mesh if key_for_dispatch.cp_mesh is not None
        else key_for_dispatch.cp_group,
        cfg, dispatch_source=key_for_dispatch,
        fn="make_flex_key_for_new_mask_after_dispatch")
    get_or_create_mgr(key, ref_dispatch_meta=ref.dispatch_meta)
    return key


def make_varlen_key_for_new_mask_after_dispatch(cu_seqlens_q, cu_seqlens_k,
                                                key_for_dispatch: DistAttnRuntimeKey,
                                                causal: bool = False,
                                                window_size: Sequence[int] = (-1, -1),
                                                dist_attn_config: DistAttnConfig | None = None):
    """Varlen counterpart of make_flex_key_for_new_mask_after_dispatch."""
    qs, ks, ts, tq, _ = cu_seqlens_slices(cu_seqlens_q, cu_seqlens_k, causal, window_size)
    if tq != key_for_dispatch.unpadded_seqlen:
        raise MagiAttentionError(
            f"make_varlen_key_for_new_mask_after_dispatch(): cu_seqlens total {tq} differs from "
            f"the dispatched sequence length {key_for_dispatch.unpadded_seqlen}")
    return make_flex_key_for_new_mask_after_dispatch(qs, ks, ts, key_for_dispatch,
                                                     dist_attn_config)


@deprecated("magi_attn_flex_dispatch is deprecated; use magi_attn_flex_key then dispatch",
            category=DeprecationWarning)
def magi_attn_flex_dispatch(x: torch.Tensor, q_ranges, k_ranges, attn_mask_type,
                            total_seqlen_q, total_seqlen_k, num_heads_q, num_heads_kv, head_dim,
                            pad_size, chunk_size, cp_group_or_mesh, dist_attn_config=None,
                            is_same_source=True, is_q_permutable=True, is_k_permutable=True):
    """Deprecated one-shot form: returns (local_x, key)."""
    key = magi_attn_flex_key(q_ranges, k_ranges, attn_mask_type, total_seqlen_q, total_seqlen_k,
                             num_heads_q, num_heads_kv, head_dim, pad_size, chunk_size,
                             cp_group_or_mesh, dist_attn_config, is_same_source,
                             is_q_permutable, is_k_permutable)
    return dispatch(x, key), key


@deprecated("magi_attn_varlen_dispatch is deprecated; use magi_attn_varlen_key then dispatch",
            category=DeprecationWarning)
def magi_attn_varlen_dispatch(x: torch.Tensor, cu_seqlens_q, cu_seqlens_k, num_heads_q,
                              num_heads_kv, head_dim, pad_size, chunk_size, cp_group_or_mesh,
                              causal=False, window_size=(-1, -1), dist_attn_config=None):
    """Deprecated one-shot form: returns (local_x, key)."""
    key = magi_attn_varlen_key(cu_seqlens_q, cu_seqlens_k, num_heads_q, num_heads_kv, head_dim,
                               pad_size, chunk_size, cp_group_or_mesh, causal, window_size,
                               dist_attn_config)
    return dispatch(x, key), key
