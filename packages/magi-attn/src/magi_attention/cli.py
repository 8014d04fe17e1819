"""`magi-attn demo`: spawn N ranks, run key -> dispatch -> calc_attn -> undispatch fwd+bwd, and
check the result against single-device flex_flash_attn_func on the full sequence.

CPU/gloo by default (fp32, torch kernel backend); GPUs/NCCL (bf16) when CUDA devices exist.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

__all__ = ["main", "demo_rank", "build_mask"]

MASKS = ("full", "causal", "varlen-causal", "sliding-window", "block-causal", "shared-question")


def build_mask(kind: str, T: int):
    """(q_ranges, k_ranges, type codes) for a named demo mask over T tokens."""
    from magi_attention.api.functools import cu_seqlens_slices

    if kind == "full":
        return [(0, T)], [(0, T)], [0]
    if kind == "causal":
        return [(0, T)], [(0, T)], [1]
    docs = [0, T // 2, T // 2 + T // 8, T // 2 + T // 4, T]
    if kind == "varlen-causal":
        qs, ks, ts, _, _ = cu_seqlens_slices(docs, docs, causal=True)
        return qs, ks, ts
    if kind == "sliding-window":
        qs, ks, ts, _, _ = cu_seqlens_slices([0, T], [0, T], window_size=(T // 8, 0))
        return qs, ks, ts
    if kind == "block-causal":
        b = max(1, T // 8)
        starts = list(range(0, T, b))
        return ([(s, min(s + b, T)) for s in starts], [(0, min(s + b, T)) for s in starts],
                [0] * len(starts))
    qlen = T // 4
    qs, ks, ts = [(0, qlen)], [(0, qlen)], [1]
    a = (T - qlen) // 3
    bounds = [qlen, qlen + a, qlen + 2 * a, T]
    for s, e in zip(bounds, bounds[1:]):
        qs += [(s, e), (s, e)]
        ks += [(0, qlen), (s, e)]
        ts += [0, 1]
    return qs, ks, ts


def demo_rank(rank: int, world: int, cfg: dict) -> dict:
    from magi_attention.api import (
        DistAttnConfig,
        OverlapConfig,
        calc_attn,
        compute_pad_size,
        dispatch,
        flex_flash_attn_func,
        magi_attn_flex_key,
        undispatch,
    )

    cuda = cfg["backend"] == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    T, hq, hk, d, chunk = cfg["seqlen"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["chunk"]
    qr, kr, tm = build_mask(cfg["mask"], T)
    torch.manual_seed(0)
    q = torch.randn(T, hq, d, device=dev, dtype=dtype, requires_grad=True)
    k = torch.randn(T, hk, d, device=dev, dtype=dtype, requires_grad=True)
    v = torch.randn(T, hk, d, device=dev, dtype=dtype, requires_grad=True)
    do = torch.randn(T, hq, d, device=dev, dtype=dtype)
    times = {}

    def tick(name, t0):
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        times[name] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pad = compute_pad_size(T, world, chunk)
    key = magi_attn_flex_key(qr, kr, tm, T, T, hq, hk, d, pad, chunk, dist.group.WORLD,
                             DistAttnConfig(overlap_config=OverlapConfig(degree=cfg["degree"])))
    tick("key", t0)
    t0 = time.perf_counter()
    lq, lk, lv = dispatch(q, key), dispatch(k, key), dispatch(v, key)
    tick("dispatch", t0)
    t0 = time.perf_counter()
    lout, _meta = calc_attn(lq, lk, lv, key)
    tick("calc_attn fwd", t0)
    t0 = time.perf_counter()
    out = undispatch(lout, key)
    tick("undispatch", t0)
    t0 = time.perf_counter()
    (out.float() * do.float()).sum().backward()
    tick("backward", t0)

    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    qr_t = torch.tensor(qr, dtype=torch.int32, device=dev)
    kr_t = torch.tensor(kr, dtype=torch.int32, device=dev)
    tm_t = torch.tensor(tm, dtype=torch.int32, device=dev)
    ref, _ = flex_flash_attn_func(q2, k2, v2, qr_t, kr_t, tm_t)
    (ref.float() * do.float()).sum().backward()
    errs = {name: (a.float() - b.float()).abs().max().item() for name, a, b in
            (("out", out, ref), ("dq", q.grad, q2.grad), ("dk", k.grad, k2.grad),
             ("dv", v.grad, v2.grad))}
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr

    rt = dist_attn_runtime_dict_mgr.get_mgr(key).runtime
    stats = getattr(rt, "plan_stats", None)
    if stats is not None:  # QO comm: q and kv tokens this rank receives from others
        recv = int(stats["per_rank_comm"][dist.get_rank()])
    else:  # KV-only: every remote stage's receive buffer
        recv = sum(int(s.num_recv_tokens) for s in rt.stages)
    return {"errs": errs, "times": times, "recv_tokens": recv, "stages": rt.num_stages,
            "shard": lq.shape[0]}


def _demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="magi-attn demo", description=__doc__)
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--mask", choices=MASKS, default="causal")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--degree", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--cpu", action="store_true", help="force gloo on CPU even if CUDA exists")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.cpu and torch.cuda.device_count() >= 1
    backend = "nccl" if cuda else "gloo"
    if not cuda:
        os.environ.setdefault("MAGI_ATTENTION_SDPA_BACKEND", "1")
    cfg = {"seqlen": a.seqlen, "mask": a.mask, "heads": a.heads,
           "kv_heads": a.kv_heads or a.heads, "head_dim": a.head_dim, "degree": a.degree,
           "chunk": a.chunk_size, "backend": backend}
    from magi_attention.testing.dist import run_distributed

    env = {k: v for k, v in os.environ.items() if k.startswith("MAGI_ATTENTION_")}
    t0 = time.perf_counter()
    res = run_distributed(demo_rank, a.world_size, cfg, backend=backend, env=env, timeout=600)
    wall = time.perf_counter() - t0
    print(f"magi-attn demo: world={a.world_size} backend={backend} mask={a.mask} "
          f"seqlen={a.seqlen} heads={cfg['heads']}/{cfg['kv_heads']} head_dim={a.head_dim} "
          f"degree={a.degree} stages={res[0]['stages']} wall={wall:.1f}s")
    print("max |error| vs single-device flex_flash_attn_func:")
    for name in res[0]["errs"]:
        print(f"  {name:4s} {max(r['errs'][name] for r in res):.3e}")
    print("time per phase (rank 0):")
    for name, t in res[0]["times"].items():
        print(f"  {name:14s} {t * 1e3:9.1f} ms")
    kv_recv = sum(r["recv_tokens"] for r in res)
    allgather = a.world_size * (a.world_size - 1) * res[0]["shard"]
    ratio = kv_recv / allgather if allgather else 0.0
    print(f"comm volume: {kv_recv} K/V tokens received in total vs {allgather} for an "
          f"all-gather of K/V ({ratio:.1%})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: magi-attn demo [--world-size N] [--seqlen T] [--mask ...] [--heads H] "
              "[--head-dim D] [--degree K]")
        print("       magi-attn show-mask [--mask ... | --slices QS:QE/KS:KE/TYPE,...] [--seqlen T] "
              "[--world-size N] [-o mask.png]")
        return 0
    if argv[0] == "show-mask":
        from magi_attention.visualize import main as show_mask_main

        return show_mask_main(argv[1:])
    if argv[0] != "demo":
        print(f"magi-attn: unknown command {argv[0]!r}; available: demo, show-mask",
              file=sys.stderr)
        return 2
    return _demo(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
