"""The backward's host stage as two calls on two blocks of rows, one before and one after the remote stages.

Why: the backward runs the host stage first and the remote stages after it, so the last remote stage's
dK/dV reduce runs after the last kernel: chunk copy, the peers' barrier, and the fold that pulls the
peers' rows over NVLink. The compute stream waits on it. On 2 x H200 (64k varlen causal, fa4, native
collectives, ``profile_dist --trace`` at e4e7ae2) that was 0.37-0.55 ms of a ~4 ms layer.

Take a block of rows [x0, x1) whose edges no host slice crosses, in q or in k (the local pieces of
varlen documents allow many), and that holds no K/V row sent to a peer: no reduce folds into it. The
host stage then runs as two calls: the slices outside the block first, on all rows (the block's rows
written as zeros), and the block's slices after the remote stages, on the block's rows, while the
last reduce folds into the other rows. The late call writes its dK/dV rows again; its dq rows too,
unless a remote stage has added into some of them, in which case it adds (one pass over the block).

Measured (2 x H200, e4e7ae2 against d487591, BENCHMARKS.md "stop 37"): at 64k the exposed
communication fell from ~1.5 ms to 0.24-0.87 ms per two 4-layer steps, but FA4's backward kernels
took 5-7% longer as two calls (each call's last, partly filled wave), so the step was no faster:
backward 0.95-0.97x at 64k, 0.99-1.04x at 128k. Behind ``dist_attn.SPLIT_HOST_BACKWARD``, off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HostSplit", "RowSlices", "sent_rows", "slice_areas", "split_host_rows"]

#: each call's share of the host stage's area must be at least this: below it, the extra call costs
#: more than the little it hides (the reduce it hides takes ~5-15% of the host stage's time at
#: 64k-128k on 2 x H200; the early call also covers the backward's first K/V cast)
MIN_SHARE = 0.05


def slice_areas(q: np.ndarray, k: np.ndarray, types: np.ndarray) -> np.ndarray:
    """Visible cells of each slice (int64), for the four mask types (0 full, 1 causal, 2 inverse
    causal, 3 bi-causal). Causal and inverse causal have the same count."""
    lq = (q[:, 1] - q[:, 0]).astype(np.int64)
    lk = (k[:, 1] - k[:, 0]).astype(np.int64)
    m = np.clip(lk - lq + 1, 1, None)  # the shortest row that sees anything, for (inverse) causal
    tri = np.where(m <= lk, (lk + m) * (lk - m + 1) // 2, 0)
    bi = np.clip(lk - lq + 1, 0, None) * lq
    return np.select([types == 0, types == 3], [lq * lk, bi], tri)


@dataclass(frozen=True)
class RowSlices:
    """Slices with (q, k, mask type) arrays and their area, as ``CalcArgs`` gives them (``as_arrays``)."""

    q: np.ndarray
    k: np.ndarray
    types: np.ndarray
    area: int

    def as_arrays(self):
        return self.q, self.k, self.types


@dataclass(frozen=True)
class HostSplit:
    """The host stage's two calls. ``early`` is the slices outside the block, on all rows: it writes
    every row, zeros in the block. ``late`` is the block's slices on rows ``late_rows`` (q and k
    alike), with ranges relative to the block's first row: it writes the block's rows again."""

    early: RowSlices
    late: RowSlices
    late_rows: tuple[int, int]


def sent_rows(input_split_sizes, dst_indices) -> np.ndarray:
    """Row ranges [P, 2] of the local K/V that a cast sends to some peer: the rows the dK/dV reduce
    (its transpose) folds into."""
    sizes = np.asarray(list(input_split_sizes), dtype=np.int64)
    ends = np.cumsum(sizes)
    sent = np.fromiter((len(d) > 0 for d in dst_indices), dtype=bool, count=len(sizes))
    return np.stack([ends - sizes, ends], axis=1)[sent & (sizes > 0)]


def split_host_rows(q: np.ndarray, k: np.ndarray, types: np.ndarray, rows: int,
                    busy: list[np.ndarray]) -> HostSplit | None:
    """The block of rows [x0, x1) of the host slices (q, k local rows, both of ``rows`` rows) for the
    late call: no slice crosses its edges, no range in ``busy`` (the K/V rows sent to peers) meets it, and the smaller of its area and the rest's is the largest. None when no block
    gives each call ``MIN_SHARE`` of the area."""
    area = slice_areas(q, k, types)
    keep = area > 0
    q, k, types, area = q[keep], k[keep], types[keep], area[keep]
    total = int(area.sum())
    if total == 0 or rows <= 1:
        return None
    lo = np.minimum(q[:, 0], k[:, 0]).astype(np.int64)
    hi = np.maximum(q[:, 1], k[:, 1]).astype(np.int64)
    cuts = np.unique(np.concatenate([lo, hi, [0, rows]]))
    # a cut x is valid when no slice spans it (none with lo < x < hi); 0 and ``rows`` always are
    order = np.argsort(lo, kind="stable")
    reach = np.maximum.accumulate(hi[order])
    n_before = np.searchsorted(lo[order], cuts, side="left")
    cuts = cuts[(n_before == 0) | (reach[np.maximum(n_before - 1, 0)] <= cuts)]
    # area below each valid cut: the slices ending at or before it (the others start at or after it)
    below = np.concatenate([[0], np.cumsum(area[np.argsort(hi, kind="stable")])])[
        np.searchsorted(np.sort(hi), cuts, side="right")]
    best = None  # (smaller area, x0, x1)
    for g0, g1 in _free_gaps(busy, rows):
        inside = (cuts >= g0) & (cuts <= g1)
        c, b = cuts[inside], below[inside]
        if c.size < 2:
            continue
        # for each x0, the x1 whose block is nearest half the area (the block grows with x1)
        j = np.searchsorted(b, b + total / 2)
        for jj in (np.clip(j, 1, c.size - 1), np.clip(j - 1, 1, c.size - 1)):
            late = b[jj] - b
            smaller = np.where(jj > np.arange(c.size), np.minimum(late, total - late), -1)
            i = int(np.argmax(smaller))
            if best is None or smaller[i] > best[0]:
                best = (int(smaller[i]), int(c[i]), int(c[jj[i]]))
    if best is None or best[0] < MIN_SHARE * total:
        return None
    _, x0, x1 = best
    in_block = (lo >= x0) & (hi <= x1)
    early = RowSlices(q=np.ascontiguousarray(q[~in_block], dtype=np.int32),
                      k=np.ascontiguousarray(k[~in_block], dtype=np.int32),
                      types=np.ascontiguousarray(types[~in_block], dtype=np.int32), area=int(area[~in_block].sum()))
    late = RowSlices(q=np.ascontiguousarray(q[in_block] - x0, dtype=np.int32),
                     k=np.ascontiguousarray(k[in_block] - x0, dtype=np.int32),
                     types=np.ascontiguousarray(types[in_block], dtype=np.int32), area=int(area[in_block].sum()))
    return HostSplit(early=early, late=late, late_rows=(x0, x1))


def _free_gaps(busy: list[np.ndarray], rows: int) -> list[tuple[int, int]]:
    """The maximal row ranges in [0, rows) that no range of ``busy`` meets."""
    parts = [b.reshape(-1, 2).astype(np.int64) for b in busy if b.size]
    r = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
    r = r[r[:, 1] > r[:, 0]]
    r = r[np.argsort(r[:, 0], kind="stable")]
    gaps, at = [], 0
    for a, b in r.tolist():
        if a > at:
            gaps.append((at, a))
        at = max(at, b)
    if at < rows:
        gaps.append((at, rows))
    return gaps
