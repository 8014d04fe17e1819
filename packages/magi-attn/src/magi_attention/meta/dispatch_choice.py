"""Solving a key's dispatch: one magi_solver algorithm, or the cheapest of several (CostAwareDispatchAlg).

Why a module: the cost-aware choice plans every rank's stages for each candidate dispatch and
weighs their work, which is neither the solver's job (it has no notion of how fast a remote
fragment runs) nor the runtime manager's (it runs one plan).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magi_attention import _compat
from magi_attention.config import CostAwareDispatchAlg, DispatchAlg

__all__ = ["fa4_call_cost", "planned_work", "solve_dispatch"]

#: (calc, seqlen_q, seqlen_k) -> the call's work in area units; None: every call weighs its area
CallCost = Callable[[Any, int, int], float]


def fa4_call_cost(masked_cost: float) -> CallCost | None:
    """Weights of calls on the fa4 backend: area for a call FA4 runs with its own masking, area x
    ``masked_cost`` for one that needs block lists and the mask function; None when the loaded
    magi_ffa cannot tell (interface < 1.4)."""
    runs_natively = getattr(_compat.ffa, "fa4_runs_natively", None)
    if runs_natively is None:
        return None

    def cost(calc: Any, seqlen_q: int, seqlen_k: int) -> float:
        q, k, t = calc.as_arrays()
        return int(calc.area) * (1.0 if runs_natively(q, k, t, seqlen_q, seqlen_k) else masked_cost)

    return cost


def planned_work(plan: Any, cp_size: int, remote_cost: float, call_cost: CallCost | None = None,
                 shard_seqlen: int = 0) -> list[float]:
    """Per rank: host-stage area + ``remote_cost`` x remote-stage area of a plan built for every
    rank; with ``call_cost``, the sum of its weights of the rank's calls instead (host calls are
    ``shard_seqlen`` x ``shard_seqlen``, a stage's ``shard_seqlen`` x its received tokens)."""
    work = []
    for r in range(cp_size):
        rp = plan.rank_plan(r)
        if call_cost is None:
            remote = sum(int(s.calc.area) for s in rp.stages)
            work.append(int(rp.host_calc.area) + remote_cost * remote)
            continue
        calls = [(rp.host_calc, shard_seqlen)] + [(s.calc, int(s.num_recv_tokens)) for s in rp.stages]
        work.append(sum(call_cost(c, shard_seqlen, sk) for c, sk in calls if int(c.area) > 0))
    return work


def solve_dispatch(alg: DispatchAlg, q_ranges, k_ranges, types, total_seqlen: int, chunk_size: int,
                   cp_size: int, overlap_params: Any, call_cost: CallCost | None = None) -> Any:
    """The dispatch meta of ``alg``; for CostAwareDispatchAlg, that of the candidate (algorithm and
    chunk factor) whose busiest rank has the least planned work (the first on ties: factors in
    order, so the finest chunking of equal cost, and candidates in order within each). ``call_cost`` weighs one kernel call (see planned_work)."""
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
        return max(planned_work(plan, cp_size, alg.remote_cost, call_cost, int(meta.shard_seqlen)))

    chunks = [chunk_size * f for f in dict.fromkeys(alg.chunk_factors)
              if total_seqlen % (chunk_size * f * cp_size) == 0] or [chunk_size]
    metas = (solve(name, chunk) for chunk in chunks for name in alg.candidates)
    return min(metas, key=busiest)  # min keeps the first on ties
