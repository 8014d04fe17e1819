"""The runtime's comm plans carry every rank's lists when native group collectives are on, so the
native binding derives where each sent row lands (and every rank's reduce send counts) locally: a
new mask's first call then makes no host sync (tuning.md, "A new mask every step"). Checked here on
CPU against what the binding's meta exchange returns, simulated by hand from every rank's plan:
the solver's per-rank plans must agree, stage by stage, for the two to match."""

import pytest
import torch
from magi_attention import _compat
from magi_attention.config import DistAttnConfig, OverlapConfig
from magi_attention.env import snapshot_flags
from magi_attention.runtime import dist_attn
from magi_attention.runtime._common import plans_take_group_lists
from magi_attention.runtime.dist_attn import DistAttnRuntime
from magi_attention.runtime.runtime_mgr import _overlap_params


def _varlen_causal(T: int, gen: torch.Generator):
    cuts = sorted(set(torch.randint(1, T, (6,), generator=gen).tolist()))
    edges = [0, *cuts, T]
    ranges = [[a, b] for a, b in zip(edges, edges[1:])]
    return ranges, ranges, [1] * len(ranges)


@pytest.mark.skipif(not plans_take_group_lists(), reason="magi_grpcoll plans without group_lists (< 1.6)")
@pytest.mark.parametrize("world, degree", [(2, 2), (3, 1), (4, 3)])
def test_native_bindings_from_every_ranks_plan_match_the_exchange(monkeypatch, world, degree):
    from magi_grpcoll.impl.native import (
        cast_positions_from_lists,
        cast_receive_positions,
        reduce_counts_from_lists,
    )

    monkeypatch.setenv("MAGI_ATTENTION_NATIVE_GRPCOLL", "1")
    chunk = 32
    T = chunk * world * 6
    qr, kr, types = _varlen_causal(T, torch.Generator().manual_seed(world))
    meta = _compat.solver.make_dispatch_meta(qr, kr, types, T, chunk, world, "min_heap")
    cfg = DistAttnConfig(overlap_config=OverlapConfig(degree=degree, min_chunk_size=16))
    plan = _compat.solver.make_dist_attn_plan(qr, kr, types, meta, _overlap_params(cfg))
    group = [plan.rank_plan(r) for r in range(world)]
    flags = snapshot_flags()
    me = {"rank": 0}
    monkeypatch.setattr(dist_attn.dist, "get_rank", lambda group=None: me["rank"])
    monkeypatch.setattr(dist_attn.dist, "get_world_size", lambda group=None: world)
    runtimes = [DistAttnRuntime(group[r], plan.num_stages, None, flags, torch.device("cpu"), group_plans=group)
                for r in range(world)]
    assert plan.num_stages >= 1
    for s in range(plan.num_stages):
        casts, reduces = [], []
        for r, rt in enumerate(runtimes):
            me["rank"] = r
            cast, reduce = rt._stage_plans(s, torch.device("cpu"))
            assert cast.group_lists is not None and reduce.group_lists is not None
            casts.append(cast)
            reduces.append(reduce)
        # the exchange by hand: receiver d's slots from source r go back to r; the largest output
        slots = [torch.split(cast_receive_positions(c), list(c.recv_counts)) for c in casts]
        cap = max(c.output_len for c in casts)
        counts = torch.tensor([list(p.send_counts) for p in reduces], dtype=torch.int64)
        for r in range(world):
            pos, c = cast_positions_from_lists(casts[r])
            assert torch.equal(pos, torch.cat([slots[d][r] for d in range(world)])), (s, r)
            assert c == cap
            assert torch.equal(reduce_counts_from_lists(reduces[r]), counts), (s, r)
