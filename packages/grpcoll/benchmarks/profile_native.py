"""Where the native group_cast / group_reduce spend their time, stage by stage (2 GPUs).

Times, on the KV-shaped traffic of bench_grpcoll, each stage of the native path alone: the cast's
push (chunk copy into peer buffers plus the self rows' local copy), the barrier, the cast's post
copy, the reduce's send (pushes and stage copies) and fold, and the whole ops (the reduce at
several push/pull splits); the raw all_to_all_single of the same bytes; and the host time to issue one op
(launched eagerly and replayed from a CUDA graph).
Milliseconds per call.

    python packages/grpcoll/benchmarks/profile_native.py [--tokens 16384 65536]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from bench_grpcoll import ROW, _meta, _time, cuda_graphs  # noqa: E402


def _profile_one(tokens, rank, world, dev):
    from magi_grpcoll import GroupCastPlan
    from magi_grpcoll.impl import get_impl
    from magi_grpcoll.impl.native import NativeImpl
    from magi_grpcoll.kernels import fold_from_sources
    from magi_grpcoll.kernels.chunk_copy import copy_chunks, row_bytes

    native = get_impl("native")
    in_sizes, out_sizes, dsts, srcs = _meta(world, tokens, tokens)
    plan = GroupCastPlan.build(in_sizes[rank], out_sizes[rank], dsts[rank], srcs[rank], rank=rank,
                               world_size=world, device=dev)
    x = torch.randn((tokens, *ROW), device=dev, dtype=torch.bfloat16)
    out = torch.empty((plan.output_len, *ROW), device=dev, dtype=torch.bfloat16)
    send = torch.empty((sum(plan.send_counts), *ROW), device=dev, dtype=torch.bfloat16)
    recv = torch.empty((sum(plan.recv_counts), *ROW), device=dev, dtype=torch.bfloat16)
    plan.cast(x, out, impl="native").wait_post_process()  # bind, allocate
    rplan = plan.transpose()
    src = torch.randn((plan.output_len, *ROW), device=dev, dtype=torch.bfloat16)
    red = torch.zeros_like(x)
    b = native._bind_cast(plan, None)
    rb = row_bytes(x)
    buf, hdl, peer_bufs, offs, _, _ = native._regions(None, dev, [b.regions[0] * rb])
    region = buf[offs[0]:offs[0] + b.regions[0] * rb].view(b.regions[0], rb)
    push, post = b.table("push", rb), b.table("post", rb)
    remote, local = push[push[:, 3] >= 0].contiguous(), push[push[:, 3] < 0].contiguous()
    t = {
        "push": _time(lambda: copy_chunks(x, push, out=out, peer_bufs_addr=peer_bufs,
                                          dst_offset_bytes=offs[0])),
        "push remote only": _time(lambda: copy_chunks(x, remote, out=out, peer_bufs_addr=peer_bufs,
                                                      dst_offset_bytes=offs[0])),
        "push self only": _time(lambda: copy_chunks(x, local, out=out)),
        "barrier": _time(lambda: hdl.barrier(channel=0)),
        "post copy": _time(lambda: copy_chunks(region, post, out=out)),
        "cast": _time(lambda: plan.cast(x, out, async_op=True, impl="native").wait_post_process()),
        "raw a2a": _time(lambda: dist.all_to_all_single(recv, send, list(plan.recv_counts),
                                                        list(plan.send_counts))),
    }
    for frac in (0.0, 0.125, 0.25, 0.375, 0.5, 1.0):  # share of the reduce's peer-bound rows pushed (the rest pulled)
        native.reduce_push_fraction = frac
        t[f"reduce push {frac}"] = _time(lambda: rplan.reduce(src, red, async_op=True, impl="native").wait_post_process())
    native.reduce_push_fraction = NativeImpl.reduce_push_fraction
    rbind = native._bind_reduce(rplan, None)
    send = rbind.table("send", rb)
    rbuf, _, rpeers, roffs, _, _ = native._regions(None, dev, [n * rb for n in rbind.regions])  # the grown buffer
    t["reduce: send"] = _time(lambda: copy_chunks(src, send, out=rbuf[roffs[1]:], peer_bufs_addr=rpeers,
                                                  dst_offset_bytes=roffs[0]))
    for be, nw in ((1024, 4), (2048, 4), (2048, 8), (512, 2), (512, 4)):  # fold launch shapes
        t[f"reduce: fold b{be} w{nw}"] = _time(lambda be=be, nw=nw: fold_from_sources(
            red, src, rbind.sources, "sum", acc_reduce=True, received_addr=rbuf.data_ptr() + roffs[0],
            peer_bufs_addr=rpeers, peer_offset_bytes=roffs[1], block_elems=be, num_warps=nw))
    from magi_grpcoll.impl.native import _on_comm_stream

    def host(fn, n=50, busy=False):  # host seconds to issue fn once, GPU idle (or busy) at the start
        torch.cuda.synchronize()
        if busy:  # a ~0.1 s kernel ahead of the calls: issuing them must not wait for the GPU
            torch.cuda._sleep(200_000_000)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = (time.perf_counter() - t0) / n
        torch.cuda.synchronize()
        return dt

    for _ in range(2):  # (a second round: the first one warms caches)
        t["host: barrier"] = host(lambda: hdl.barrier(channel=0))
        t["host: comm stream, empty"] = host(lambda: _on_comm_stream(dev, [], lambda: None))
        t["host: fold launch"] = host(lambda: fold_from_sources(
            red, src, rbind.sources, "sum", acc_reduce=True, received_addr=rbuf.data_ptr() + roffs[0],
            peer_bufs_addr=rpeers, peer_offset_bytes=roffs[1]), n=10)
        for graphs in (False, True):  # launches issued one by one, then replayed from a CUDA graph
            tag = "graphs" if graphs else "eager"
            with cuda_graphs(graphs):
                t[f"host: cast {tag} (5 batches, median)"] = sorted(
                    host(lambda: plan.cast(x, out, async_op=True, impl="native"), n=10) for _ in range(5))[2]
                t[f"host: reduce {tag} (5 batches, median)"] = sorted(
                    host(lambda: rplan.reduce(src, red, async_op=True, impl="native"), n=10) for _ in range(5))[2]
    tiny = push[:1].contiguous()
    t["host busy: copy_chunks"] = host(lambda: copy_chunks(x, tiny, out=out, peer_bufs_addr=peer_bufs,
                                                           dst_offset_bytes=offs[0]), busy=True)
    t["host busy: barrier"] = host(lambda: hdl.barrier(channel=0), busy=True)
    t["host busy: cast"] = host(lambda: plan.cast(x, out, async_op=True, impl="native"), n=10, busy=True)
    t["host busy: reduce"] = host(lambda: rplan.reduce(src, red, async_op=True, impl="native"), n=10, busy=True)
    t["host: copy_chunks launch"] = host(lambda: copy_chunks(x, tiny, out=out, peer_bufs_addr=peer_bufs,
                                                             dst_offset_bytes=offs[0]), n=200)
    prof = None
    if rank == 0 and os.environ.get("PROFILE_NATIVE_CPROFILE") == "1":
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    for _ in range(200):  # every rank issues the same ops (a rank that skipped one would hang its peer)
        plan.cast(x, out, async_op=True, impl="native").wait_post_process()
        rplan.reduce(src, red, async_op=True, impl="native").wait_post_process()
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    torch.cuda.synchronize()
    if rank == 0:
        print(f"tokens {tokens}: push chunks {push.shape[0]}, post chunks {post.shape[0]}, "
              f"capacity {b.regions[0]} rows, buffer {buf.numel() / 1e6:.0f} MB, offs {offs}, recv "
              f"{recv.numel() * 2 / 1e6:.0f} MB; ms/call: " + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in t.items()),
              flush=True)


def _worker(rank, world, port, tokens_list):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    for tokens in tokens_list:
        _profile_one(tokens, rank, world, torch.device("cuda", rank))
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536])
    args = ap.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, args.tokens), nprocs=2, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
