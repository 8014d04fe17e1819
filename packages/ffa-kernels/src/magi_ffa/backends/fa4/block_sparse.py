"""Slices -> what FA4's block-sparse attention consumes: row intervals plus block lists.

FA4 (like FlexAttention) skips empty (q block, k block) tiles, runs *full* tiles without a mask,
and calls a mask function only on *partial* tiles. A union of FFA slices is, row by row, a union of
key intervals (a causal or inverse-causal edge moves one interval end by one key per row), so:

* ``lo``/``hi`` int32 ``[K, Sq]`` hold each query row's merged key intervals ``[lo, hi)`` (rows with
  fewer than K intervals are padded with empty ``[0, 0)``); the mask function is
  ``any_j lo[j, q] <= k < hi[j, q]``, evaluated only on partial tiles.
* the forward lists, per q block, its partial and full k blocks; the backward the transpose (per k
  block, its q blocks). Layout is FlexAttention's BlockMask: counts ``[1, 1, rows]`` and indices
  ``[1, 1, rows, width]`` packed left in ascending order (width = the largest count).

Everything is computed on the host (numpy) and uploaded once without a host sync
(``magi_ffa.transfer``), so it is tested on CPU against the dense mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from magi_ffa.backends.fa4.decompose import decompose as decompose_mask
from magi_ffa.backends.fa4.native import NativeMask, recognise_native
from magi_ffa.transfer import to_device

__all__ = ["BlockLists", "SliceBlockMask", "build_slice_block_mask", "row_intervals"]


def row_intervals(q_ranges, k_ranges, attn_type_map, seqlen_q: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's merged visible key intervals: int32 ``lo``, ``hi`` of shape [K, Sq].

    Touching or overlapping intervals of one row are merged, so K is the true maximum number of
    disjoint key runs per row (1 for causal, varlen and sliding-window masks). K >= 1.
    """
    qr = np.asarray(q_ranges, dtype=np.int64).reshape(-1, 2)
    kr = np.asarray(k_ranges, dtype=np.int64).reshape(-1, 2)
    types = np.asarray(attn_type_map, dtype=np.int64).reshape(-1)
    rows, los, his = [], [], []
    for (qs, qe), (ks, ke), t in zip(qr, kr, types):
        if qe <= qs or ke <= ks:
            continue
        r = np.arange(qs, qe, dtype=np.int64)
        lo = np.full_like(r, ks)
        hi = np.full_like(r, ke)
        if t in (1, 3):  # causal: bottom-right aligned diagonal
            hi = np.minimum(hi, ke - qe + r + 1)
        if t in (2, 3):  # inverse causal: top-left aligned diagonal
            lo = np.maximum(lo, ks + r - qs)
        keep = lo < hi
        rows.append(r[keep])
        los.append(lo[keep])
        his.append(hi[keep])
    if not rows or sum(len(r) for r in rows) == 0:
        z = np.zeros((1, seqlen_q), dtype=np.int32)
        return z, z.copy()
    row, lo, hi = (np.concatenate(x) for x in (rows, los, his))
    order = np.lexsort((lo, row))
    row, lo, hi = row[order], lo[order], hi[order]
    # merge per row: offset by row * span so one running maximum never crosses rows
    span = int(max(hi.max(), 1)) + 1
    hi_off = hi + row * span
    run_max = np.maximum.accumulate(hi_off)
    prev_max = np.concatenate([[-1], run_max[:-1]])
    starts = (lo + row * span) > prev_max  # a new run: the row changed or a gap opened
    run_id = np.cumsum(starts) - 1
    run_row = row[starts]
    run_lo = lo[starts]
    run_hi = np.zeros(len(run_row), dtype=np.int64)
    np.maximum.at(run_hi, run_id, hi)
    # slot of each run within its row
    first_of_row = np.concatenate([[True], run_row[1:] != run_row[:-1]])
    row_start = np.maximum.accumulate(np.where(first_of_row, np.arange(len(run_row)), 0))
    slot = np.arange(len(run_row)) - row_start
    k_max = int(slot.max()) + 1
    out_lo = np.zeros((k_max, seqlen_q), dtype=np.int32)
    out_hi = np.zeros((k_max, seqlen_q), dtype=np.int32)
    out_lo[slot, run_row] = run_lo
    out_hi[slot, run_row] = run_hi
    return out_lo, out_hi


@dataclass(frozen=True)
class BlockLists:
    """FlexAttention-BlockMask-style lists for one direction (rows = the outer loop's blocks)."""

    mask_cnt: torch.Tensor  # int32 [1, 1, rows]: partial blocks per row
    mask_idx: torch.Tensor  # int32 [1, 1, rows, cols]
    full_cnt: torch.Tensor  # int32 [1, 1, rows]: full blocks per row
    full_idx: torch.Tensor  # int32 [1, 1, rows, cols]


@dataclass(frozen=True)
class SliceBlockMask:
    """Everything FA4 needs for one mask at one block size (built once per mask, then cached)."""

    seqlen_q: int
    seqlen_k: int
    block_size: tuple[int, int]  # (q block, k block)
    lo: torch.Tensor  # int32 [K, Sq]
    hi: torch.Tensor  # int32 [K, Sq]
    partial: torch.Tensor  # bool [Mb, Nb]: tile visible but not entirely
    full: torch.Tensor  # bool [Mb, Nb]: every cell of the tile visible
    fwd: BlockLists  # per q block
    bwd: BlockLists  # per k block
    empty_rows: torch.Tensor | None = None  # bool [Sq]: rows that see no key (None: there are none)
    seeing_rows: torch.Tensor | None = None  # int32 [n]: the other rows, when there are empty ones
    native: NativeMask | None = None  # set when FA4's own masking expresses the mask (native.py)
    has_partial: bool = True  # False: every visible tile is whole (block-aligned masks)
    parts: tuple | None = None  # decompose.MaskPart per native part, when the mask is their sum

    @property
    def num_intervals(self) -> int:
        return int(self.lo.shape[0])

    def skipped_rows(self, direction: str) -> torch.Tensor | None:
        """bool [Sq]: rows FA4 leaves unwritten in ``direction`` ("fwd": out / lse, "bwd": dq), the
        documents without keys that run with no used rows (native.py); None when FA4 writes every row
        (zeros where a row sees nothing)."""
        return self.empty_rows if self.native is not None and self.native.skips_rows(direction) else None

    @functools.cached_property
    def device_tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor FA4 may be handed for this mask (constant while the mask is cached)."""
        lists = tuple(t for b in (self.fwd, self.bwd) for t in (b.mask_cnt, b.mask_idx, b.full_cnt, b.full_idx))
        native = () if self.native is None else self.native.device_tensors
        return (self.lo, self.hi, *lists, *native)

    def cell_mask(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        """The mask function in torch (what the FA4 mask_mod computes): broadcasting bool."""
        lo, hi = self.lo.to(q_idx.device).long(), self.hi.to(q_idx.device).long()
        vis = torch.zeros(torch.broadcast_shapes(q_idx.shape, k_idx.shape), dtype=torch.bool,
                          device=q_idx.device)
        for j in range(self.num_intervals):
            vis |= (k_idx >= lo[j][q_idx]) & (k_idx < hi[j][q_idx])
        return vis


def _pack(sel: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [rows, cols] -> counts [1,1,rows], indices [1,1,rows,width] (selected first, ascending).

    Compact: width is the largest count (at least 1), as FA4 reads only the first count entries.
    Built on the host and uploaded: FA4 insists on a packed row-major last dimension (it refused
    the backward lists of causal masks, whose compact width is 1, when given a strided slice).
    """
    cnt = sel.sum(-1, dtype=np.int32)
    idx = np.argsort(~sel, axis=-1, kind="stable").astype(np.int32)  # selected (False) first, in order
    width = max(1, int(cnt.max())) if cnt.size else 1
    return to_device(cnt[None, None], device), to_device(idx[None, None, :, :width], device)


def _lists(partial: np.ndarray, full: np.ndarray, device) -> BlockLists:
    mc, mi = _pack(partial, device)
    fc, fi = _pack(full, device)
    return BlockLists(mc, mi, fc, fi)


def _tile_classes(lo: np.ndarray, hi: np.ndarray, seqlen_k: int, bm: int, bn: int) -> tuple[np.ndarray, np.ndarray]:
    """bool [Mb, Nb] partial / full, from per-row intervals via difference arrays per q block
    (host numpy: a new mask's tiles are classified without reading anything back from the GPU)."""
    k_runs, sq = lo.shape
    mb, nb = -(-sq // bm), -(-seqlen_k // bn)
    if mb == 0 or nb == 0:
        empty = np.zeros((mb, nb), dtype=bool)
        return empty, empty.copy()
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    nonempty = hi > lo
    qblk = np.broadcast_to(np.arange(sq, dtype=np.int64) // bm, (k_runs, sq))
    # blocks the interval touches: [lo // bn, ceil(hi / bn)); fully covers: [ceil(lo / bn), end)
    touch_lo, touch_hi = lo // bn, -(-hi // bn)
    full_lo = -(-lo // bn)
    full_hi = np.where(hi >= seqlen_k, nb, hi // bn)  # the last block may be short
    full_hi = np.maximum(full_hi, full_lo)

    def coverage(a, b):  # rows of each q block covering each k block
        m = nonempty & (b > a)
        base = qblk[m] * (nb + 1)
        size = mb * (nb + 1)
        diff = np.bincount(base + a[m], minlength=size) - np.bincount(base + b[m], minlength=size)
        return diff.reshape(mb, nb + 1).cumsum(-1)[:, :nb]

    touched = coverage(touch_lo, touch_hi) > 0
    rows_in_block = np.full(mb, bm, dtype=np.int64)
    rows_in_block[-1] = sq - (mb - 1) * bm
    full = coverage(full_lo, full_hi) == rows_in_block[:, None]
    return touched & ~full, full


def build_slice_block_mask(q_ranges, k_ranges, attn_type_map, seqlen_q: int, seqlen_k: int,
                           block_size: tuple[int, int] = (128, 128), device=None,
                           decompose: bool = True) -> SliceBlockMask:
    """Translate slices into FA4's block-sparse form (see the module docstring). A mask that needs
    the mask function is also split into native parts where it is their sum (``decompose``)."""
    bm, bn = block_size
    if bm <= 0 or bn <= 0:
        raise ValueError(f"build_slice_block_mask(): block_size must be positive, got {block_size}.")
    lo_np, hi_np = row_intervals(q_ranges, k_ranges, attn_type_map, seqlen_q)
    partial, full = _tile_classes(lo_np, hi_np, seqlen_k, bm, bn)
    empty = (hi_np <= lo_np).all(0)
    native = recognise_native(lo_np, hi_np, seqlen_q, seqlen_k, device)
    has_partial = bool(partial.any())
    parts = None
    if decompose and native is None and has_partial:
        visible = np.maximum(hi_np.astype(np.int64) - lo_np, 0).sum(0)
        parts = decompose_mask(q_ranges, k_ranges, attn_type_map, visible, functools.partial(
            build_slice_block_mask, block_size=block_size, device=device, decompose=False))
    return SliceBlockMask(seqlen_q, seqlen_k, (bm, bn), to_device(lo_np, device), to_device(hi_np, device),
                          to_device(partial, device), to_device(full, device),
                          fwd=_lists(partial, full, device), bwd=_lists(partial.T, full.T, device),
                          empty_rows=to_device(empty, device) if empty.any() else None,
                          seeing_rows=(to_device(np.flatnonzero(~empty).astype(np.int32), device)
                                       if empty.any() else None),
                          native=native, has_partial=has_partial, parts=parts)
