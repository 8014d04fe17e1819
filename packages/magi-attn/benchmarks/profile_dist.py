"""Where one calc_attn spends its time: host (cProfile) and device (torch.profiler), rank 0.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        packages/magi-attn/benchmarks/profile_dist.py --mask varlen_causal --seqlen 32768

Uses bench_dist's masks and setup (bf16, hq=hk=16, d=128, chunk 512); the kernel backend and
group collectives follow the environment (MAGI_ATTENTION_FA4_BACKEND, MAGI_ATTENTION_NATIVE_GRPCOLL).
Prints: host ms per forward and per backward (no sync inside), device ms per forward and backward, the top host
functions of five forwards, and the top device kernels of two forward+backward passes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from bench_dist import MASKS, build_mask  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mask", choices=MASKS, default="varlen_causal")
    ap.add_argument("--seqlen", type=int, default=32768)
    ap.add_argument("--chunk-size", type=int, default=512)
    args = ap.parse_args(argv)
    from magi_attention.api import calc_attn, compute_pad_size, dispatch, magi_attn_flex_key

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    T, h, d = args.seqlen, 16, 128
    qr, kr, tm = build_mask(args.mask, T, window=max(1, T // 8), doc_base=max(8, min(256, T // 128)),
                            doc_cap=T // 4)
    gen = torch.Generator(device="cuda").manual_seed(1234 + T)
    q, k, v, do = (torch.randn(T, h, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    key = magi_attn_flex_key(qr, kr, tm, T, T, h, h, d, compute_pad_size(T, world, args.chunk_size),
                             args.chunk_size, dist.group.WORLD)
    lq, lk, lv = (dispatch(x, key).detach().requires_grad_(True) for x in (q, k, v))
    ldo = dispatch(do, key)

    def step():
        out = calc_attn(lq, lk, lv, key)[0]
        out.backward(ldo)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    n = 10
    t0 = time.perf_counter()
    for _ in range(n):
        out = calc_attn(lq, lk, lv, key)[0]
    host_fwd = (time.perf_counter() - t0) / n
    torch.cuda.synchronize()
    host_bwd = 0.0
    for _ in range(n):
        out = calc_attn(lq, lk, lv, key)[0]
        t0 = time.perf_counter()
        out.backward(ldo)
        host_bwd += (time.perf_counter() - t0) / n
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    ev[0].record()
    for _ in range(n):
        out = calc_attn(lq, lk, lv, key)[0]
    ev[1].record()
    for _ in range(n):
        step()
    ev[2].record()
    torch.cuda.synchronize()
    fwd_ms = ev[0].elapsed_time(ev[1]) / n
    step_ms = ev[1].elapsed_time(ev[2]) / n
    if rank == 0:
        print(f"{args.mask} T={T} world={world}: host {host_fwd * 1e3:.3f} ms/forward, {host_bwd * 1e3:.3f} ms/backward (no sync); back to back: "
              f"forward {fwd_ms:.3f} ms, forward+backward {step_ms:.3f} ms", flush=True)
    prof = cProfile.Profile()
    dist.barrier()
    prof.enable()
    for _ in range(5):
        out = calc_attn(lq, lk, lv, key)[0]
    prof.disable()
    torch.cuda.synchronize()
    if rank == 0:
        pstats.Stats(prof).sort_stats("tottime").print_stats(22)
    from torch.profiler import ProfilerActivity, profile

    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as tp:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    if rank == 0:
        print(tp.key_averages().table(sort_by="cuda_time_total", row_limit=18), flush=True)
    del out
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
