"""Solving a key's dispatch: one magi_solver algorithm, or the cheapest of several (CostAwareDispatchAlg).

Why a module: the cost-aware choice plans every rank's stages for each candidate dispatch and
weighs their work, which is neither the solver's job (it has no notion of how fast a remote
fragment runs) nor the runtime manager's (it runs one plan).
"""

from __future__ import annotations

from typing import Any

from magi_attention import _compat
from magi_attention.config import CostAwareDispatchAlg, DispatchAlg

__all__ = ["planned_work", "solve_dispatch"]


def planned_work(plan: Any, cp_size: int, remote_cost: float) -> list[float]:
    """Per rank: host-stage area + ``remote_cost`` x remote-stage area of a plan built for every rank."""
    work = []
    for r in range(cp_size):
        rp = plan.rank_plan(r)
        remote = sum(int(s.calc.area) for s in rp.stages)
        work.append(int(rp.host_calc.area) + remote_cost * remote)
    return work


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
        return solve(alg.candidates[0])

    def busiest(meta) -> float:
        plan = solver.make_dist_attn_plan(q_ranges, k_ranges, types, meta, overlap_params)
        return max(planned_work(plan, cp_size, alg.remote_cost))

    chunks = [chunk_size * f for f in dict.fromkeys(alg.chunk_factors)
              if total_seqlen % (chunk_size * f * cp_size) == 0] or [chunk_size]
    metas = (solve(name, chunk) for chunk in chunks for name in alg.candidates)
    return min(metas, key=busiest)  # min keeps the first on ties
