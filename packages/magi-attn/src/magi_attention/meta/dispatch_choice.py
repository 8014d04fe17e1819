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
from magi_attention.errors import MagiAttentionError

__all__ = ["planned_time", "planned_work", "rotated_sequential", "slice_tiles", "solve_dispatch"]

#: the turns (in chunks) the "rotated_sequential" candidate tries, log-spaced: a few plans cover
#: small and large ones
ROTATION_SHIFTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)


def planned_work(plan: Any, cp_size: int, remote_cost: float) -> list[float]:
    """Per rank: host-stage area + ``remote_cost`` x remote-stage area of a plan built for every rank."""
    return _PlanCalls(plan, cp_size).work(remote_cost)


class _PlanCalls:
    """What the two cost models read of a plan built for every rank, flat, so the plan itself can be
    dropped (at cp 64 plans are large): ``area`` int64 [cp, 1 + stages] (call j of rank r, 0 the
    host stage), ``recv`` int64 [cp] (the K/V tokens a rank's stages receive) and, with
    ``with_calls`` (the tile model; the area model needs only the areas), the slices of every
    non-empty call: ``q``, ``k`` [N, 2], ``types`` [N] and ``call`` [N], the flat index r * (1 +
    stages) + j of the call a slice belongs to.

    Read in one call from the solver (interface 1.1, ``DistAttnPlan.flat_calls``); walking a plan
    from Python instead cost as much as planning it. Older solvers are walked here.
    """

    def __init__(self, plan: Any, cp_size: int, with_calls: bool = True):
        if _compat.offers(_compat.solver, ">=1.1"):
            self.area, self.recv, self.q, self.k, self.types, self.call = plan.flat_calls(with_calls)
        else:
            self._walk(plan, cp_size, with_calls)
        self.num_slices = len(self.types)

    def _walk(self, plan: Any, cp_size: int, with_calls: bool) -> None:
        """``flat_calls`` read through the plan's Python objects (solver interface 1.0)."""
        area, recv, arrays, calls = [], [], [], []
        for r in range(cp_size):
            rp = plan.rank_plan(r)
            stages = list(rp.stages)
            cs = [rp.host_calc, *(st.calc for st in stages)]
            area.append([int(c.area) for c in cs])
            recv.append(sum(int(st.num_recv_tokens) for st in stages))
            for j, c in enumerate(cs):
                if with_calls and int(c.area):  # an empty call costs nothing
                    arrays.append(c.as_arrays())
                    calls.append(np.full(len(c), r * len(cs) + j, dtype=np.int32))
        self.area, self.recv = np.array(area, dtype=np.int64), np.array(recv, dtype=np.int64)
        self.q, self.k = (np.concatenate([a[i] for a in arrays]) if arrays else np.zeros((0, 2), np.int32)
                          for i in (0, 1))
        self.types = np.concatenate([a[2] for a in arrays]) if arrays else np.zeros(0, np.int32)
        self.call = np.concatenate(calls) if calls else np.zeros(0, np.int32)

    def work(self, remote_cost: float) -> list[float]:
        """planned_work of the plan."""
        return _works([self.area], remote_cost)[0].tolist()


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


def _ceil_div(a, b):
    return -(-a // b)


def _slices_tiles(q_ranges, k_ranges, types, tile: int):
    """(kept, tiles, q tiles): which slices have any cell, and per kept slice the tiles a kernel
    visits and its q tiles (see ``slice_tiles``), in closed form per slice.

    Why closed form: counting q tile by q tile expands a slice into ceil(lq / tile) entries, and a
    key's cost-aware choice counts the calls of ~40-60 candidate plans; long slices made that
    expansion the choice's largest cost. Per q tile i (rows [i*b, min(lq, (i+1)*b))), the visible
    columns are one interval [lo_i, hi_i), so n_i = ceil(hi_i / b) - floor(lo_i / b), and per type
    the sum over i is an arithmetic series (d = lk - lq, K = ceil(lk / b), nq = ceil(lq / b)):

    * full: nq * K;
    * causal (bottom-right): hi_i = d + (i+1)*b but the last tile's lk, so n_i = max(0, i+1 +
      ceil(d / b)) for i < nq - 1, plus K;
    * inverse causal (top-left): lo_i = i*b while below lk, so n_i = K - i for i < min(nq, K);
    * bi-causal: nothing when lk < lq, else n_i = 1 + ceil(d / b) for i < nq - 1, plus K - (nq - 1).
    """
    q = np.asarray(q_ranges, dtype=np.int64).reshape(-1, 2)
    k = np.asarray(k_ranges, dtype=np.int64).reshape(-1, 2)
    t = np.asarray(types, dtype=np.int64).reshape(-1)
    lq, lk = q[:, 1] - q[:, 0], k[:, 1] - k[:, 0]
    kept = (lq > 0) & (lk > 0)
    lq, lk, t = lq[kept], lk[kept], t[kept]
    b = tile
    nq, big_k, cd = _ceil_div(lq, b), _ceil_div(lk, b), _ceil_div(lk - lq, b)
    # causal: sum_{j=1}^{m} max(0, j + cd) with m = nq - 1, then the last tile's K
    m = nq - 1
    j0 = np.maximum(1, 1 - cd)
    cnt = np.maximum(0, m - j0 + 1)
    causal = cnt * (j0 + m) // 2 + cd * cnt + big_k  # sum of j over j0..m, exact (or 0 when cnt is 0)
    mm = np.minimum(nq, big_k)
    inverse = mm * big_k - mm * (mm - 1) // 2
    bicausal = np.where(lk < lq, 0, m * (1 + cd) + big_k - m)
    n = np.select([t == 0, t == 1, t == 2], [nq * big_k, causal, inverse], bicausal)
    return kept, n, nq


def slice_tiles(q_ranges, k_ranges, types, tile: int = TILE) -> tuple[int, int]:
    """(tiles, q tiles) a kernel visits for these slices: each slice tiled from its own start (FA4's
    varlen documents), a tile counted when any of its cells is visible under the slice's mask type
    (0 full, 1 causal and 3 bi-causal bottom-right aligned, 2 inverse causal and 3 top-left).

    Per q tile the visible columns are one interval (its first row's start to its last row's end),
    so each slice's count is closed-form (``_slices_tiles``), vectorised over all slices at once.
    """
    _, n, nq = _slices_tiles(q_ranges, k_ranges, types, tile)
    return int(n.sum()), int(nq.sum())


def _tiles_by_call(q, k, t, call, n_calls: int, tile: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """(tiles, q tiles) int64 [n_calls] of slices (q, k [N, 2], types [N]) belonging to call ``call``
    [N]: ``slice_tiles`` per call, in one vectorised pass. Why: weighing calls one by one cost the
    cost-aware dispatch most of its time (numpy's per-call overhead)."""
    q, k = (np.asarray(x).reshape(-1, 2).astype(np.int64) for x in (q, k))
    kept, n, nq = _slices_tiles(q, k, np.asarray(t).reshape(-1).astype(np.int64), tile)
    of = np.asarray(call, dtype=np.int64)[kept]
    return (np.bincount(of, weights=n, minlength=n_calls).astype(np.int64),
            np.bincount(of, weights=nq, minlength=n_calls).astype(np.int64))


def planned_time(plan: Any, cp_size: int) -> list[float]:
    """Per rank, in tiles (the tile model): every kernel call's tiles, q tiles and launch, plus the
    K/V tokens its stages receive (see the constants above)."""
    return _times([_PlanCalls(plan, cp_size)])[0]


def _times(plans: list[_PlanCalls]) -> list[list[float]]:
    """planned_time of several plans, their calls counted in one ``_slices_tiles`` pass and their
    costs summed in one numpy pass over all of them (each plan's calls padded with empty ones to the
    most stages): numpy's per-call overhead paid once for all of a key's candidates instead of once
    per candidate. The sums run in the scalar version's order (a rank's host call, plus its stages
    added one by one, plus its received tokens), so the values are the same bit for bit."""
    sizes = [pc.area.size for pc in plans]
    offsets = np.cumsum([0, *sizes[:-1]])
    q, k = (np.concatenate([getattr(pc, f).reshape(-1, 2) for pc in plans]) for f in ("q", "k"))
    call = np.concatenate([pc.call.astype(np.int64) + off for pc, off in zip(plans, offsets)])
    tiles, q_tiles = _tiles_by_call(q, k, np.concatenate([pc.types for pc in plans]), call, int(sum(sizes)))
    cost = tiles.astype(np.float64) + ROW_TILE_COST * q_tiles.astype(np.float64) + CALL_COST
    busy = np.concatenate([(pc.area != 0).ravel() for pc in plans])  # an empty call costs nothing
    cost = np.where(busy, cost, 0.0)
    per_rank = _padded([cost[off:off + size].reshape(pc.area.shape)
                        for pc, off, size in zip(plans, offsets.tolist(), sizes)])  # [plans, cp, 1 + stages]
    stages = np.zeros(per_rank.shape[:2])
    for j in range(1, per_rank.shape[2]):
        stages = stages + per_rank[:, :, j]
    recv = np.stack([pc.recv for pc in plans]).astype(np.float64)
    return (per_rank[:, :, 0] + stages + RECV_TOKEN_COST * recv).tolist()


def _padded(arrays: list[np.ndarray]) -> np.ndarray:
    """[len(arrays), cp, most columns]: 2-D arrays of one row count, zero-padded on the right."""
    width = max(a.shape[1] for a in arrays)
    out = np.zeros((len(arrays), arrays[0].shape[0], width), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, :, :a.shape[1]] = a
    return out


def _works(areas: list[np.ndarray], remote_cost: float) -> np.ndarray:
    """[plans, cp] planned_work of plans given by their area arrays [cp, 1 + stages], in one numpy
    pass: per rank, host area + remote_cost x its stages' area (an exact integer sum)."""
    a = _padded(areas)
    return a[:, :, 0].astype(np.float64) + remote_cost * a[:, :, 1:].sum(2).astype(np.float64)


#: slices of the candidates' calls held for one tile count at most (a few MB of index arrays)
TILE_BATCH_SLICES = 1 << 17


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

    def held(r: int) -> list[int]:  # chunks [a, a + m) modulo n, ascending: one or two runs
        a = (shift + r * m) % n
        return [*range(a + m - n), *range(a, n)] if a + m > n else list(range(a, a + m))

    return _meta_of_state(meta, (*state[:6], [held(r) for r in range(cp)]))


def _meta_of_state(meta: Any, state: tuple) -> Any:
    """A new dispatch meta of ``meta``'s class from magi_solver's pickle state ``(total_seqlen,
    chunk_size, num_chunks, cp_size, max_valid_ids, chunk_areas, partitions)``: the solver checks it."""
    made = type(meta).__new__(type(meta))
    made.__setstate__(state)
    return made


def refined_dispatch_meta(meta: Any, chunk_size: int) -> Any:
    """``meta`` with each chunk cut into chunks of ``chunk_size`` tokens, owned as before: the same
    dispatch (every token on the same rank, at the same local position) on a finer grid. Why: the
    dynamic solver (QO comm) moves grid cells between ranks, and a coarse dispatch chunk (the cost-aware
    choice's chunk factors) would leave it only whole documents to move. ``meta`` itself when its chunks
    are not coarser."""
    total, cs, n, cp, max_valid, areas, parts = meta.__getstate__()  # magi_solver's pickle state
    if chunk_size <= 0 or cs % chunk_size:
        raise MagiAttentionError(f"refined_dispatch_meta(): chunk_size={chunk_size} must divide the "
                                 f"dispatch's chunk size {cs}")
    f = cs // chunk_size
    if f == 1:
        return meta
    # chunk_areas split evenly: only a solver statistic, the grid is built from the mask itself
    fine_areas = [a // f + (1 if t < a % f else 0) for a in areas for t in range(f)]
    return _meta_of_state(meta, (total, chunk_size, n * f, cp, max_valid, fine_areas,
                                 [[c * f + t for c in p for t in range(f)] for p in parts]))


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

    weigh_tiles = alg.cost_model == "tiles"
    metas, areas, tiles = [], [], []
    pending: list[_PlanCalls] = []  # candidates awaiting their tile count, counted together (_times)
    pending_slices = 0
    for meta in (m for chunk in chunks for name in alg.candidates for m in candidates(name, chunk)):
        pc = _PlanCalls(plan_of(meta), cp_size, with_calls=weigh_tiles)  # each plan read once and dropped
        metas.append(meta)
        areas.append(pc.area)
        if weigh_tiles:
            pending.append(pc)
            pending_slices += pc.num_slices
            if pending_slices >= TILE_BATCH_SLICES:  # memory stays bounded at large cp
                tiles.extend(max(t) for t in _times(pending))
                pending.clear()
                pending_slices = 0
    if pending:
        tiles.extend(max(t) for t in _times(pending))
    area = _works(areas, alg.remote_cost).max(1).tolist()
    by_area = area.index(min(area))  # the first on ties
    if alg.cost_model == "area":
        return metas[by_area]
    by_tiles = tiles.index(min(tiles))
    return metas[by_tiles] if tiles[by_tiles] < tiles[by_area] * (1.0 - TILE_MARGIN) else metas[by_area]
