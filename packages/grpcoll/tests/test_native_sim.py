"""The native implementation's data path, simulated in one process on CPU.

Every rank's binding is built from the exchanged meta (the all_to_all / all_gather done by hand),
then the chunk-copy kernel (Triton interpreter) pushes each rank's rows into the other ranks'
"symmetric buffers" (plain CPU tensors, addressed through a table of raw pointers as on the GPU),
then each rank runs its post step. This checks the chunk tables, the self-rows-to-output shortcut,
the buffer-half offsets, the post copy and the reduce's fold from the receive buffer (every op,
with and without acc_reduce) against the definition; symmetric memory, streams and the barrier are
left to the GPU test.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys

import pytest
import torch
from magi_grpcoll.kernels.chunk_copy import CHUNK_BYTES, build_chunks
from magi_grpcoll.testing import random_cast_meta, reduce_meta_of, ref_group_cast, ref_group_reduce


def test_build_chunks_merges_runs_and_caps_bytes():
    src = torch.tensor([0, 1, 2, 3, 9, 10, 4, 5])
    dst = torch.tensor([5, 6, 7, 9, 10, 11, 0, 1])
    who = torch.tensor([1, 1, 1, 1, 1, 1, -1, 0])
    t = build_chunks(src, dst, who, row_nbytes=16).tolist()
    # row 3 breaks the dst run, row 4 the src run, row 6 the destination, row 7 the destination again;
    # chunks are ordered by how far into their destination's rows they start (destinations interleave)
    assert t == [[0, 5, 3, 1], [4, 0, 1, -1], [5, 1, 1, 0], [3, 9, 1, 1], [9, 10, 2, 1]]
    rows = CHUNK_BYTES // 1024
    big = build_chunks(torch.arange(3 * rows), torch.arange(3 * rows), torch.zeros(3 * rows), row_nbytes=1024)
    assert big[:, 2].tolist() == [rows] * 3 and big[:, 0].tolist() == [0, rows, 2 * rows]
    assert build_chunks(src[:0], dst[:0], who[:0], 16).shape == (0, 4)


def _addr_table(bufs):
    table = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    return table, table.data_ptr()


def _simulate(world: int, rng: random.Random, gen: torch.Generator) -> None:
    from magi_grpcoll.impl.native import cast_binding, cast_receive_positions, reduce_binding
    from magi_grpcoll.kernels import pull_reduce_rows, reduce_rows
    from magi_grpcoll.kernels.chunk_copy import copy_chunks, row_bytes
    from magi_grpcoll.plan import GroupCastPlan, GroupReducePlan

    meta = random_cast_meta(world, rng, max_len=7)
    plans = [GroupCastPlan.build(*meta.of(p), rank=p, world_size=world) for p in range(world)]
    # the binding's exchange: receiver d's slots from source r go back to r
    invs = [torch.split(cast_receive_positions(pl), list(pl.recv_counts)) for pl in plans]
    cap = max(pl.output_len for pl in plans)
    binds = [cast_binding(pl, torch.cat([invs[d][p] for d in range(world)]), cap)
             for p, pl in enumerate(plans)]
    xs = [torch.randn(sum(s), 3, 4, generator=gen) for s in meta.in_sizes]
    half = 1  # the second buffer half, as on odd calls
    outs = [torch.full((sum(meta.out_sizes[p]), 3, 4), float("nan")) for p in range(world)]
    rb = row_bytes(xs[0])
    bufs = [torch.full((2 * cap * 12,), float("nan")) for _ in range(world)]  # 12 floats per row
    table, addr = _addr_table(bufs)
    for p in range(world):
        copy_chunks(xs[p], binds[p].table("push", rb), out=outs[p], peer_bufs_addr=addr,
                    dst_offset_bytes=half * cap * rb, peer_align_16=False)
    for p in range(world):  # after the barrier: peer-sourced rows out of the buffer
        region = bufs[p][half * cap * 12:].view(cap, 3, 4)
        copy_chunks(region, binds[p].table("post", rb), out=outs[p])
    ref = ref_group_cast(xs, meta.in_sizes, meta.dst_indices, meta.out_sizes, meta.src_index)
    for p in range(world):
        assert torch.equal(outs[p], ref[p]), f"cast rank {p}"

    rm = reduce_meta_of(meta)
    rplans = [GroupReducePlan.build(*rm[p], rank=p, world_size=world) for p in range(world)]
    counts = torch.tensor([list(pl.send_counts) for pl in rplans], dtype=torch.int64)
    rbinds = [reduce_binding(pl, counts) for pl in rplans]
    cap = max(rb_.capacity_rows for rb_ in rbinds)
    ins = [torch.randn(sum(m[0]), 3, 4, generator=gen) for m in rm]
    ins_l = [torch.randn(sum(m[0]), 3, generator=gen) for m in rm]
    olds = [torch.randn(sum(m[1]), 3, 4, generator=gen) for m in rm]
    olds_l = [torch.randn(sum(m[1]), 3, generator=gen) for m in rm]
    for t in ins_l + olds_l:
        if t.numel():
            t[torch.rand(t.shape, generator=gen) < 0.25] = float("-inf")
    results = {}
    for op, acc, pull in itertools.product(("sum", "avg", "lse"), (True, False), (True, False)):
        got, got_l = [o.clone() for o in olds], [t.clone() for t in olds_l]
        bufs = [torch.full((cap * 12,), float("nan")) for _ in range(world)]
        bufs_l = [torch.full((cap * 3,), float("nan")) for _ in range(world)]
        table, addr = _addr_table(bufs)
        table_l, addr_l = _addr_table(bufs_l)
        lse_op = op == "lse"
        if pull:  # each rank stages its peer-bound rows in its own buffer: data, then lse rows
            stages = [torch.full((cap * 15,), float("nan")) for _ in range(world)]
            _, stage_addr = _addr_table(stages)
            for p in range(world):
                copy_chunks(ins[p], rbinds[p].table("stage", rb), out=stages[p])
                if lse_op:
                    copy_chunks(ins_l[p], rbinds[p].table("stage", 12), out=stages[p][cap * 12:])
            for p in range(world):  # after the barrier: fold straight from the peers' stages
                pull_reduce_rows(got[p], ins[p], rbinds[p].pull, op, acc_reduce=acc,
                                 peer_bufs_addr=stage_addr, peer_offset_bytes=0,
                                 output_lse=got_l[p] if lse_op else None,
                                 local_lse=ins_l[p] if lse_op else None, peer_lse_offset_bytes=cap * 12 * 4)
        else:
            for p in range(world):  # every contribution (own ones included) into the owner's buffer
                copy_chunks(ins[p], rbinds[p].table("push", rb), peer_bufs_addr=addr, peer_align_16=False)
                if lse_op:
                    copy_chunks(ins_l[p], rbinds[p].table("push", 12), peer_bufs_addr=addr_l,
                                peer_align_16=False)
            for p, pl in enumerate(rplans):  # after the barrier: one fold from the buffer
                n_recv = sum(pl.recv_counts)
                reduce_rows(got[p], bufs[p][:n_recv * 12].view(n_recv, 3, 4), pl.rmap, op, acc_reduce=acc,
                            output_lse=got_l[p] if lse_op else None,
                            recv_lse=bufs_l[p][:n_recv * 3].view(n_recv, 3) if lse_op else None)
        ref = ref_group_reduce(ins, olds, [m[0] for m in rm], [m[2] for m in rm], [m[1] for m in rm],
                               [m[3] for m in rm], op, acc_reduce=acc, input_lses=ins_l, output_lses=olds_l)
        ref_o = ref[0] if lse_op else ref
        for p in range(world):
            assert not torch.isnan(got[p]).any(), f"{op} acc={acc} pull={pull} rank {p}: NaN (a buffer row was read unset)"
            torch.testing.assert_close(got[p].double(), ref_o[p], rtol=1e-5, atol=1e-5)
            if lse_op:
                torch.testing.assert_close(got_l[p].double(), ref[1][p], rtol=1e-5, atol=1e-5)
        results[op, acc, pull] = got + got_l
    if os.environ.get("MAGI_GRPCOLL_KERNEL_BACKEND") == "triton":  # same kernel, same order: same bits
        for (op, acc, pull), got in results.items():
            if pull:
                assert all(torch.equal(a, b) for a, b in zip(got, results[op, acc, False])), (op, acc)


def test_native_data_path_under_interpreter():
    pytest.importorskip("triton")
    for fold in ("torch", "triton"):  # the folds as on CPU, and as on the GPU (Triton)
        env = dict(os.environ, TRITON_INTERPRET="1", MAGI_GRPCOLL_KERNEL_BACKEND=fold)
        proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "native data path ok" in proc.stdout


if __name__ == "__main__":  # the Triton interpreter run
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _rng, _gen = random.Random(11), torch.Generator().manual_seed(11)
    for _world in (2, 3, 4, 4):
        _simulate(_world, _rng, _gen)
    print("native data path ok")
