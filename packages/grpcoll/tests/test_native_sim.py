"""The native implementation's data path, simulated in one process on CPU.

Every rank's binding is built from the exchanged meta (the all_to_all / all_gather done by hand),
then the chunk-copy kernel (Triton interpreter) pushes each rank's rows into the other ranks'
"symmetric buffers" (plain CPU tensors, addressed through a table of raw pointers as on the GPU),
then each rank runs its post step. This checks the chunk tables, the self-rows-to-output shortcut,
the buffer-half offsets, the post copy and the reduce's push/stage split and its fold from where
each contribution lives (every op, with and without acc_reduce, pushing none, half or all of the
peer-bound rows) against the definition and, bit for bit, against the a2a-v fold; and the cast's
copy-engine path (whole runs copied as row slices); symmetric
memory, streams and the barrier are left to the GPU test.
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


@pytest.mark.parametrize("seed", range(4))
def test_build_chunks_matches_a_row_by_row_reference(seed):
    """Runs merged row by row, then cut every max_rows from each run's start (any order of chunks)."""
    rng = random.Random(seed)
    n = rng.randint(1, 400)
    src, dst_rows, dst = [], [], []
    for i in range(n):  # mostly continuing runs, with breaks on either side or of destination
        cont = i > 0 and rng.random() < 0.85
        src.append(src[-1] + 1 if cont and rng.random() < 0.95 else rng.randint(0, 999))
        dst_rows.append(dst_rows[-1] + 1 if cont and rng.random() < 0.95 else rng.randint(0, 999))
        dst.append(dst[-1] if cont and rng.random() < 0.95 else rng.randint(-1, 2))
    for row_nbytes, max_bytes in [(16, 64), (16, 16), (1, None), (48, 1000)]:
        max_rows = n if max_bytes is None else max(1, max_bytes // row_nbytes)
        want, i = [], 0
        while i < n:
            j = i + 1
            while j < n and src[j] == src[j - 1] + 1 and dst_rows[j] == dst_rows[j - 1] + 1 and dst[j] == dst[i]:
                j += 1
            for a in range(i, j, max_rows):
                want.append([src[a], dst_rows[a], min(max_rows, j - a), dst[a]])
            i = j
        got = build_chunks(torch.tensor(src), torch.tensor(dst_rows), torch.tensor(dst), row_nbytes,
                           max_bytes=max_bytes).tolist()
        assert sorted(got) == sorted(want), (seed, row_nbytes, max_bytes)


def _addr_table(bufs):
    table = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    return table, table.data_ptr()


def _simulate(world: int, rng: random.Random, gen: torch.Generator) -> None:
    from magi_grpcoll.impl.native import (
        cast_binding,
        cast_positions_from_lists,
        cast_receive_positions,
        reduce_binding,
        reduce_counts_from_lists,
    )
    from magi_grpcoll.kernels import fold_from_sources, reduce_rows
    from magi_grpcoll.kernels.chunk_copy import copy_chunks, copy_runs, row_bytes
    from magi_grpcoll.plan import GroupCastPlan, GroupReducePlan

    meta = random_cast_meta(world, rng, max_len=7)
    plans = [GroupCastPlan.build(*meta.of(p), rank=p, world_size=world) for p in range(world)]
    # the binding's exchange: receiver d's slots from source r go back to r
    invs = [torch.split(cast_receive_positions(pl), list(pl.recv_counts)) for pl in plans]
    cap = max(pl.output_len for pl in plans)
    exchanged = [torch.cat([invs[d][p] for d in range(world)]) for p in range(world)]
    binds = [cast_binding(pl, exchanged[p], cap) for p, pl in enumerate(plans)]
    # plans given every rank's lists derive the same meta locally (no exchange, no host sync)
    group = [meta.of(p) for p in range(world)]
    for p in range(world):
        pos, c = cast_positions_from_lists(GroupCastPlan.build(*meta.of(p), rank=p, world_size=world,
                                                               group_lists=group))
        assert torch.equal(pos, exchanged[p]) and c == cap, f"local cast meta of rank {p}"
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
    # the copy-engine path: the same runs, unsplit, as row-slice copies into the peers' regions
    outs = [torch.full_like(o, float("nan")) for o in outs]
    bufs = [torch.full_like(b, float("nan")) for b in bufs]
    regions = [b[half * cap * 12:(half + 1) * cap * 12].view(cap, 12) for b in bufs]
    for p in range(world):
        copy_runs(xs[p].view(-1, 12), binds[p].runs("push"), out=outs[p].view(-1, 12),
                  peer_views={q: regions[q] for q in range(world) if q != p})
    for p in range(world):
        copy_runs(regions[p], binds[p].runs("post"), out=outs[p].view(-1, 12), peer_views={})
    for p in range(world):
        assert torch.equal(outs[p], ref[p]), f"copy-engine cast rank {p}"

    rm = reduce_meta_of(meta)
    rplans = [GroupReducePlan.build(*rm[p], rank=p, world_size=world) for p in range(world)]
    counts = torch.tensor([list(pl.send_counts) for pl in rplans], dtype=torch.int64)
    for p in range(world):  # locally, from every rank's lists: built directly or as a cast's transpose
        direct = GroupReducePlan.build(*rm[p], rank=p, world_size=world, group_lists=rm)
        transposed = GroupCastPlan.build(*meta.of(p), rank=p, world_size=world, group_lists=group).transpose()
        assert torch.equal(reduce_counts_from_lists(direct), counts), f"local reduce meta of rank {p}"
        assert torch.equal(reduce_counts_from_lists(transposed), counts), f"transposed reduce meta of rank {p}"
    ins = [torch.randn(sum(m[0]), 3, 4, generator=gen) for m in rm]
    ins_l = [torch.randn(sum(m[0]), 3, generator=gen) for m in rm]
    olds = [torch.randn(sum(m[1]), 3, 4, generator=gen) for m in rm]
    olds_l = [torch.randn(sum(m[1]), 3, generator=gen) for m in rm]
    for t in ins_l + olds_l:
        if t.numel():
            t[torch.rand(t.shape, generator=gen) < 0.25] = float("-inf")
    results = {}
    for frac, op, acc in itertools.product((0.0, 0.5, 1.0), ("sum", "avg", "lse"), (True, False)):
        rbinds = [reduce_binding(pl, counts, frac) for pl in rplans]
        assert len({b.regions for b in rbinds}) == 1  # every rank lays its buffer out alike
        n_recv, n_stage = rbinds[0].regions
        # one float32 buffer per rank: receive, stage, lse receive, lse stage regions
        offs = [0, n_recv * 12, n_recv * 12 + n_stage * 12, n_recv * 15 + n_stage * 12]
        bufs = [torch.full((n_recv * 15 + n_stage * 15,), float("nan")) for _ in range(world)]
        _, addr = _addr_table(bufs)
        got, got_l = [o.clone() for o in olds], [t.clone() for t in olds_l]
        lse_op = op == "lse"
        for p in range(world):  # pushes into the owners' receive regions, stage copies into its own
            copy_chunks(ins[p], rbinds[p].table("send", rb), out=bufs[p][offs[1]:], peer_bufs_addr=addr,
                        dst_offset_bytes=offs[0] * 4, peer_align_16=False)
            if lse_op:
                copy_chunks(ins_l[p], rbinds[p].table("send", 12), out=bufs[p][offs[3]:], peer_bufs_addr=addr,
                            dst_offset_bytes=offs[2] * 4, peer_align_16=False)
        for p in range(world):  # after the barrier: one fold reading every contribution where it lives
            base = bufs[p].data_ptr()
            fold_from_sources(got[p], ins[p], rbinds[p].sources, op, acc_reduce=acc, received_addr=base,
                              peer_bufs_addr=addr, peer_offset_bytes=offs[1] * 4,
                              output_lse=got_l[p] if lse_op else None, local_lse=ins_l[p] if lse_op else None,
                              received_lse_addr=base + offs[2] * 4, peer_lse_offset_bytes=offs[3] * 4)
        ref = ref_group_reduce(ins, olds, [m[0] for m in rm], [m[2] for m in rm], [m[1] for m in rm],
                               [m[3] for m in rm], op, acc_reduce=acc, input_lses=ins_l, output_lses=olds_l)
        ref_o = ref[0] if lse_op else ref
        for p in range(world):
            assert not torch.isnan(got[p]).any(), f"{op} acc={acc} push {frac} rank {p}: a row was read unset"
            torch.testing.assert_close(got[p].double(), ref_o[p], rtol=1e-5, atol=1e-5)
            if lse_op:
                torch.testing.assert_close(got_l[p].double(), ref[1][p], rtol=1e-5, atol=1e-5)
        results[frac, op, acc] = got + got_l
        if frac == 0.5:  # the a2a-v implementation's fold (plain receive buffer, same kernel backend): same bits
            recvs = [torch.cat([ins[r][_sent_rows(rplans[r], p)] for r in range(world)]) for p in range(world)]
            recvs_l = [torch.cat([ins_l[r][_sent_rows(rplans[r], p)] for r in range(world)]) for p in range(world)]
            for p, pl in enumerate(rplans):
                o, lo = olds[p].clone(), olds_l[p].clone()
                reduce_rows(o, recvs[p], pl.rmap, op, acc_reduce=acc, output_lse=lo if lse_op else None,
                            recv_lse=recvs_l[p] if lse_op else None)
                assert torch.equal(o, got[p]) and (not lse_op or torch.equal(lo, got_l[p])), (op, acc, p)
    for (frac, op, acc), got in results.items():  # the split between push and pull changes no bit
        assert all(torch.equal(a, b) for a, b in zip(got, results[0.0, op, acc])), (frac, op, acc)


def _sent_rows(plan, dst: int) -> torch.Tensor:
    """Input rows ``plan``'s rank sends to ``dst``, in send order (an a2a-v send block)."""
    rows = plan.send_rows if plan.send_rows is not None else torch.arange(plan.input_len)
    start = sum(plan.send_counts[:dst])
    return rows[start:start + plan.send_counts[dst]]


def test_native_data_path_under_interpreter():
    pytest.importorskip("triton")
    # the Triton folds, as on the GPU (the torch fold is checked against the definition elsewhere)
    env = dict(os.environ, TRITON_INTERPRET="1", MAGI_GRPCOLL_KERNEL_BACKEND="triton")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "native data path ok" in proc.stdout


if __name__ == "__main__":  # the Triton interpreter run
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _rng, _gen = random.Random(11), torch.Generator().manual_seed(11)
    for _world in (2, 3, 4, 4):
        _simulate(_world, _rng, _gen)
    print("native data path ok")
