"""GPU checks (2 CUDA devices, NCCL): a2a-v and native (casts through the copy engines, and through the
chunk-copy kernel) give exactly the reference (cast bitwise, a list of tensors too; reduce within
rounding, also folding at the wait, natively with ``FOLD_AT_WAIT``), lse and avg included; Triton
kernels on CUDA match the torch ones."""

from __future__ import annotations

import random

import pytest
import torch
from magi_grpcoll.testing import random_cast_meta, reduce_meta_of, ref_group_cast, ref_group_reduce

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs >= 2 CUDA devices")]


def _init_nccl(rank, world, port):
    import os
    from datetime import timedelta

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, timeout=timedelta(seconds=120),
                            device_id=torch.device("cuda", rank))
    return dist


def _spawn_two(job, *args):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(job, args=(2, port, *args), nprocs=2, join=True)


def _nccl_job(rank, world, port, impl):
    from magi_grpcoll import group_cast, group_reduce
    from magi_grpcoll.impl import native

    if impl == "native-kernel-copies":  # casts through the chunk-copy kernel, not the copy engines
        native.COPY_ENGINE_CASTS, impl = False, "native"
    if impl == "native-copy-engine-reduce":  # fold-at-wait reduces push through the copy engines
        native.COPY_ENGINE_REDUCE_PUSHES, impl = True, "native"
    if impl == "native-held-tensors":  # tensors held by the works until the wait, not record_stream
        native.RECORD_STREAMS, impl = False, "native"
    folds_here = impl.startswith("native")  # fold_at_wait reduces run natively (FOLD_AT_WAIT) ...
    if impl == "native-fold-as-a2av":  # ... unless switched off: then as a2av
        native.FOLD_AT_WAIT, impl, folds_here = False, "native", False
    dist = _init_nccl(rank, world, port)
    try:
        rng = random.Random(3)
        gen = torch.Generator().manual_seed(3)
        dev = torch.device("cuda", rank)
        for case in range(6):
            meta = random_cast_meta(world, rng, max_len=40)
            dtype = (torch.float32, torch.bfloat16)[case % 2]
            xs = [torch.randn((sum(s), 4, 64), generator=gen).to(dtype) for s in meta.in_sizes]
            ls = [torch.randn((sum(s), 4), generator=gen) for s in meta.in_sizes]
            out = torch.empty((sum(meta.out_sizes[rank]), 4, 64), dtype=dtype, device=dev)
            out_l = torch.empty((sum(meta.out_sizes[rank]), 4), device=dev)
            got, got_l = group_cast(xs[rank].to(dev), out, *meta.of(rank), None, bool(case % 2), True,
                                    ls[rank].to(dev), out_l, impl=impl).wait_post_process()
            args = (meta.in_sizes, meta.dst_indices, meta.out_sizes, meta.src_index)
            assert torch.equal(got.cpu(), ref_group_cast(xs, *args)[rank])
            assert torch.equal(got_l.cpu(), ref_group_cast(ls, *args)[rank])
            # K and V as a list (V with another row shape and dtype), no concatenation
            vs = [torch.randn((sum(s), 2, 96), generator=gen) for s in meta.in_sizes]
            n_out = sum(meta.out_sizes[rank])
            outs = [torch.empty((n_out, 4, 64), dtype=dtype, device=dev), torch.empty((n_out, 2, 96), device=dev)]
            got_k, got_v = group_cast([xs[rank].to(dev), vs[rank].to(dev)], outs, *meta.of(rank), None,
                                      bool(case % 2), impl=impl).wait_post_process()
            assert torch.equal(got_k.cpu(), ref_group_cast(xs, *args)[rank])
            assert torch.equal(got_v.cpu(), ref_group_cast(vs, *args)[rank])
            rm = reduce_meta_of(meta)
            ins_, outs_, dsti, srci = ([m[i] for m in rm] for i in range(4))
            for op in ("sum", "avg", "lse"):
                xs = [torch.randn((sum(s), 4, 64), generator=gen).to(dtype) for s in ins_]
                olds = [torch.randn((sum(s), 4, 64), generator=gen).to(dtype) for s in outs_]
                il = [torch.randn((sum(s), 4), generator=gen) for s in ins_]
                ol = [torch.randn((sum(s), 4), generator=gen) for s in outs_]
                ref = ref_group_reduce(xs, olds, ins_, dsti, outs_, srci, op, input_lses=il, output_lses=ol)
                out, out_l = olds[rank].to(dev), ol[rank].to(dev)
                kw = dict(input_lse=il[rank].to(dev), output_lse=out_l) if op == "lse" else {}
                res = group_reduce(xs[rank].to(dev), out, ins_[rank], outs_[rank], dsti[rank], srci[rank],
                                   None, bool(case % 2), op, **kw, impl=impl).wait_post_process()
                ref_o = ref[0][rank] if op == "lse" else ref[rank]
                got = (res[0] if op == "lse" else res).double().cpu()
                tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
                torch.testing.assert_close(got, ref_o, rtol=tol, atol=tol)
                # fold_at_wait: the output's values may be written after the call, before its wait
                out.fill_(float("nan")), out_l.fill_(float("nan"))
                work = group_reduce(xs[rank].to(dev), out, ins_[rank], outs_[rank], dsti[rank], srci[rank],
                                    None, True, op, **kw, fold_at_wait=True, impl=impl)
                torch.cuda._sleep(1_000_000)
                out.copy_(olds[rank]), out_l.copy_(ol[rank])
                if folds_here:  # its rows still sit in the buffer: another native call first is refused
                    with pytest.raises(RuntimeError, match="not been waited"):
                        group_reduce(xs[rank].to(dev), out.clone(), ins_[rank], outs_[rank], dsti[rank],
                                     srci[rank], None, True, op, **kw, impl=impl)
                res = work.wait_post_process()
                got = (res[0] if op == "lse" else res).double().cpu()
                torch.testing.assert_close(got, ref_o, rtol=tol, atol=tol, msg=lambda m, op=op: f"fold_at_wait {op}: {m}")
        torch.cuda.synchronize()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("impl", ["a2av", "native", "native-kernel-copies", "native-copy-engine-reduce",
                                  "native-held-tensors", "native-fold-as-a2av"])
def test_nccl_impl_matches_reference(impl):
    _spawn_two(_nccl_job, impl)


def _native_back_to_back_job(rank, world, port):
    """Many native casts and reduces queued without a host sync: the alternating buffer halves
    (one barrier per call) must never let a call overwrite rows a peer has not read yet."""
    from magi_grpcoll import GroupCastPlan

    dist = _init_nccl(rank, world, port)
    try:
        rng = random.Random(7)
        dev = torch.device("cuda", rank)
        # growing sizes: the symmetric buffer is replaced while calls are queued on it
        metas = [random_cast_meta(world, rng, max_splits=8, max_len=n) for n in (100, 300, 900)]
        plans = [GroupCastPlan.build(*m.of(rank), rank=rank, world_size=world, device=dev) for m in metas]
        gen = torch.Generator().manual_seed(5)
        jobs = []
        for it in range(12):
            m, plan = metas[it % 3], plans[it % 3]
            xs = [torch.randn((sum(s), 2, 8, 128), generator=gen).to(torch.bfloat16) for s in m.in_sizes]
            out = torch.empty((plan.output_len, 2, 8, 128), dtype=torch.bfloat16, device=dev)
            w = plan.cast(xs[rank].to(dev), out, async_op=True, impl="native")
            parts = [torch.randn((sum(s), 2, 8, 128), generator=gen) for s in m.out_sizes]  # every rank's
            red = torch.zeros((plan.input_len, 2, 8, 128), dtype=torch.float32, device=dev)
            wr = plan.transpose().reduce(parts[rank].to(dev), red, async_op=True, impl="native")
            jobs.append((m, xs, w, wr, parts))
            if it == 5:  # let the replacing calls complete: later calls release the old buffers
                torch.cuda.synchronize()
        for m, xs, w, wr, parts in jobs:
            ref = ref_group_cast(xs, m.in_sizes, m.dst_indices, m.out_sizes, m.src_index)[rank]
            assert torch.equal(w.wait_post_process().cpu(), ref)
            rm = reduce_meta_of(m)
            zeros = [torch.zeros((sum(r[1]), 2, 8, 128)) for r in rm]
            ref_r = ref_group_reduce(parts, zeros, *([r[i] for r in rm] for i in (0, 2, 1, 3)), "sum")[rank]
            torch.testing.assert_close(wr.wait_post_process().double().cpu(), ref_r, rtol=1e-5, atol=1e-5)
        torch.cuda.synchronize()
        from magi_grpcoll.impl import get_impl

        assert len(get_impl("native")._buffers._by_group) == 1, "one symmetric buffer per group"
    finally:
        dist.destroy_process_group()


def test_native_back_to_back_calls():
    _spawn_two(_native_back_to_back_job)


def _native_graph_job(rank, world, port):
    """One plan called again and again on the same tensors (new contents each time): from the second
    call on, the native ops replay CUDA graphs; every result must still match the definition, across
    both buffer halves and after another plan grows the symmetric buffer (graphs of the old buffer
    must not be replayed)."""
    from magi_grpcoll import GroupCastPlan
    from magi_grpcoll.impl import get_impl

    dist = _init_nccl(rank, world, port)
    try:
        rng = random.Random(11)
        dev = torch.device("cuda", rank)
        meta = random_cast_meta(world, rng, max_splits=6, max_len=200)
        big = random_cast_meta(world, rng, max_splits=8, max_len=3000)
        plan = GroupCastPlan.build(*meta.of(rank), rank=rank, world_size=world, device=dev)
        rplan = plan.transpose()
        big_plan = GroupCastPlan.build(*big.of(rank), rank=rank, world_size=world, device=dev)
        rm = reduce_meta_of(meta)
        ins_, outs_, dsti, srci = ([m[i] for m in rm] for i in range(4))
        shape = (4, 128)
        x = torch.empty((plan.input_len, *shape), dtype=torch.bfloat16, device=dev)
        out = torch.empty((plan.output_len, *shape), dtype=torch.bfloat16, device=dev)
        part = torch.empty((plan.output_len, *shape), dtype=torch.float32, device=dev)
        red = torch.empty((plan.input_len, *shape), dtype=torch.float32, device=dev)
        part_l = torch.empty((plan.output_len, 4), device=dev)
        red_l = torch.empty((plan.input_len, 4), device=dev)
        gen = torch.Generator().manual_seed(13)
        for it in range(10):  # 3 calls per iteration: a key (its buffer half) comes back every 2nd one
            xs = [torch.randn((sum(s), *shape), generator=gen).to(torch.bfloat16) for s in meta.in_sizes]
            x.copy_(xs[rank])
            got = plan.cast(x, out, async_op=True, impl="native").wait_post_process()
            ref = ref_group_cast(xs, meta.in_sizes, meta.dst_indices, meta.out_sizes, meta.src_index)[rank]
            assert torch.equal(got.cpu(), ref), f"cast, call {it}"
            for op in ("sum", "lse"):
                parts = [torch.randn((sum(s), *shape), generator=gen) for s in ins_]
                olds = [torch.randn((sum(s), *shape), generator=gen) for s in outs_]
                il = [torch.randn((sum(s), 4), generator=gen) for s in ins_]
                ol = [torch.randn((sum(s), 4), generator=gen) for s in outs_]
                part.copy_(parts[rank]), red.copy_(olds[rank]), part_l.copy_(il[rank]), red_l.copy_(ol[rank])
                kw = dict(input_lse=part_l, output_lse=red_l) if op == "lse" else {}
                res = rplan.reduce(part, red, async_op=True, reduce_op=op, impl="native", **kw).wait_post_process()
                want = ref_group_reduce(parts, olds, ins_, dsti, outs_, srci, op, input_lses=il, output_lses=ol)
                got_r = res[0] if op == "lse" else res
                torch.testing.assert_close(got_r.double().cpu(), want[0][rank] if op == "lse" else want[rank],
                                           rtol=1e-5, atol=1e-5, msg=lambda m, op=op, it=it: f"reduce {op}, call {it}: {m}")
                if op == "lse":
                    torch.testing.assert_close(res[1].double().cpu(), want[1][rank], rtol=1e-5, atol=1e-5)
            if it == 3:  # grow the symmetric buffer between graph replays
                xb = torch.randn((big_plan.input_len, *shape), device=dev).to(torch.bfloat16)
                ob = torch.empty((big_plan.output_len, *shape), dtype=torch.bfloat16, device=dev)
                big_plan.cast(xb, ob, impl="native").wait_post_process()
        torch.cuda.synchronize()
        native = get_impl("native")
        assert native._buffers._generations >= 2, "the big cast did not grow the symmetric buffer"
        for p in (plan, rplan):
            g = native._bindings[p].graphs
            # each half of each buffer captured once, and replayed again after its capturing call
            assert g.replays > g.captures >= 2, f"graphs not reused: {g.captures} captures, {g.replays} replays"
    finally:
        dist.destroy_process_group()


def test_native_graph_replays_match_eager():
    _spawn_two(_native_graph_job)


def test_triton_kernels_on_cuda_match_torch():
    from magi_grpcoll.kernels import gather_rows, reduce_rows
    from magi_grpcoll.plan import GroupReducePlan

    dev = torch.device("cuda", 0)
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(300, 8, 128, generator=gen).to(dev, torch.bfloat16)
    rows = torch.randint(0, 300, (500,), generator=gen).to(dev)
    assert torch.equal(gather_rows(src, rows, backend="triton"), src[rows])
    plan = GroupReducePlan.build([100, 100, 100], [100, 100], [0, 0, 0], [[0], [0]], rank=0, world_size=1,
                                 device=dev)
    recv = torch.randn(300, 8, 128, generator=gen).to(dev)
    for op in ("sum", "avg", "lse"):
        out = torch.randn(200, 8, 128, generator=gen).to(dev)
        lse_a = torch.randn(200, 8, generator=gen).to(dev)
        lse_r = torch.randn(300, 8, generator=gen).to(dev)
        o_t, l_t = out.clone(), lse_a.clone()
        o_r, l_r = out.clone(), lse_a.clone()
        reduce_rows(o_t, recv, plan.rmap, op, output_lse=l_t, recv_lse=lse_r, backend="triton")
        reduce_rows(o_r, recv, plan.rmap, op, output_lse=l_r, recv_lse=lse_r, backend="torch")
        torch.testing.assert_close(o_t, o_r, rtol=1e-5, atol=1e-5)
        if op == "lse":
            torch.testing.assert_close(l_t, l_r, rtol=1e-5, atol=1e-5)
