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
from magi_ffa.backends.fa4.decompose import row_layers
from magi_ffa.backends.fa4.native import NativeMask, recognise_native
from magi_ffa.transfer import to_device

__all__ = ["BlockLists", "SliceBlockMask", "build_slice_block_mask", "row_intervals"]


#: up to this many slices on disjoint rows, ``row_intervals`` fills each slice's rows with a few slice
#: writes instead of expanding every row at once: a varlen mask's documents (a 64k-row mask of 40
#: documents: 3.4 -> 0.3 ms on the development machine); one slice per row stays vectorised
FILL_SLICES_MAX = 512


def _fill_disjoint(qr, kr, types, seqlen_q: int) -> tuple[np.ndarray, np.ndarray]:
    """``row_intervals`` of live slices on pairwise disjoint rows, slice by slice: each row belongs
    to one slice at most, so nothing merges. A causal slice (bottom-right) shows a row
    ``[ks, ke - qe + r + 1)``, seen from its first row with a key on; an inverse causal one (top-left)
    ``[ks + r - qs, ke)``, up to its last such row; bi-causal both, every row or none."""
    lo = np.zeros((1, seqlen_q), dtype=np.int32)
    hi = np.zeros((1, seqlen_q), dtype=np.int32)
    rows = np.arange(seqlen_q, dtype=np.int64)
    for (qs, qe), (ks, ke), t in zip(qr.tolist(), kr.tolist(), types.tolist()):
        lq, lk = qe - qs, ke - ks
        a, b = qs, qe  # the rows that see a key
        if t == 1:
            a = max(qs, qe - lk)
        elif t == 2:
            b = min(qe, qs + lk)
        elif t == 3 and lk < lq:
            continue
        if a >= b:
            continue
        lo[0, a:b] = rows[a:b] + (ks - qs) if t in (2, 3) else ks
        hi[0, a:b] = rows[a:b] + (ke - qe + 1) if t in (1, 3) else ke
    return lo, hi


def row_intervals(q_ranges, k_ranges, attn_type_map, seqlen_q: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's merged visible key intervals: int32 ``lo``, ``hi`` of shape [K, Sq].

    Touching or overlapping intervals of one row are merged, so K is the true maximum number of
    disjoint key runs per row (1 for causal, varlen and sliding-window masks). K >= 1.
    """
    qr = np.asarray(q_ranges, dtype=np.int64).reshape(-1, 2)
    kr = np.asarray(k_ranges, dtype=np.int64).reshape(-1, 2)
    types = np.asarray(attn_type_map, dtype=np.int64).reshape(-1)
    live = (qr[:, 1] > qr[:, 0]) & (kr[:, 1] > kr[:, 0])
    qr, kr, types = qr[live], kr[live], types[live]
    if 0 < len(qr) <= FILL_SLICES_MAX:
        order = np.argsort(qr[:, 0], kind="stable")
        if (qr[order[1:], 0] >= qr[order[:-1], 1]).all():  # slices on disjoint rows: fill them in
            return _fill_disjoint(qr, kr, types, seqlen_q)
    # every row of every slice at once: the slice's columns, cut by its diagonals
    n = qr[:, 1] - qr[:, 0]
    of = np.repeat(np.arange(len(n)), n)  # the slice of each row
    row = np.arange(of.size, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n) + qr[of, 0]
    qs, qe, ks, ke, t = qr[of, 0], qr[of, 1], kr[of, 0], kr[of, 1], types[of]
    lo = np.where((t == 2) | (t == 3), np.maximum(ks, ks + row - qs), ks)  # inverse causal: top-left
    hi = np.where((t == 1) | (t == 3), np.minimum(ke, ke - qe + row + 1), ke)  # causal: bottom-right
    keep = lo < hi
    row, lo, hi = row[keep], lo[keep], hi[keep]
    if row.size == 0:
        z = np.zeros((1, seqlen_q), dtype=np.int32)
        return z, z.copy()
    if np.bincount(row, minlength=seqlen_q).max() == 1:  # slices on disjoint rows: nothing to merge
        out_lo = np.zeros((1, seqlen_q), dtype=np.int32)
        out_hi = np.zeros((1, seqlen_q), dtype=np.int32)
        out_lo[0, row], out_hi[0, row] = lo, hi
        return out_lo, out_hi
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


@dataclass(frozen=True, eq=False)  # compared and hashed by identity (its caches key on it)
class SliceBlockMask:
    """Everything FA4 needs for one mask at one block size (built once per mask, then cached).

    The row intervals are kept on the host; their device copies and the block lists are built on
    first use. A mask FA4 expresses itself (``native``: the varlen documents of a training batch)
    never uses them, and at 32k rows they were half of the translation's host time, which a new
    mask every step pays (varlen training packs its documents anew).
    """

    seqlen_q: int
    seqlen_k: int
    block_size: tuple[int, int]  # (q block, k block)
    lo_host: np.ndarray  # int32 [K, Sq]: each row's merged key intervals [lo, hi)
    hi_host: np.ndarray  # int32 [K, Sq]
    device: torch.device | None = None  # where the device tensors go (None: the CPU)
    empty_rows: torch.Tensor | None = None  # bool [Sq]: rows that see no key (None: there are none)
    seeing_rows: torch.Tensor | None = None  # int32 [n]: the other rows, when there are empty ones
    native: NativeMask | None = None  # set when FA4's own masking expresses the mask (native.py)
    parts: tuple | None = None  # decompose.MaskPart per native part, when the mask is their sum
    parts_kind: str | None = None  # how ``parts`` split it: "types" (by slice type) or "rows" (row layers)

    @property
    def num_intervals(self) -> int:
        return int(self.lo_host.shape[0])

    @functools.cached_property
    def _classes(self) -> tuple[np.ndarray, np.ndarray]:
        return _tile_classes(self.lo_host, self.hi_host, self.seqlen_k, *self.block_size)

    @functools.cached_property
    def lo(self) -> torch.Tensor:
        return to_device(self.lo_host, self.device)

    @functools.cached_property
    def hi(self) -> torch.Tensor:
        return to_device(self.hi_host, self.device)

    @functools.cached_property
    def partial(self) -> torch.Tensor:
        """bool [Mb, Nb]: tiles visible but not entirely."""
        return to_device(self._classes[0], self.device)

    @functools.cached_property
    def full(self) -> torch.Tensor:
        """bool [Mb, Nb]: tiles whose every cell is visible."""
        return to_device(self._classes[1], self.device)

    @functools.cached_property
    def has_partial(self) -> bool:
        """False: every visible tile is whole (block-aligned masks: no mask function needed)."""
        return bool(self._classes[0].any())

    @functools.cached_property
    def fwd(self) -> BlockLists:
        """The lists per q block."""
        return _lists(*self._classes, self.device)

    @functools.cached_property
    def bwd(self) -> BlockLists:
        """The lists per k block."""
        partial, full = self._classes
        return _lists(partial.T, full.T, self.device)

    def skipped_rows(self, direction: str) -> torch.Tensor | None:
        """bool [Sq]: rows FA4 leaves unwritten in ``direction`` ("fwd": out / lse, "bwd": dq), the
        documents without keys that run with no used rows (native.py); None when FA4 writes every row
        (zeros where a row sees nothing)."""
        return self.empty_rows if self.native is not None and self.native.skips_rows(direction) else None

    @functools.cached_property
    def device_tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor FA4 may be handed for this mask (constant while the mask is cached): its
        native form's, or the intervals and block lists."""
        if self.native is not None:
            return self.native.device_tensors
        lists = tuple(t for b in (self.fwd, self.bwd) for t in (b.mask_cnt, b.mask_idx, b.full_cnt, b.full_idx))
        return (self.lo, self.hi, *lists)

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
    empty = (hi_np <= lo_np).all(0)
    mask = SliceBlockMask(seqlen_q, seqlen_k, (bm, bn), lo_np, hi_np, device,
                          empty_rows=to_device(empty, device) if empty.any() else None,
                          seeing_rows=(to_device(np.flatnonzero(~empty).astype(np.int32), device)
                                       if empty.any() else None),
                          native=recognise_native(lo_np, hi_np, seqlen_q, seqlen_k, device))
    if decompose and mask.native is None and mask.has_partial:
        visible = np.maximum(hi_np.astype(np.int64) - lo_np, 0).sum(0)
        build = functools.partial(build_slice_block_mask, block_size=block_size, device=device, decompose=False)
        parts, kind = decompose_mask(q_ranges, k_ranges, attn_type_map, visible, build), "types"
        if parts is None:
            parts, kind = row_layers(lo_np, hi_np, build, min_mean_rows=max(1, bm // 2)), "rows"
        # the builder completes its own new mask (keeping the tile classes it computed)
        object.__setattr__(mask, "parts", parts)
        object.__setattr__(mask, "parts_kind", kind if parts is not None else None)
    return mask
