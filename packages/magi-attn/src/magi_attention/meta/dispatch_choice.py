"""Solving a key's dispatch: one magi_solver algorithm, or the cheapest of several (CostAwareDispatchAlg).

Why a module: the cost-aware choice plans every rank's stages for each candidate dispatch and
weighs their work, which is neither the solver's job (it has no notion of how fast a remote
fragment runs) nor the runtime manager's (it runs one plan).
"""

from __future__ import annotations

from typing import Any

from magi_attention import _compat
from magi_attention.config import CostAwareDispatchAlg, DispatchAlg

__all__ = ["planned_work", "rotated_sequential", "solve_dispatch"]

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
    chunk factor) whose busiest rank has the least planned work (the first on ties: factors in the
    order given, which the default ascends so the finest chunking of equal cost wins, and
    candidates in order within each)."""
    solver = _compat.solver

    def solve(name: str, chunk: int = chunk_size, **kwargs):
        return solver.make_dispatch_meta(q_ranges, k_ranges, types, total_seqlen, chunk, cp_size,
                                         name, **kwargs)

    if not isinstance(alg, CostAwareDispatchAlg):
        return solve(alg.solver_name, **alg.solver_kwargs())
    if cp_size == 1:  # one rank holds everything whichever candidate solves it
        return solve("sequential")

    def busiest(meta) -> float:
        plan = solver.make_dist_attn_plan(q_ranges, k_ranges, types, meta, overlap_params)
        return max(planned_work(plan, cp_size, alg.remote_cost))

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

    metas = (meta for chunk in chunks for name in alg.candidates for meta in candidates(name, chunk))
    return min(metas, key=busiest)  # min keeps the first on ties
