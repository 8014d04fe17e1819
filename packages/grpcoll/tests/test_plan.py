"""Plans executed in one process (all-to-all simulated) against the reference from the definition."""

from __future__ import annotations

import random

import pytest
import torch
from magi_grpcoll import GroupCastPlan, GroupReducePlan, GrpCollError
from magi_grpcoll.testing import (
    random_cast_meta,
    reduce_meta_of,
    ref_group_cast,
    ref_group_reduce,
    simulate_cast,
    simulate_reduce,
)


def _rand(n, *row, dtype=torch.float32, gen=None):
    return torch.randn((n, *row), generator=gen, dtype=torch.float64).to(dtype)


def test_worked_example_from_the_spec():
    # 4 ranks; rank 0 sends [0,1]->{1}, [2]->{1,2}, [3]->{2}; rank 1 gets [0,1 | 10,11 | 2 | 12 | 13]
    in_sizes = [[2, 1, 1], [0], [2, 1, 1], [0]]
    dsts = [[[1], [1, 2], [2]], [[]], [[1], [1], [1]], [[]]]
    out_sizes = [[], [2, 2, 1, 1, 1], [1, 1], []]
    srcs = [[], [0, 2, 0, 2, 2], [0, 0], []]
    inputs = [torch.arange(4.0), torch.zeros(0), torch.arange(10.0, 14.0), torch.zeros(0)]
    plans = [GroupCastPlan.build(in_sizes[p], out_sizes[p], dsts[p], srcs[p], rank=p, world_size=4)
             for p in range(4)]
    outs = simulate_cast(plans, inputs)
    assert outs[1].tolist() == [0, 1, 10, 11, 2, 12, 13]
    assert outs[2].tolist() == [2, 3]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_cast_plans_match_reference(world):
    rng = random.Random(world)
    for _ in range(20):
        meta = random_cast_meta(world, rng)
        inputs = [_rand(sum(meta.in_sizes[p]), 3) for p in range(world)]
        plans = [GroupCastPlan.build(*meta.of(p), rank=p, world_size=world) for p in range(world)]
        got = simulate_cast(plans, inputs)
        ref = ref_group_cast(inputs, meta.in_sizes, meta.dst_indices, meta.out_sizes, meta.src_index)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=0, atol=0)


@pytest.mark.parametrize("op", ["sum", "avg", "lse"])
@pytest.mark.parametrize("acc_reduce", [True, False])
def test_reduce_plans_match_reference(op, acc_reduce):
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(0)
    for world in (2, 3, 4):
        for _ in range(8):
            rmeta = reduce_meta_of(random_cast_meta(world, rng))
            plans = [GroupReducePlan.build(*rmeta[p], rank=p, world_size=world) for p in range(world)]
            ins = [_rand(sum(m[0]), 2, 3, gen=gen) for m in rmeta]
            outs = [_rand(sum(m[1]), 2, 3, gen=gen) for m in rmeta]
            in_l = [_rand(sum(m[0]), 2, gen=gen) for m in rmeta]
            out_l = [_rand(sum(m[1]), 2, gen=gen) for m in rmeta]
            for t in in_l + out_l:  # some -inf rows: empty partials
                if t.shape[0]:
                    t[torch.rand(t.shape, generator=gen) < 0.3] = -torch.inf
            ref = ref_group_reduce(ins, outs, [m[0] for m in rmeta], [m[2] for m in rmeta],
                                   [m[1] for m in rmeta], [m[3] for m in rmeta], op, acc_reduce=acc_reduce,
                                   input_lses=in_l, output_lses=out_l)
            got_o = [o.clone() for o in outs]
            got_l = [t.clone() for t in out_l]
            simulate_reduce(plans, ins, got_o, op, acc_reduce=acc_reduce, input_lses=in_l, output_lses=got_l)
            ref_o, ref_l = ref if op == "lse" else (ref, None)
            for p in range(world):
                torch.testing.assert_close(got_o[p].double(), ref_o[p], rtol=1e-5, atol=1e-5)
                if op == "lse":
                    torch.testing.assert_close(got_l[p].double(), ref_l[p], rtol=1e-5, atol=1e-5)


def test_avg_example_from_the_spec():
    # old [1,2] with inputs [3,4] and [5,6] averages to [3,4]
    plans = [GroupReducePlan.build([1], [1], [0], [[0, 1]], rank=0, world_size=2),
             GroupReducePlan.build([1], [], [0], [], rank=1, world_size=2)]
    out = [torch.tensor([[1.0, 2.0]]), torch.zeros(0, 2)]
    simulate_reduce(plans, [torch.tensor([[3.0, 4.0]]), torch.tensor([[5.0, 6.0]])], out, "avg")
    assert out[0].tolist() == [[3.0, 4.0]]


def test_transpose_round_trip():
    rng = random.Random(3)
    meta = random_cast_meta(3, rng)
    for p in range(3):
        cp = GroupCastPlan.build(*meta.of(p), rank=p, world_size=3)
        rp = cp.transpose()
        assert rp.input_split_sizes == cp.output_split_sizes
        assert rp.src_indices == cp.dst_indices
        back = rp.transpose()
        assert back.dst_indices == cp.dst_indices and back.src_index == cp.src_index
        assert back.send_counts == cp.send_counts and back.recv_counts == cp.recv_counts


def test_identity_plans_skip_passes():
    p = GroupCastPlan.build([2, 3], [2, 3], [[0], [1]], [0, 1], rank=0, world_size=2)
    assert p.send_rows is None and p.recv_rows is None
    q = GroupCastPlan.build([2, 3], [3, 2], [[1], [0]], [1, 0], rank=0, world_size=2)
    assert q.send_rows is not None and q.recv_rows is not None
    assert "GroupCastPlan(rank=0/2" in repr(q)


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_split_sizes=[2, -1], output_split_sizes=[1], dst_indices=[[0], [0]], src_index=[0]), "negative"),
    (dict(input_split_sizes=[2], output_split_sizes=[1], dst_indices=[[0, 2]], src_index=[0]), "out of range"),
    (dict(input_split_sizes=[2], output_split_sizes=[1], dst_indices=[[0], [1]], src_index=[0]), "one rank list"),
    (dict(input_split_sizes=[2], output_split_sizes=[1], dst_indices=[[1, 1]], src_index=[0]), "twice"),
    (dict(input_split_sizes=[2], output_split_sizes=[1], dst_indices=[[1]], src_index=[-1]), "out of range"),
    (dict(input_split_sizes=[2.0], output_split_sizes=[1], dst_indices=[[1]], src_index=[0]), "must be an int"),
])
def test_build_rejects_bad_lists(kwargs, match):
    with pytest.raises(GrpCollError, match=match):
        GroupCastPlan.build(**kwargs, rank=0, world_size=2)


def test_build_rejects_bad_rank():
    with pytest.raises(GrpCollError, match="rank=3 is out of range"):
        GroupReducePlan.build([1], [1], [0], [[0]], rank=3, world_size=2)
    assert issubclass(GrpCollError, ValueError)


def test_hier_layout_sends_once_per_node():
    from magi_grpcoll.impl.hier import _build_layout

    # 2 nodes x 2 ranks; rank 0 sends a 5-row split to both ranks of node 1 and a 2-row split to {1, 3}
    gmeta = [([5, 2], ((2, 3), (1, 3))), ([], ()), ([], ()), ([], ())]
    lay0 = _build_layout(gmeta, [], [], 0, 2, 2, "cpu")
    assert lay0.b.send_counts == (0, 7)  # each split crosses the inter link once
    assert lay0.a.send_counts == (0, 2)
    lay2 = _build_layout(gmeta, [5], [0], 2, 2, 2, "cpu")  # rank 2 forwards to itself and rank 3
    assert lay2.b.recv_counts == (7, 0)
    assert lay2.c.send_counts == (5, 7)
    lay3 = _build_layout(gmeta, [5, 2], [0, 0], 3, 2, 2, "cpu")
    assert lay3.c.recv_counts == (7, 0)


def test_group_lists_are_kept_transposed_and_checked():
    # every rank's lists, as a planner running on every rank has them (the spec's worked example)
    in_sizes = [[2, 1, 1], [0], [2, 1, 1], [0]]
    dsts = [[[1], [1, 2], [2]], [[]], [[1], [1], [1]], [[]]]
    out_sizes = [[], [2, 2, 1, 1, 1], [1, 1], []]
    srcs = [[], [0, 2, 0, 2, 2], [0, 0], []]
    group = [(in_sizes[p], out_sizes[p], dsts[p], srcs[p]) for p in range(4)]
    plan = GroupCastPlan.build(*group[1], rank=1, world_size=4, group_lists=group)
    assert plan.group_lists[2] == ((2, 1, 1), (1, 1), ((1,), (1,), (1,)), (0, 0))
    assert GroupCastPlan.build(*group[1], rank=1, world_size=4).group_lists is None
    rp = plan.transpose()  # the reduce keeps every rank's transposed lists
    assert rp.group_lists[0] == ((), (2, 1, 1), (), ((1,), (1, 2), (2,)))
    assert rp.transpose().group_lists == plan.group_lists
    # one entry per rank, this rank's own lists at its index, and the ranks agreeing pairwise
    with pytest.raises(GrpCollError, match="one entry per rank"):
        GroupCastPlan.build(*group[1], rank=1, world_size=4, group_lists=group[:3])
    with pytest.raises(GrpCollError, match=r"group_lists\[1\] differs"):
        GroupCastPlan.build(*group[1], rank=1, world_size=4, group_lists=[group[0]] * 4)
    bad = list(group)
    bad[2] = ([2, 1, 1], [1, 1], [[1], [1], [3]], [0, 0])  # rank 2 sends its last row to 3, not to 1
    with pytest.raises(GrpCollError, match="rank 2 sends 3 rows to rank 1, which expects 4 from it"):
        GroupCastPlan.build(*group[1], rank=1, world_size=4, group_lists=bad)
    bad[2] = ([2, 1, 1], [1, 1], [[1], [1], [7]], [0, 0])
    with pytest.raises(GrpCollError, match=r"group_lists\[2\]\[2\] \(dst_indices\)"):
        GroupCastPlan.build(*group[1], rank=1, world_size=4, group_lists=bad)
    with pytest.raises(GrpCollError, match="rank 0 sends 0 rows to rank 2, which expects 2"):
        GroupReducePlan.build(*rp.group_lists[1][:4], rank=1, world_size=4,
                              group_lists=[rp.group_lists[0], rp.group_lists[1], ((1, 1), (1, 1), (0, 0), ((0,), (0,))),
                                           rp.group_lists[3]])
