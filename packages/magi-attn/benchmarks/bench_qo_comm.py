"""QO-comm (dynamic solver) vs KV-only (static plan): end-to-end calc_attn time per mask.

Launch (NCCL on GPUs; ``--device cpu`` runs gloo for a smoke test):

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        packages/magi-attn/benchmarks/bench_qo_comm.py [--quick] [--device cpu] --out DIR

For each mask (block causal, shared question, varlen causal with long-tailed documents) and total
length T, the same inputs run twice: ``kv`` (MAGI_ATTENTION_QO_COMM unset, default overlap) and
``qo`` (MAGI_ATTENTION_QO_COMM=1: binary_greedy plan, one remote stage). Timed: forward and
backward of calc_attn (dispatch untimed); each number is the slowest rank's median. Also reported:
the plan's max per-rank area and max received tokens (qo from ``runtime.plan_stats``; kv from
the static plan's stage buffers). Results: CSV and a markdown table under --out (rank 0).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from _common import doc_lengths, measure

MASKS = ("block_causal", "shared_question", "varlen_causal")
MODES = ("kv", "qo")


def build_mask(kind: str, T: int, seed: int = 0):
    """(q_ranges, k_ranges, type codes) of a named mask over T tokens."""
    if kind == "block_causal":  # each block sees every earlier block and itself
        b = max(1, T // 16)
        starts = range(0, T, b)
        return ([(i, min(i + b, T)) for i in starts], [(0, min(i + b, T)) for i in starts],
                [0] * len(starts))
    if kind == "shared_question":  # a causal prompt, answers that see it and themselves
        ql = T // 8
        qr, kr, ts, start = [(0, ql)], [(0, ql)], [1], ql
        for a in doc_lengths(T - ql, seed, max(1, T // 64), T // 4):
            qr += [(start, start + a), (start, start + a)]
            kr += [(0, ql), (start, start + a)]
            ts += [0, 1]
            start += a
        return qr, kr, ts
    if kind == "varlen_causal":
        cu = np.concatenate([[0], np.cumsum(doc_lengths(T, seed, max(1, T // 64), T // 2))])
        rs = [(int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)]
        return rs, list(rs), [1] * len(rs)
    raise ValueError(f"build_mask(): unknown mask {kind!r}; expected one of {MASKS}")


def plan_numbers(runtime, world: int, device: torch.device) -> tuple[int, int]:
    """(max per-rank area, max per-rank received tokens) of the runtime's plan."""
    stats = getattr(runtime, "plan_stats", None)
    if stats is not None:
        return max(stats["per_rank_area"]), max(stats["per_rank_comm"])
    area = runtime.host_calc.area + sum(c.area for c in runtime.stage_calcs)
    recv = sum(int(s.num_recv_tokens) for s in runtime.stages)
    t = torch.tensor([area, recv], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(gathered, t)
    g = torch.stack(gathered).cpu()
    return int(g[:, 0].max()), int(g[:, 1].max())


def run_one(mode: str, mask, T: int, args, device):
    from magi_attention.api import calc_attn, compute_pad_size, dispatch, magi_attn_flex_key
    from magi_attention.config import DistAttnConfig
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr

    if mode == "qo":
        os.environ["MAGI_ATTENTION_QO_COMM"] = "1"
    else:
        os.environ.pop("MAGI_ATTENTION_QO_COMM", None)
    try:
        world = dist.get_world_size()
        qr, kr, tm = mask
        torch.manual_seed(0)
        dt = torch.bfloat16 if device.type == "cuda" else torch.float32
        q = torch.randn(T, args.hq, args.d, device=device, dtype=dt)
        k = torch.randn(T, args.hk, args.d, device=device, dtype=dt)
        v = torch.randn(T, args.hk, args.d, device=device, dtype=dt)
        do = torch.randn(T, args.hq, args.d, device=device, dtype=dt)
        t0 = time.perf_counter()
        key = magi_attn_flex_key(qr, kr, tm, T, T, args.hq, args.hk, args.d,
                                 compute_pad_size(T, world, args.chunk), args.chunk,
                                 dist.group.WORLD, DistAttnConfig())
        plan_s = time.perf_counter() - t0
        rt = dist_attn_runtime_dict_mgr.get_mgr(key).runtime
        max_area, max_recv = plan_numbers(rt, world, device)
        lq, lk, lv = (dispatch(x, key).detach().clone().requires_grad_() for x in (q, k, v))
        ldo = dispatch(do, key)
        f, b = measure(lambda: calc_attn(lq, lk, lv, key)[0], [lq, lk, lv], ldo, device,
                       args.warmup, args.repeats)
        return {"fwd_ms": f * 1e3, "bwd_ms": b * 1e3, "max_area": max_area,
                "max_recv_tokens": max_recv, "plan_s": plan_s}
    finally:
        os.environ.pop("MAGI_ATTENTION_QO_COMM", None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--seqlens", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--masks", nargs="+", default=list(MASKS), choices=MASKS)
    p.add_argument("--hq", type=int, default=16)
    p.add_argument("--hk", type=int, default=8)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="tiny shapes, 1 warmup, 2 repeats")
    p.add_argument("--out", default="bench_qo_comm_out")
    args = p.parse_args()
    if args.quick:
        args.seqlens, args.hq, args.hk, args.d, args.chunk = [1024], 4, 2, 64, 64
        args.warmup, args.repeats = 1, 2
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    for T in args.seqlens:
        for kind in args.masks:
            mask = build_mask(kind, T)
            for mode in MODES:
                r = run_one(mode, mask, T, args, device)
                rows.append({"mask": kind, "T": T, "mode": mode, **r})
                if rank == 0:
                    print(f"{kind:16s} T={T:7d} {mode}: fwd {r['fwd_ms']:9.3f} ms  bwd "
                          f"{r['bwd_ms']:9.3f} ms  max_area {r['max_area']}  max_recv "
                          f"{r['max_recv_tokens']}  plan {r['plan_s']:.3f} s", flush=True)
    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "bench_qo_comm.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        card = torch.cuda.get_device_name() if cuda else "cpu"
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = "?"
        lines = [f"# QO comm vs KV-only ({card} x{world}, {datetime.date.today()}, {commit})", "",
                 f"hq={args.hq} hk={args.hk} d={args.d} chunk={args.chunk}", "",
                 "| mask | T | kv fwd+bwd ms | qo fwd+bwd ms | speedup | kv max area | "
                 "qo max area | kv max recv | qo max recv |", "|---|---|---|---|---|---|---|---|---|"]
        by = {(r["mask"], r["T"], r["mode"]): r for r in rows}
        for T in args.seqlens:
            for kind in args.masks:
                a, b = by[(kind, T, "kv")], by[(kind, T, "qo")]
                ta, tb = a["fwd_ms"] + a["bwd_ms"], b["fwd_ms"] + b["bwd_ms"]
                lines.append(f"| {kind} | {T} | {ta:.3f} | {tb:.3f} | {ta / tb:.2f}x | "
                             f"{a['max_area']} | {b['max_area']} | {a['max_recv_tokens']} | "
                             f"{b['max_recv_tokens']} |")
        (out / "bench_qo_comm.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
