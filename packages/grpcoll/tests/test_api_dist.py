"""group_cast / group_reduce across spawned gloo ranks, checked against the reference definition.

Each spawned job runs many random cases (spawning costs seconds), every rank generating the same
meta and inputs from a shared seed, so each rank can compute every rank's reference locally.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.distributed as dist
from _dist import run_dist
from magi_grpcoll import GroupCastPlan, GrpCollError, group_cast, group_reduce
from magi_grpcoll.impl.hier import make_hier_groups
from magi_grpcoll.testing import CastMeta, random_cast_meta, reduce_meta_of, ref_group_cast, ref_group_reduce

pytestmark = pytest.mark.dist

_DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _tensors(gen, sizes, row, dtype):
    return [torch.randn((sum(s), *row), generator=gen, dtype=torch.float64).to(dtype) for s in sizes]


def _lses(gen, sizes, heads):
    out = []
    for s in sizes:
        t = torch.randn((sum(s), heads), generator=gen, dtype=torch.float64).float() * 3
        t[torch.rand(t.shape, generator=gen) < 0.2] = -torch.inf
        out.append(t)
    return out


def _tol(dtype):
    return {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]


def _job_random_cases(rank, world, n_cases, seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for case in range(n_cases):
        meta = random_cast_meta(world, rng)
        dtype = _DTYPES[case % 3]
        async_op = case % 2 == 1
        # --- cast, with lse
        xs = _tensors(gen, meta.in_sizes, (2, 3), dtype)
        ls = _lses(gen, meta.in_sizes, 2)
        out = torch.full((sum(meta.out_sizes[rank]), 2, 3), 7.0, dtype=dtype)
        out_l = torch.full((sum(meta.out_sizes[rank]), 2), 7.0)
        work = group_cast(xs[rank], out, *meta.of(rank)[:2], meta.dst_indices[rank], meta.src_index[rank],
                          None, async_op, True, ls[rank], out_l)
        got, got_l = work.wait_post_process(out, out_l)
        ref = ref_group_cast(xs, meta.in_sizes, meta.dst_indices, meta.out_sizes, meta.src_index)[rank]
        ref_l = ref_group_cast(ls, meta.in_sizes, meta.dst_indices, meta.out_sizes, meta.src_index)[rank]
        assert torch.equal(got, ref), f"case {case}: cast differs"
        assert torch.equal(got_l, ref_l), f"case {case}: cast lse differs"
        with pytest.raises(RuntimeError, match="already called"):
            work.wait_post_process(out, out_l)
        # --- reduce, every op
        rm = reduce_meta_of(meta)
        ins_, outs_, dsti, srci = ([m[i] for m in rm] for i in range(4))
        for op in ("sum", "avg", "lse"):
            xs = _tensors(gen, ins_, (2, 3), dtype)
            olds = _tensors(gen, outs_, (2, 3), dtype)
            il, ol = _lses(gen, ins_, 2), _lses(gen, outs_, 2)
            ref = ref_group_reduce(xs, olds, ins_, dsti, outs_, srci, op, input_lses=il, output_lses=ol)
            out, out_l = olds[rank].clone(), ol[rank].clone()
            kw = dict(input_lse=il[rank], output_lse=out_l) if op == "lse" else {}
            work = group_reduce(xs[rank], out, ins_[rank], outs_[rank], dsti[rank], srci[rank], None,
                                async_op, op, **kw)
            res = work.wait_post_process(*((out, out_l) if op == "lse" else (out,)))
            got = res[0] if op == "lse" else res
            ref_o = ref[0][rank] if op == "lse" else ref[rank]
            assert got is out
            # low precision: compare to the float64 reference within twice the rounding of the result
            err = (got.double() - ref_o).abs().max().item() if got.numel() else 0.0
            tol = max(_tol(dtype), 1e-5) if op == "lse" else _tol(dtype)  # lse weights are float32
            assert err <= tol * (1 + (ref_o.abs().max().item() if ref_o.numel() else 0)), \
                f"case {case} op {op} {dtype}: max err {err}"
            if op == "lse":
                torch.testing.assert_close(out_l.double(), ref[1][rank], rtol=1e-5, atol=1e-5)


def list_cast_cases(rank, world, n_cases, seed, **kw):
    """A cast of a list of tensors (different row shapes and dtypes, e.g. K and V) moves each as its
    own cast would; with lse, through the functional API and a plan, waited with and without the
    outputs passed back (`kw`: the impl and its groups)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for case in range(n_cases):
        meta = random_cast_meta(world, rng)
        args = (meta.in_sizes, meta.dst_indices, meta.out_sizes, meta.src_index)
        ks = _tensors(gen, meta.in_sizes, (2, 3), torch.float32)
        vs = _tensors(gen, meta.in_sizes, (5,), _DTYPES[case % 3])
        ls = _lses(gen, meta.in_sizes, 2)
        n_out = sum(meta.out_sizes[rank])
        outs = [torch.full((n_out, 2, 3), 7.0), torch.full((n_out, 5), 7.0, dtype=vs[0].dtype)]
        out_l = torch.full((n_out, 2), 7.0)
        with_lse = case % 2 == 0
        lse_kw = dict(cast_lse=True, input_lse=ls[rank], output_lse=out_l) if with_lse else {}
        if case % 3 == 2:  # a plan, run directly
            plan = GroupCastPlan.build(*meta.of(rank), rank=rank, world_size=world)
            lse_kw.pop("cast_lse", None)
            work = plan.cast([ks[rank], vs[rank]], outs, async_op=case % 2 == 1, **lse_kw, **kw)
        else:
            work = group_cast([ks[rank], vs[rank]], outs, *meta.of(rank), None, case % 2 == 1, **lse_kw, **kw)
        passed = ((outs, out_l) if with_lse else (outs,)) if case % 2 else ()
        res = work.wait_post_process(*passed)
        got, got_l = res if with_lse else (res, None)
        assert isinstance(got, list) and len(got) == 2 and got[0] is outs[0] and got[1] is outs[1]
        for g, xs in zip(got, (ks, vs)):
            assert torch.equal(g, ref_group_cast(xs, *args)[rank]), f"list cast case {case}"
        if with_lse:
            assert got_l is out_l and torch.equal(got_l, ref_group_cast(ls, *args)[rank])


def _job_world(rank, world, n_cases, seed):
    _job_random_cases(rank, world, n_cases, seed)
    list_cast_cases(rank, world, 3, seed + 7)
    if world == 2:
        _job_plans_and_errors(rank, world)
        os.environ["MAGI_ATTENTION_SANITY_CHECK"] = "1"
        _job_sanity(rank, world)
        os.environ["MAGI_ATTENTION_SANITY_CHECK"] = "0"
    if world == 4:
        hier_cases(rank, world, 4, seed)
        hier_cases(rank, world, 3, seed + 1, regroup=True)
        hier_cases(rank, world, 3, seed + 2, regroup=True, flat=True)
        intra, inter = make_hier_groups(2)
        list_cast_cases(rank, world, 3, seed + 3, impl="hier", intra_group=intra, inter_group=inter)


@pytest.mark.parametrize("world, n_cases", [(2, 6), (3, 3), (4, 4)])
def test_random_cases_against_reference(world, n_cases):
    """Random metas, a2a-v (every world) + plans/errors/sanity (2 ranks) + hierarchical 2x2 (4 ranks)."""
    run_dist(world, _job_world, n_cases, 100 + world, timeout=240)


def _job_plans_and_errors(rank, world):
    # planned form, executed several times, and its transpose (the backward)
    gen = torch.Generator().manual_seed(1)
    dsts = [[(rank + 1) % world], [0, 1], []]
    in_sizes = [3, 2, 4]
    # every rank sends split 0 to rank+1 and split 1 to ranks {0,1}
    srcs = [(rank - 1) % world] + ([0, 1] if rank in (0, 1) else [])
    srcs = sorted(srcs, key=lambda r: (r != (rank - 1) % world, r)) if rank in (0, 1) else srcs
    out_sizes = [3 if (r == (rank - 1) % world and k == 0) else 2 for k, r in enumerate(srcs)]
    # sizes: the first split named for a source r is r's split 0 if r sends it here, else split 1
    sent = {r: [s for i, s in enumerate(in_sizes) if rank in ([(r + 1) % world], [0, 1], [])[i]]
            for r in range(world)}
    cursor = dict.fromkeys(range(world), 0)
    out_sizes = []
    for r in srcs:
        out_sizes.append(sent[r][cursor[r]])
        cursor[r] += 1
    plan = GroupCastPlan.build(in_sizes, out_sizes, dsts, srcs, rank=rank, world_size=world)
    rplan = plan.transpose()
    for it in range(3):
        x = torch.randn(9, 4, generator=gen) + rank
        out = torch.empty(sum(out_sizes), 4)
        y = plan.cast(x, out, async_op=bool(it % 2)).wait_post_process()
        back = torch.zeros(9, 4)
        back = rplan.reduce(y, back).wait_post_process()
        # every row of x comes back once per destination it was cast to
        mult = torch.tensor([1.0] * 3 + [2.0] * 2 + [0.0] * 4).view(-1, 1)
        torch.testing.assert_close(back, x * mult)
    # fold_at_wait (interface 1.3): the output may still be written between the call and its wait
    back = torch.full((9, 4), float("nan"))
    work = rplan.reduce(y, back, async_op=True, fold_at_wait=True)
    back.fill_(0.5)
    torch.testing.assert_close(work.wait_post_process(), x * mult + 0.5)
    with pytest.raises(GrpCollError, match="fold_at_wait must be a bool"):
        rplan.reduce(y, back, fold_at_wait="yes")

    # local bad input: raises on this rank before any communication
    with pytest.raises(GrpCollError, match=r"group_cast\(\): sum\(input_split_sizes\)=4 does not match"):
        group_cast(torch.zeros(5, 2), torch.zeros(0, 2), [4], [], [[]], [])
    with pytest.raises(GrpCollError, match="must be torch.float32"):
        group_cast(torch.zeros(2, 2, 2), torch.zeros(0, 2, 2), [2], [], [[]], [], cast_lse=True,
                   input_lse=torch.zeros(2, 2, dtype=torch.float64), output_lse=torch.zeros(0, 2))
    with pytest.raises(GrpCollError, match="dtype"):
        group_cast(torch.zeros(2, 2), torch.zeros(0, 2, dtype=torch.float64), [2], [], [[]], [])
    with pytest.raises(GrpCollError, match="reduce_op='max' is unknown"):
        group_reduce(torch.zeros(2, 2), torch.zeros(0, 2), [2], [], [rank], [], reduce_op="max")
    with pytest.raises(GrpCollError, match="out of range"):
        group_cast(torch.zeros(2, 2), torch.zeros(0, 2), [2], [], [[world]], [])
    # lists of tensors: one output per input, each shaped like its input
    with pytest.raises(GrpCollError, match="both be tensors or lists of the same length"):
        group_cast([torch.zeros(2, 2), torch.zeros(2, 3)], [torch.zeros(0, 2)], [2], [], [[]], [])
    with pytest.raises(GrpCollError, match="both be tensors or lists"):
        group_cast([torch.zeros(2, 2)], torch.zeros(0, 2), [2], [], [[]], [])
    with pytest.raises(GrpCollError, match=r"output\[1\] row shape \[4\] differs from input row shape \[3\]"):
        group_cast([torch.zeros(2, 2), torch.zeros(2, 3)], [torch.zeros(0, 2), torch.zeros(0, 4)], [2], [],
                   [[]], [])
    with pytest.raises(GrpCollError, match=r"input\[1\] has 3 rows along dim 0; expected 9"):
        plan.cast([torch.zeros(9, 4), torch.zeros(3, 4)], [torch.zeros(sum(out_sizes), 4)] * 2)
    with pytest.raises(GrpCollError, match="empty list"):
        group_cast([], [], [0], [], [[]], [])
    with pytest.raises(GrpCollError, match="input must be a torch.Tensor"):
        group_reduce([torch.zeros(2, 2)], torch.zeros(0, 2), [2], [], [rank], [])
    dist.barrier()


def _job_sanity(rank, world):
    # mismatched counts: rank 0 sends 3 rows to rank 1, rank 1 expects 2 -> every rank raises
    x = torch.randn(3, 2)
    if rank == 0:
        args = (x, torch.zeros(0, 2), [3], [], [[1]], [])
    else:
        args = (torch.zeros(0, 2), torch.zeros(2, 2), [], [2], [], [0])
    with pytest.raises(GrpCollError, match="rank 0 sends 3 rows to rank 1, but rank 1 expects 2"):
        group_cast(*args)
    # same totals, cut differently: valid (only each source's row stream is defined)
    if rank == 0:
        args = (x, torch.zeros(0, 2), [1, 2], [], [[1], [1]], [])
    else:
        args = (torch.zeros(0, 2), torch.zeros(3, 2), [], [2, 1], [], [0, 0])
    got = group_cast(*args).wait_post_process()
    sent = torch.zeros(3, 2) if rank == 1 else x
    dist.broadcast(sent, src=0)
    if rank == 1:
        assert torch.equal(got, sent), "regrouped receive splits reorder or lose rows"
    # only rank 1 has bad input; rank 0 must raise too instead of hanging in the all-to-all
    if rank == 0:
        args = (x, torch.zeros(0, 2), [3], [], [[]], [])
    else:
        args = (torch.zeros(0, 2), torch.zeros(0, 2), [5], [], [[0]], [])
    with pytest.raises(GrpCollError, match="rank 1 of the group rejected|does not match"):
        group_cast(*args)
    # reduce with mismatched dtypes across ranks
    t = torch.zeros(1, 2, dtype=torch.float32 if rank == 0 else torch.float64)
    with pytest.raises(GrpCollError, match="disagree on the row shape/dtype"):
        group_reduce(t, t.clone(), [1], [1], [rank], [[rank]])
    dist.barrier()


def _regroup(meta, rng):
    """The same transfer described at another granularity: each output split cut into random parts.

    Only the row stream per source is defined (as for a flat all-to-all-v); the solver's plans
    describe the two sides with different range cuts, so every impl must accept this."""
    out_sizes, src_index = [], []
    for d in range(meta.world_size):
        sz, src = [], []
        for s, r in zip(meta.out_sizes[d], meta.src_index[d]):
            cuts = sorted(rng.sample(range(1, s), rng.randint(0, min(2, s - 1)))) if s > 1 else []
            parts = [b - a for a, b in zip([0, *cuts], [*cuts, s])]
            sz += parts
            src += [r] * len(parts)
        out_sizes.append(sz)
        src_index.append(src)
    return CastMeta(meta.in_sizes, out_sizes, meta.dst_indices, src_index)


def hier_cases(rank, world, n_cases, seed, *, flat=False, regroup=False):
    """Random casts and reduces on the hierarchical impl (2 x 2), or the flat one with ``flat``;
    with ``regroup`` the calls describe the receive side at another granularity than the sends
    (checked against the reference of the original description: the rows are the same)."""
    if flat:
        kw = {}
    else:
        intra, inter = make_hier_groups(2)
        kw = dict(impl="hier", intra_group=intra, inter_group=inter)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for case in range(n_cases):
        meta = random_cast_meta(world, rng)
        call = _regroup(meta, rng) if regroup else meta
        dtype = (torch.float32, torch.float64)[case % 2]
        xs = [torch.randn((sum(s), 2, 3), generator=gen, dtype=torch.float64).to(dtype) for s in meta.in_sizes]
        ls = [torch.randn((sum(s), 2), generator=gen) for s in meta.in_sizes]
        out = torch.zeros((sum(meta.out_sizes[rank]), 2, 3), dtype=dtype)
        out_l = torch.zeros((sum(meta.out_sizes[rank]), 2))
        got, got_l = group_cast(xs[rank], out, *call.of(rank), None, True, True, ls[rank], out_l,
                                **kw).wait_post_process()
        args = (meta.in_sizes, meta.dst_indices, meta.out_sizes, meta.src_index)
        assert torch.equal(got, ref_group_cast(xs, *args)[rank]), f"hier cast case {case}"
        assert torch.equal(got_l, ref_group_cast(ls, *args)[rank]), f"hier cast lse case {case}"
        rm, rm_call = reduce_meta_of(meta), reduce_meta_of(call)
        ins_, outs_, dsti, srci = ([m[i] for m in rm] for i in range(4))
        c_ins, _, c_dsti, _ = ([m[i] for m in rm_call] for i in range(4))
        for op in ("sum", "avg", "lse"):
            xs = [torch.randn((sum(s), 2, 3), generator=gen, dtype=torch.float64).to(dtype) for s in ins_]
            olds = [torch.randn((sum(s), 2, 3), generator=gen, dtype=torch.float64).to(dtype) for s in outs_]
            il = [torch.randn((sum(s), 2), generator=gen) for s in ins_]
            ol = [torch.randn((sum(s), 2), generator=gen) for s in outs_]
            ref = ref_group_reduce(xs, olds, ins_, dsti, outs_, srci, op, input_lses=il, output_lses=ol)
            out, out_l = olds[rank].clone(), ol[rank].clone()
            lse_kw = dict(input_lse=il[rank], output_lse=out_l) if op == "lse" else {}
            res = group_reduce(xs[rank], out, c_ins[rank], outs_[rank], c_dsti[rank], srci[rank], None,
                               bool(case % 2), op, **lse_kw, **kw).wait_post_process()
            if op == "lse":
                torch.testing.assert_close(res[0].double(), ref[0][rank], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(res[1].double(), ref[1][rank], rtol=1e-5, atol=1e-5)
            else:
                torch.testing.assert_close(res.double(), ref[rank], rtol=1e-5, atol=1e-5)


def _job_host_a2a_releases_buffers(rank, world):
    from magi_grpcoll.impl._a2a import a2a_rows

    counts = [rank + 1 + r for r in range(world)]  # rows this rank sends to each rank (uneven)
    recv_counts = [r + 1 + rank for r in range(world)]
    send = torch.arange(sum(counts) * 3, dtype=torch.float32).reshape(-1, 3) + 100 * rank
    recv = torch.full((sum(recv_counts), 3), -1.0)
    for _ in range(20):
        work = a2a_rows(recv, send, recv_counts, counts, dist.group.WORLD)
        work.wait()
        # gloo's worker thread must have let go of the buffers when wait() returns: a late release
        # needs the GIL and aborts the process if it falls into interpreter shutdown
        assert work.buffers_released(), "gloo still holds the all-to-all buffers after wait()"
    start = sum(counts[:rank])  # what the rank sends to itself arrives unchanged
    assert torch.equal(recv[sum(recv_counts[:rank]):][: counts[rank]], send[start: start + counts[rank]])


def test_host_all_to_all_releases_buffers_before_wait_returns():
    run_dist(2, _job_host_a2a_releases_buffers)
