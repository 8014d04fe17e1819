"""Solving a key's dispatch: one magi_solver algorithm, or the cheapest of several (CostAwareDispatchAlg).

Why a module: the cost-aware choice plans every rank's stages for each candidate dispatch and
weighs their work, which is neither the solver's job (it has no notion of how fast a remote
fragment runs) nor the runtime manager's (it runs one plan).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from magi_attention import _compat
from magi_attention.config import CostAwareDispatchAlg, DispatchAlg

__all__ = ["calls_tiles", "planned_time", "planned_work", "rotated_sequential", "slice_tiles", "solve_dispatch"]

#: the turns (in chunks) the "rotated_sequential" candidate tries, log-spaced: a few plans cover
#: small and large ones
ROTATION_SHIFTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)


def planned_work(plan: Any, cp_size: int, remote_cost: float) -> list[float]:
    """Per rank: host-stage area + ``remote_cost`` x remote-stage area of a plan built for every rank."""
    work = []
    for r in range(cp_size):
        rp = plan.rank_plan(r)
        remote = sum(int(s.calc.area) for s in rp.stages)
        work.append(int(rp.host_calc.area) + remote_cost * remote)
    return work


#: The tile model's constants (CostAwareDispatchAlg(cost_model="tiles")), in units of one full tile's
#: time. Fitted on 2 x H200 with the fa4 backend (bf16, d 128, 16 heads): 8 kernel calls of the 64k
#: and 128k varlen causal plans ran forward in 0.176 us per tile + 0.50 us per q tile + 60 us per
#: call (each within 8%), backward in ~0.5 us per tile; a stage's received K/V token costs ~24 ns of
#: exposed dK/dV reduce at the backward's end (the 64k plan: 11k tokens, 0.26 ms), here weighed
#: against a whole step (forward + backward ~3.5 forward tiles per tile).
TILE = 128  # rows and columns of a tile (FA4's forward tile on Hopper; its backward's q tile is 64)
ROW_TILE_COST = 2.8  # per q tile of a call: the epilogue writing out / lse, the backward's pre/post
CALL_COST = 340.0  # per non-empty call: launch, prologue, the stage's merge
RECV_TOKEN_COST = 0.04  # per K/V token a rank receives: the part of its transfer left exposed
#: The tile model overrides the area model's choice only where it finds a plan cheaper than that
#: choice by more than this fraction. Why: the tile model is good to ~8%, and the area choice was the
#: one measured on every benchmark mask; among near-equal plans the tiles' pick was no better (2 x
#: H200: its 1.7%-cheaper turned split of causal 32k ran 4-5% slower than min_heap), while its big
#: gaps were real (varlen causal 128k: 14% by tiles, 1.17 / 1.22x measured).
TILE_MARGIN = 0.05


def _q_tile_counts(q_ranges, k_ranges, types, tile: int):
    """(kept, nq, of, n): which slices have any cell, the q tiles of each kept slice, the kept slice of
    each q tile and each q tile's visible tiles (see ``slice_tiles``)."""
    q = np.asarray(q_ranges, dtype=np.int64).reshape(-1, 2)
    k = np.asarray(k_ranges, dtype=np.int64).reshape(-1, 2)
    t = np.asarray(types, dtype=np.int64).reshape(-1)
    lq, lk = q[:, 1] - q[:, 0], k[:, 1] - k[:, 0]
    kept = (lq > 0) & (lk > 0)
    lq, lk, t = lq[kept], lk[kept], t[kept]
    nq = -(-lq // tile)
    of = np.repeat(np.arange(lq.size), nq)  # the slice of each q tile
    first = np.arange(of.size) - np.repeat(np.cumsum(nq) - nq, nq)  # q tile index inside its slice
    lq, lk, t = lq[of], lk[of], t[of]
    r0 = first * tile
    r1 = np.minimum(lq, r0 + tile)  # the tile's rows [r0, r1)
    lo = np.where((t == 2) | (t == 3), np.minimum(r0, lk), 0)
    hi = np.where((t == 1) | (t == 3), np.minimum(lk, lk - lq + r1), lk)
    hi = np.where((t == 3) & (lk < lq), 0, hi)  # bi-causal with more rows than keys: no row sees any
    n = np.where(hi > lo, -(-hi // tile) - lo // tile, 0)
    return kept, nq, of, n


def slice_tiles(q_ranges, k_ranges, types, tile: int = TILE) -> tuple[int, int]:
    """(tiles, q tiles) a kernel visits for these slices: each slice tiled from its own start (FA4's
    varlen documents), a tile counted when any of its cells is visible under the slice's mask type
    (0 full, 1 causal and 3 bi-causal bottom-right aligned, 2 inverse causal and 3 top-left).

    Per q tile the visible columns are one interval (its first row's start to its last row's end),
    so the count is closed-form: vectorised over all q tiles of all slices at once.
    """
    _, nq, _, n = _q_tile_counts(q_ranges, k_ranges, types, tile)
    return int(n.sum()), int(nq.sum())


def calls_tiles(calls, tile: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """``slice_tiles`` of each of several kernel calls (each a (q_ranges, k_ranges, types) triple),
    counted in one vectorised pass: (tiles per call, q tiles per call). Why: weighing a plan's calls
    one by one cost the cost-aware dispatch most of its time (numpy's per-call overhead)."""
    if not calls:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    arrays = [[np.asarray(x, dtype=np.int64) for x in c] for c in calls]
    q, k = (np.concatenate([a[i].reshape(-1, 2) for a in arrays]) for i in (0, 1))
    t = np.concatenate([a[2].reshape(-1) for a in arrays])
    kept, nq, of, n = _q_tile_counts(q, k, t, tile)
    call_of_slice = np.repeat(np.arange(len(calls)), [a[2].size for a in arrays])[kept]
    tiles = np.bincount(call_of_slice[of], weights=n, minlength=len(calls))
    q_tiles = np.bincount(call_of_slice, weights=nq, minlength=len(calls))
    return tiles.astype(np.int64), q_tiles.astype(np.int64)


def planned_time(plan: Any, cp_size: int) -> list[float]:
    """Per rank, in tiles (the tile model): every kernel call's tiles, q tiles and launch, plus the
    K/V tokens its stages receive (see the constants above)."""
    rank_plans = [plan.rank_plan(r) for r in range(cp_size)]
    per_rank = [[rp.host_calc, *(s.calc for s in rp.stages)] for rp in rank_plans]
    busy = [c for calcs in per_rank for c in calcs if int(c.area)]  # an empty call costs nothing
    tiles, q_tiles = calls_tiles([c.as_arrays() for c in busy])
    of_calc = {id(c): float(t) + ROW_TILE_COST * float(n) + CALL_COST for c, t, n in zip(busy, tiles, q_tiles)}
    cost = []
    for rp, (host, *stages) in zip(rank_plans, per_rank):
        calls = of_calc.get(id(host), 0.0) + sum(of_calc.get(id(c), 0.0) for c in stages)
        cost.append(calls + RECV_TOKEN_COST * sum(int(s.num_recv_tokens) for s in rp.stages))
    return cost


def rotated_sequential(meta: Any, shift: int) -> Any:
    """The sequential dispatch ``meta`` turned by ``shift`` chunks: rank r holds chunks
    ``[shift + r*m, shift + (r+1)*m)`` modulo the chunk count (m chunks per rank), so one rank holds
    the sequence's start and its end. Why: a sliding window's first tokens see fewer keys, so the
    sequential rank that holds them has less work (at cp 2 on 2 x H200 the other rank took 1.23x as
    long per forward); turning the split hands that rank the remote stage of the sequence's end and
    the other one part of the light start."""
    state = meta.__getstate__()  # magi_solver's pickle state: (..., num_chunks, cp_size, ..., partitions)
    n, cp = state[2], state[3]
    m = n // cp
    parts = [sorted((shift + r * m + j) % n for j in range(m)) for r in range(cp)]
    turned = type(meta).__new__(type(meta))
    turned.__setstate__((*state[:6], parts))
    return turned


def solve_dispatch(alg: DispatchAlg, q_ranges, k_ranges, types, total_seqlen: int, chunk_size: int,
                   cp_size: int, overlap_params: Any) -> Any:
    """The dispatch meta of ``alg``; for CostAwareDispatchAlg, that of the candidate (algorithm and
    chunk factor) whose busiest rank has the least planned area work (the first on ties: factors in
    the order given, which the default ascends so the finest chunking of equal cost wins, and
    candidates in order within each), unless its tile model (the default) finds one cheaper by more
    than ``TILE_MARGIN``: then that one."""
    solver = _compat.solver

    def solve(name: str, chunk: int = chunk_size, **kwargs):
        return solver.make_dispatch_meta(q_ranges, k_ranges, types, total_seqlen, chunk, cp_size,
                                         name, **kwargs)

    if not isinstance(alg, CostAwareDispatchAlg):
        return solve(alg.solver_name, **alg.solver_kwargs())
    if cp_size == 1:  # one rank holds everything whichever candidate solves it
        return solve("sequential")

    def plan_of(meta):
        return solver.make_dist_attn_plan(q_ranges, k_ranges, types, meta, overlap_params)

    chunks = [chunk_size * f for f in dict.fromkeys(alg.chunk_factors)
              if total_seqlen % (chunk_size * f * cp_size) == 0] or [chunk_size]

    def candidates(name: str, chunk: int):
        if name != "rotated_sequential":
            yield solve(name, chunk)
            return
        seq = solve("sequential", chunk)
        per_rank = seq.num_chunks // cp_size
        shifts = [s for s in ROTATION_SHIFTS if s < per_rank] or [0]  # one chunk per rank: no turn
        yield from (rotated_sequential(seq, s) for s in shifts)

    metas, area, tiles = [], [], []  # each plan weighed once and dropped: at cp 64 plans are large
    for meta in (m for chunk in chunks for name in alg.candidates for m in candidates(name, chunk)):
        plan = plan_of(meta)
        metas.append(meta)
        area.append(max(planned_work(plan, cp_size, alg.remote_cost)))
        if alg.cost_model == "tiles":
            tiles.append(max(planned_time(plan, cp_size)))
    by_area = area.index(min(area))  # the first on ties
    if alg.cost_model == "area":
        return metas[by_area]
    by_tiles = tiles.index(min(tiles))
    return metas[by_tiles] if tiles[by_tiles] < tiles[by_area] * (1.0 - TILE_MARGIN) else metas[by_area]
