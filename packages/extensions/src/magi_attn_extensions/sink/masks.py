"""Masks as FFA slices: FlashAttention windows and cu_seqlens decomposed into (q, k, type) slices.

Both the SDPA path (which materialises a dense boolean mask from the slices) and the FFA path
(which passes the slices as ranges) use these, so the two paths see exactly the same mask.

Mask type codes (contract): FULL 0, CAUSAL 1 (bottom-right), INV_CAUSAL 2 (top-left), BI_CAUSAL 3.
A slice is ``(q_start, q_end, k_start, k_end, type)`` with half-open ranges.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FULL, CAUSAL, INV_CAUSAL, BI_CAUSAL = 0, 1, 2, 3

Slice = tuple[int, int, int, int, int]


def window_slices(
    len_q: int, len_k: int, causal: bool, window_size: tuple[int, int], q_offset: int = 0, k_offset: int = 0
) -> list[Slice]:
    """Cell-disjoint slices covering FlashAttention's bottom-right-aligned window on one sequence.

    Query ``i`` sees key ``j`` iff ``i + Lk - Lq - left <= j <= i + Lk - Lq + right`` (``-1`` means
    unbounded; ``causal`` forces ``right = 0``), clipped to ``[0, Lk)``. Rows are split by whether
    the lower and the upper edge is clipped: neither -> BI_CAUSAL, lower only -> CAUSAL, upper only ->
    INV_CAUSAL, both -> FULL. Unlike the anchor's helper, rows are never dropped beyond the window.
    """
    left, right = window_size
    if causal:
        right = 0
    big = len_q + len_k + 1
    off = len_k - len_q
    lo = off - left if left >= 0 else -big  # key lower edge of row i is i + lo
    hi = off + right if right >= 0 else big  # key upper edge (inclusive) of row i is i + hi

    def rows(start: int, end: int) -> tuple[int, int]:
        start, end = max(start, 0), min(end, len_q)
        return start, max(start, end)

    # a row is non-empty iff i + hi >= 0 and i + lo <= Lk - 1
    first, last = -hi, len_k - 1 - lo  # inclusive bounds of non-empty rows
    lo_clipped_end = -lo  # rows i < -lo have the lower edge clipped
    hi_clipped_start = len_k - hi  # rows i >= Lk - hi have the upper edge clipped
    out: list[Slice] = []
    # lower clipped, upper not: keys [0, i + hi]
    r0, r1 = rows(first, min(lo_clipped_end, hi_clipped_start, last + 1))
    if r1 > r0:
        out.append((r0, r1, 0, r1 + hi, CAUSAL))
    # both clipped: all keys
    r0, r1 = rows(max(first, hi_clipped_start), min(lo_clipped_end, last + 1))
    if r1 > r0 and len_k > 0:
        out.append((r0, r1, 0, len_k, FULL))
    # neither clipped: keys [i + lo, i + hi]
    r0, r1 = rows(max(first, lo_clipped_end), min(hi_clipped_start, last + 1))
    if r1 > r0:
        out.append((r0, r1, r0 + lo, r1 + hi, BI_CAUSAL))
    # upper clipped, lower not: keys [i + lo, Lk)
    r0, r1 = rows(max(first, lo_clipped_end, hi_clipped_start), last + 1)
    if r1 > r0:
        out.append((r0, r1, r0 + lo, len_k, INV_CAUSAL))
    out.sort()
    return [(a + q_offset, b + q_offset, c + k_offset, d + k_offset, t) for a, b, c, d, t in out]


def varlen_slices(
    cu_seqlens_q: Sequence[int], cu_seqlens_k: Sequence[int], causal: bool, window_size: tuple[int, int]
) -> list[Slice]:
    """Slices of a packed (varlen) batch: one window decomposition per sequence."""
    out: list[Slice] = []
    for i in range(len(cu_seqlens_q) - 1):
        qs, qe, ks, ke = cu_seqlens_q[i], cu_seqlens_q[i + 1], cu_seqlens_k[i], cu_seqlens_k[i + 1]
        out.extend(window_slices(qe - qs, ke - ks, causal, window_size, qs, ks))
    return out


def slices_to_dense(slices: Sequence[Slice], total_q: int, total_k: int, device=None) -> torch.Tensor:
    """Dense boolean mask ``[total_q, total_k]`` of a slice list (slices assumed cell-disjoint)."""
    mask = torch.zeros(total_q, total_k, dtype=torch.bool, device=device)
    for qs, qe, ks, ke, t in slices:
        lq, lk = qe - qs, ke - ks
        if lq <= 0 or lk <= 0:
            continue
        i = torch.arange(lq, device=device)[:, None]
        j = torch.arange(lk, device=device)[None, :]
        cell = torch.ones(lq, lk, dtype=torch.bool, device=device)
        if t in (CAUSAL, BI_CAUSAL):
            cell &= j <= i + lk - lq
        if t in (INV_CAUSAL, BI_CAUSAL):
            cell &= j >= i
        mask[qs:qe, ks:ke] |= cell
    return mask


def slices_to_tensors(slices: Sequence[Slice], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FFA arguments ``(q_ranges int32 [N,2], k_ranges int32 [N,2], attn_type_map int32 [N])``."""
    if not slices:
        slices = [(0, 0, 0, 0, FULL)]
    t = torch.tensor(slices, dtype=torch.int32).reshape(-1, 5)
    return t[:, 0:2].contiguous().to(device), t[:, 2:4].contiguous().to(device), t[:, 4].contiguous().to(device)
