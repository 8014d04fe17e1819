"""Helpers that turn batches, cu_seqlens and sliding windows into slice masks, and pad tensors.

Why: users describe masks as varlen batches or FlashAttention-style windows; the runtime only
speaks (q_ranges, k_ranges, mask types). These converters are exact (tests compare them cell by
cell with dense masks) and need no communication.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from magi_attention.common.ranges import (
    make_attn_ranges,
    make_mask_types,
    mask_type_codes,
    naive_ranges,
)
from magi_attention.errors import MagiAttentionError

__all__ = ["compute_pad_size", "squash_batch_dim", "infer_varlen_mask_from_batch",
           "infer_attn_mask_from_sliding_window", "infer_attn_mask_from_cu_seqlens",
           "pad_at_dim", "unpad_at_dim", "apply_padding", "sliding_window_slices",
           "cu_seqlens_slices"]

FULL, CAUSAL, INV_CAUSAL, BI_CAUSAL = 0, 1, 2, 3
_INF = 1 << 62


def compute_pad_size(total_seqlen_q: int, cp_size: int, chunk_size: int) -> int:
    """Tokens to append so the total is a multiple of ``chunk_size * cp_size``."""
    for name, v in (("total_seqlen_q", total_seqlen_q), ("cp_size", cp_size),
                    ("chunk_size", chunk_size)):
        if not isinstance(v, int) or v < (0 if name == "total_seqlen_q" else 1):
            raise MagiAttentionError(f"compute_pad_size(): {name}={v!r} must be a "
                                     f"{'non-negative' if name == 'total_seqlen_q' else 'positive'} int")
    block = chunk_size * cp_size
    return (-total_seqlen_q) % block


def squash_batch_dim(x: torch.Tensor) -> torch.Tensor:
    """[b, s, ...] -> [b*s, ...]."""
    if x.dim() < 2:
        raise MagiAttentionError(f"squash_batch_dim(): x needs >= 2 dims, got {list(x.shape)}")
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def infer_varlen_mask_from_batch(batch_size: int, seq_len: int,
                                 device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cu_seqlens for ``batch_size`` equal sequences: ``arange(b+1)*seq_len`` int32 (q and k)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cu = torch.arange(batch_size + 1, dtype=torch.int32, device=device) * seq_len
    return cu, cu


def pad_at_dim(x: torch.Tensor, dim: int, pad_size: int, value: float = 0.0,
               side: str = "right") -> torch.Tensor:
    """Pad ``pad_size`` entries of ``value`` at one side of ``dim``."""
    if pad_size < 0:
        raise MagiAttentionError(f"pad_at_dim(): pad_size={pad_size} must be >= 0")
    if side not in ("left", "right"):
        raise MagiAttentionError(f"pad_at_dim(): side={side!r}; expected 'left' or 'right'")
    if pad_size == 0:
        return x
    dim = dim % x.dim()
    pad = [0, 0] * (x.dim() - dim)
    pad[-2 if side == "left" else -1] = pad_size
    return F.pad(x, pad, value=value)


def unpad_at_dim(x: torch.Tensor, dim: int, pad_size: int) -> torch.Tensor:
    """Drop the last ``pad_size`` entries of ``dim`` (the anchor always narrowed dim 0)."""
    if pad_size < 0 or pad_size > x.shape[dim]:
        raise MagiAttentionError(f"unpad_at_dim(): pad_size={pad_size} must be in "
                                 f"[0, {x.shape[dim]}]")
    return x.narrow(dim, 0, x.shape[dim] - pad_size)


def apply_padding(q_ranges: Any, k_ranges: Any, attn_mask_type: Any, total_seqlen: int,
                  pad_size: int):
    """Copies of the mask with the padding slice ``[T, T+pad) x [0, 0)`` FULL appended."""
    qr = list(naive_ranges(q_ranges, fn="apply_padding", arg="q_ranges"))
    kr = list(naive_ranges(k_ranges, fn="apply_padding", arg="k_ranges"))
    types = list(mask_type_codes(attn_mask_type, len(qr), fn="apply_padding"))
    if pad_size > 0:
        qr.append((total_seqlen, total_seqlen + pad_size))
        kr.append((0, 0))
        types.append(FULL)
    return make_attn_ranges(qr), make_attn_ranges(kr), make_mask_types(types)


def _check_window(window_size: Any, fn: str) -> tuple[int, int]:
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise MagiAttentionError(f"{fn}(): window_size={window_size!r} must be a pair "
                                 "(left, right)") from None
    if left < -1 or right < -1:
        raise MagiAttentionError(f"{fn}(): window_size={window_size!r}; each side must be >= 0 "
                                 "or -1 (unbounded)")
    return left, right


def sliding_window_slices(q_range: tuple[int, int], k_range: tuple[int, int],
                          window_size: tuple[int, int]) -> list[tuple[tuple, tuple, int]]:
    """The window mask of one (q, k) pair as <= 3 cell-disjoint (q, k, type-code) slices.

    Query local i sees key local j iff ``c - left <= j <= c + right`` with ``c = i + Lk - Lq``
    (bottom-right aligned; -1 = unbounded). When Lq > Lk the first Lq - Lk rows get no keys.
    Rows are grouped by which window edge is clipped by the sequence: left edge clipped
    (CAUSAL), both or neither (FULL or BI_CAUSAL), right edge clipped (INV_CAUSAL).
    """
    left, right = _check_window(window_size, "infer_attn_mask_from_sliding_window")
    (qs, qe), (ks, ke) = q_range, k_range
    lq, lk = qe - qs, ke - ks
    if lq <= 0 or lk <= 0:
        return []
    off = lk - lq
    big_l = _INF if left == -1 else left
    big_r = _INF if right == -1 else right
    c_first, c_last = max(0, off), lk - 1
    t = lk - 1 - big_r  # the right edge is clipped iff c >= t
    out: list[tuple[tuple, tuple, int]] = []

    def add(ca: int, cb: int, kind: int) -> None:
        ca, cb = max(ca, c_first), min(cb, c_last)
        if ca > cb:
            return
        k_lo = 0 if kind in (CAUSAL, FULL) else ca - big_l
        k_hi = lk if kind in (FULL, INV_CAUSAL) else cb + big_r + 1
        out.append(((qs + ca - off, qs + cb - off + 1), (ks + k_lo, ks + k_hi), kind))

    if big_l < t:
        add(c_first, big_l, CAUSAL)
        add(big_l + 1, t - 1, BI_CAUSAL)
        add(t, c_last, INV_CAUSAL)
    else:
        add(c_first, t - 1, CAUSAL)
        add(t, big_l, FULL)
        add(big_l + 1, c_last, INV_CAUSAL)
    return out


def infer_attn_mask_from_sliding_window(q_range: Any, k_range: Any, window_size: Sequence[int]):
    """One sequence's sliding-window mask -> (q_ranges, k_ranges, mask types), <= 3 slices."""
    (qr,) = naive_ranges([q_range], fn="infer_attn_mask_from_sliding_window", arg="q_range")
    (kr,) = naive_ranges([k_range], fn="infer_attn_mask_from_sliding_window", arg="k_range")
    slices = sliding_window_slices(qr, kr, tuple(window_size))
    return (make_attn_ranges([s[0] for s in slices]), make_attn_ranges([s[1] for s in slices]),
            make_mask_types([s[2] for s in slices]))


def _cu_list(cu: Any, fn: str, arg: str) -> list[int]:
    vals = cu.tolist() if isinstance(cu, torch.Tensor) else [int(v) for v in cu]
    if not vals or vals[0] != 0 or any(b < a for a, b in zip(vals, vals[1:])):
        raise MagiAttentionError(f"{fn}(): {arg}={vals} must start at 0 and be non-decreasing")
    return vals


def cu_seqlens_slices(cu_seqlens_q: Any, cu_seqlens_k: Any, causal: bool = False,
                      window_size: Sequence[int] = (-1, -1)):
    """(q pairs, k pairs, type codes, total_q, total_k) for a varlen batch (plain Python)."""
    fn = "infer_attn_mask_from_cu_seqlens"
    cq = _cu_list(cu_seqlens_q, fn, "cu_seqlens_q")
    ck = _cu_list(cu_seqlens_k, fn, "cu_seqlens_k")
    if len(cq) != len(ck):
        raise MagiAttentionError(f"{fn}(): cu_seqlens_q has {len(cq)} entries but cu_seqlens_k "
                                 f"has {len(ck)}; they must describe the same batch")
    left, right = _check_window(window_size, fn)
    qs, ks, ts = [], [], []
    for i in range(len(cq) - 1):
        q, k = (cq[i], cq[i + 1]), (ck[i], ck[i + 1])
        if (left, right) == (-1, -1):
            qs.append(q)
            ks.append(k)
            ts.append(CAUSAL if causal else FULL)
        else:
            if causal:
                raise MagiAttentionError(f"{fn}(): causal=True with window_size={window_size}; "
                                         "express causality as window_size=(left, 0)")
            for sq, sk, t in sliding_window_slices(q, k, (left, right)):
                qs.append(sq)
                ks.append(sk)
                ts.append(t)
    return qs, ks, ts, cq[-1], ck[-1]


def infer_attn_mask_from_cu_seqlens(cu_seqlens_q: Any, cu_seqlens_k: Any, causal: bool = False,
                                    window_size: Sequence[int] = (-1, -1)):
    """Varlen batch -> (q_ranges, k_ranges, mask types, total_seqlen_q, total_seqlen_k)."""
    qs, ks, ts, tq, tk = cu_seqlens_slices(cu_seqlens_q, cu_seqlens_k, causal, window_size)
    return make_attn_ranges(qs), make_attn_ranges(ks), make_mask_types(ts), tq, tk
