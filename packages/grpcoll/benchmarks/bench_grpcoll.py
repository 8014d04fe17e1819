"""Bandwidth of group_cast / group_reduce on KV-shaped traffic vs raw NCCL all_to_all_single.

Each rank holds T tokens of K and V (8 heads x 128, bf16; the two groups travel as one [T, 2, 8, 128]
tensor) cut into 1k-token splits, each sent to a random non-empty set of ranks (self included),
as context-parallel attention does. The baseline moves the same bytes with one all_to_all_single
(no pre/post pass). Bandwidth = bytes received per rank / time (mean of timed iterations, after
warm-up; CUDA events).

    python packages/grpcoll/benchmarks/bench_grpcoll.py [--tokens 16384 ...] [--out DIR]   # 2 GPUs

The table (also written to DIR/bench_grpcoll.md) carries the same-run ratios the targets name:
native / a2a-v and native / raw all_to_all_single, for cast and reduce (native replays its launches
from CUDA graphs, the default); and eager / graphs, the native ops' bandwidth launched one by one
(MAGI_GRPCOLL_CUDA_GRAPHS=0) over their bandwidth from graphs; and engines / kernel, the native
cast's bandwidth with its rows moved by the copy engines over the chunk-copy kernel, both measured
in the same process (the "native" columns use whichever ``--copy-engine`` picks, engines by default).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TOKENS = [16384, 65536, 131072]
SPLIT = 1024
ROW = (2, 8, 128)  # K/V groups x heads x head_dim


def _meta(world, tokens, seed):
    rng = random.Random(seed)
    in_sizes = [[SPLIT] * (tokens // SPLIT) for _ in range(world)]
    dsts = [[sorted(rng.sample(range(world), rng.randint(1, world))) for _ in s] for s in in_sizes]
    out_sizes, src_index = [], []
    for d in range(world):
        order = [r for r in range(world) for i in range(len(in_sizes[r])) if d in dsts[r][i]]
        src_index.append(order)
        out_sizes.append([SPLIT] * len(order))
    return in_sizes, out_sizes, dsts, src_index


WARMUP = int(os.environ.get("BENCH_GRPCOLL_WARMUP", "5"))  # calls before timing, per op and size


@contextlib.contextmanager
def cuda_graphs(on: bool):
    """Native ops replayed from CUDA graphs (on, the default) or launched one by one, within the block."""
    before = os.environ.get("MAGI_GRPCOLL_CUDA_GRAPHS")
    os.environ["MAGI_GRPCOLL_CUDA_GRAPHS"] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MAGI_GRPCOLL_CUDA_GRAPHS")
        else:
            os.environ["MAGI_GRPCOLL_CUDA_GRAPHS"] = before


@contextlib.contextmanager
def copy_engines(on: bool):
    """Native casts move rows with the copy engines (on) or the chunk-copy kernel, within the block
    (the setting is part of the native op's graph key, so both can be timed in one process)."""
    from magi_grpcoll.impl import native

    before = native.COPY_ENGINE_CASTS
    native.COPY_ENGINE_CASTS = on
    try:
        yield
    finally:
        native.COPY_ENGINE_CASTS = before


def _time(fn, iters=20, warmup=None, repeats=5):
    """Seconds per call: the median over ``repeats`` timed runs of ``iters`` back-to-back calls (one
    run at 16k tokens lasts ~3 ms, so a single one moves with host jitter)."""
    for _ in range(WARMUP if warmup is None else warmup):
        fn()
    torch.cuda.synchronize()
    dist.barrier()
    runs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) / iters / 1e3)
    return sorted(runs)[len(runs) // 2]


def _bench_one(tokens, rank, world, dev):
    from magi_grpcoll import GroupCastPlan

    in_sizes, out_sizes, dsts, srcs = _meta(world, tokens, tokens)
    plan = GroupCastPlan.build(in_sizes[rank], out_sizes[rank], dsts[rank], srcs[rank], rank=rank,
                               world_size=world, device=dev)
    rplan = plan.transpose()
    x = torch.randn((tokens, *ROW), device=dev, dtype=torch.bfloat16)
    out = torch.empty((plan.output_len, *ROW), device=dev, dtype=torch.bfloat16)
    red = torch.zeros_like(x)
    send = torch.empty((sum(plan.send_counts), *ROW), device=dev, dtype=torch.bfloat16)
    recv = torch.empty((sum(plan.recv_counts), *ROW), device=dev, dtype=torch.bfloat16)
    nbytes = recv.numel() * recv.element_size()
    t_cast = _time(lambda: plan.cast(x, out, async_op=True).wait_post_process())
    t_red = _time(lambda: rplan.reduce(out, red, async_op=True).wait_post_process())
    native = {}
    for graphs in (False, True):  # launched one by one, then (the default) replayed from CUDA graphs
        try:
            with cuda_graphs(graphs):
                native[graphs] = (
                    _time(lambda: plan.cast(x, out, async_op=True, impl="native").wait_post_process()),
                    _time(lambda: rplan.reduce(out, red, async_op=True, impl="native").wait_post_process()))
        except Exception as e:  # noqa: BLE001 - report, keep the other columns
            print(f"rank {rank}: native failed: {type(e).__name__}: {e}", file=sys.stderr)
            native[graphs] = (float("nan"), float("nan"))
    (t_ecast, t_ered), (t_ncast, t_nred) = native[False], native[True]
    from magi_grpcoll.impl.native import COPY_ENGINE_CASTS as engines  # the path t_ncast took

    with copy_engines(not engines):  # the cast's other copy path, from graphs, in this process
        by_path = {engines: t_ncast, not engines: _time(
            lambda: plan.cast(x, out, async_op=True, impl="native").wait_post_process())}
    t_raw = _time(lambda: dist.all_to_all_single(recv, send, list(plan.recv_counts),
                                                 list(plan.send_counts)))
    return (tokens, nbytes, t_cast, t_red, t_ncast, t_nred, t_raw, t_ecast, t_ered, by_path[True], by_path[False])


def _worker(rank, world, port, q, tokens_list, copy_engine=None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if copy_engine is not None:
        from magi_grpcoll.impl import native

        native.COPY_ENGINE_CASTS = bool(copy_engine)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    dev = torch.device("cuda", rank)
    rows = [_bench_one(tokens, rank, world, dev) for tokens in tokens_list]
    if rank == 0:
        q.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def _table(rows) -> list[str]:
    gbs = lambda b, t: b / t / 1e9  # noqa: E731
    lines = ["| tokens/rank | MB recv/rank | a2av cast | a2av reduce | native cast | native reduce | raw a2a "
             "| native/a2av cast | native/a2av reduce | native/raw cast | native/raw reduce "
             "| eager/graphs cast | eager/graphs reduce | engines/kernel cast |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for tokens, nbytes, tc, tr, tnc, tnr, traw, tec, ter, t_engines, t_kernel in rows:
        bw = [gbs(nbytes, t) for t in (tc, tr, tnc, tnr, traw)]
        ratios = [bw[2] / bw[0], bw[3] / bw[1], bw[2] / bw[4], bw[3] / bw[4], tnc / tec, tnr / ter,
                  t_kernel / t_engines]
        lines.append(f"| {tokens} | {nbytes / 1e6:.1f} | " + " | ".join(f"{b:.0f}" for b in bw) + " | "
                     + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=TOKENS, help="tokens per rank")
    ap.add_argument("--out", default=None, help="folder for bench_grpcoll.md")
    ap.add_argument("--copy-engine", type=int, choices=(0, 1), default=None,
                    help="native casts through the copy engines (1, the default) or the chunk-copy kernel (0)")
    args = ap.parse_args(argv)
    world = min(torch.cuda.device_count(), 2) if torch.cuda.is_available() else 0
    if world < 2:
        print("bench_grpcoll: needs 2 CUDA devices; found", world)
        return 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world, port, q, args.tokens, args.copy_engine)) for r in range(world)]
    for p in procs:
        p.start()
    rows = q.get(timeout=600)
    for p in procs:
        p.join()
    head = (f"card: {torch.cuda.get_device_name(0)} x{world}; date: {datetime.date.today()}; commit: "
            f"{os.environ.get('GIT_COMMIT', 'unknown')}; command: "
            f"{' '.join([os.path.basename(sys.executable)] + sys.argv)}; torch {torch.__version__}; GB/s = bytes "
            "received per rank / time")
    text = "\n".join([head, ""] + _table(rows)) + "\n"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_grpcoll.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
