"""CostAwareDispatchAlg: the cheapest of several dispatch solutions by planned per-rank work.

Pure functions of the mask (no process group): each candidate is solved and planned for every
rank, and the choice must be the candidate whose busiest rank has the least host + weighted remote
area; a wrong weighting or a wrong rank would pick another candidate on these masks.
"""

import pytest
from magi_attention import _compat
from magi_attention.config import CostAwareDispatchAlg, DistAttnConfig, SequentialDispatchAlg
from magi_attention.errors import MagiAttentionError
from magi_attention.meta.dispatch_choice import planned_work, solve_dispatch
from magi_attention.runtime.runtime_mgr import _overlap_params

T, CHUNK = 4096, 128


def _masks():
    window = 512
    sliding = ([[0, window]] + [[s, s + CHUNK] for s in range(window, T, CHUNK)],
               [[0, window]] + [[s + CHUNK - window, s + CHUNK] for s in range(window, T, CHUNK)],
               [1] + [3] * ((T - window) // CHUNK))
    causal = ([[0, T]], [[0, T]], [1])
    return {"sliding window": sliding, "causal": causal}


def _costs(mask, cp, remote_cost):
    """Busiest rank's planned work of each single candidate."""
    qr, kr, tm = mask
    params = _overlap_params(DistAttnConfig())
    out = {}
    for name in CostAwareDispatchAlg().candidates:
        meta = _compat.solver.make_dispatch_meta(qr, kr, tm, T, CHUNK, cp, name)
        plan = _compat.solver.make_dist_attn_plan(qr, kr, tm, meta, params)
        out[name] = (max(planned_work(plan, cp, remote_cost)), meta)
    return out


@pytest.mark.parametrize("cp", [2, 4])
@pytest.mark.parametrize("mask, expected", [("sliding window", "sequential"), ("causal", "min_heap")])
def test_cost_aware_picks_the_least_loaded_plan(cp, mask, expected):
    qr, kr, tm = _masks()[mask]
    alg = CostAwareDispatchAlg()
    costs = _costs(_masks()[mask], cp, alg.remote_cost)
    best = min(costs, key=lambda n: costs[n][0])
    assert best == expected, {n: c for n, (c, _) in costs.items()}
    chosen = solve_dispatch(alg, qr, kr, tm, T, CHUNK, cp, _overlap_params(DistAttnConfig()))
    assert [list(p) for p in chosen.partitions] == [list(p) for p in costs[expected][1].partitions]
    # the choice differs between the two masks: the cost decides, not a fixed algorithm
    other = "min_heap" if expected == "sequential" else "sequential"
    assert [list(p) for p in chosen.partitions] != [list(p) for p in costs[other][1].partitions]


def test_one_candidate_is_that_algorithm_and_bad_arguments_raise():
    qr, kr, tm = _masks()["causal"]
    params = _overlap_params(DistAttnConfig())
    only = solve_dispatch(CostAwareDispatchAlg(candidates=("sequential",)), qr, kr, tm, T, CHUNK, 2, params)
    seq = solve_dispatch(SequentialDispatchAlg(), qr, kr, tm, T, CHUNK, 2, params)
    assert [list(p) for p in only.partitions] == [list(p) for p in seq.partitions]
    with pytest.raises(MagiAttentionError, match="candidates"):
        CostAwareDispatchAlg(candidates=("fastest",))
    with pytest.raises(MagiAttentionError, match="candidates"):
        CostAwareDispatchAlg(candidates=())
    with pytest.raises(MagiAttentionError, match="remote_cost"):
        CostAwareDispatchAlg(remote_cost=0.0)
