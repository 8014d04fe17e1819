"""Plan-building time: make_dispatch_meta plus make_dist_attn_plan for one rank and for all ranks.

Masks of 1M padded tokens (chunk 512): varlen-causal with 4096 long-tailed documents, the same
documents with a 4096-token sliding window, and a shared-question mask (each sample: a causal
question, then answers that see the whole question and themselves causally). Prints a markdown
table with date, machine and command. Run:

    .venv/bin/python packages/solver/benchmarks/bench_plan.py [--cp 8 32 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np
from magi_solver import OverlapParams, make_dispatch_meta, make_dist_attn_plan

TOTAL = 1 << 20
CHUNK = 512
NUM_DOCS = 4096


def long_tailed_lengths(rng: np.random.Generator, n: int, total: int) -> list[int]:
    """n positive lengths summing to total, Pareto-distributed (a few very long documents)."""
    raw = rng.pareto(1.2, n) + 1.0
    lens = np.maximum(1, np.floor(raw / raw.sum() * total)).astype(np.int64)
    lens[np.argmax(lens)] += total - lens.sum()
    assert lens.min() >= 1 and lens.sum() == total
    return lens.tolist()


def varlen_causal(rng):
    lens = long_tailed_lengths(rng, NUM_DOCS, TOTAL)
    cu = np.concatenate([[0], np.cumsum(lens)]).tolist()
    qr = [(cu[i], cu[i + 1]) for i in range(NUM_DOCS)]
    return qr, list(qr), [1] * NUM_DOCS


def sliding_window(rng, window: int = 4096):
    """Per document, q sees k in [q - window, q]: CAUSAL head rows plus a BI_CAUSAL band."""
    lens = long_tailed_lengths(rng, NUM_DOCS, TOTAL)
    qr, kr, ts = [], [], []
    s = 0
    for ln in lens:
        e = s + ln
        head = min(ln, window)
        qr.append((s, s + head)), kr.append((s, s + head)), ts.append(1)
        if ln > window:
            qr.append((s + window, e)), kr.append((s, e)), ts.append(3)
        s = e
    return qr, kr, ts


def shared_question(rng, answers: int = 3):
    """NUM_DOCS // (answers + 1) samples: question causal; answer i -> question FULL + itself CAUSAL."""
    samples = NUM_DOCS // (answers + 1)
    lens = long_tailed_lengths(rng, samples, TOTAL)
    qr, kr, ts = [], [], []
    s = 0
    for ln in lens:
        parts = max(1, min(answers + 1, ln))
        cuts = np.linspace(s, s + ln, parts + 1).astype(np.int64).tolist()
        q0, q1 = cuts[0], cuts[1]
        qr.append((q0, q1)), kr.append((q0, q1)), ts.append(1)
        for a in range(1, parts):
            a0, a1 = cuts[a], cuts[a + 1]
            if a1 == a0:
                continue
            qr.append((a0, a1)), kr.append((q0, q1)), ts.append(0)
            qr.append((a0, a1)), kr.append((a0, a1)), ts.append(1)
        s += ln
    return qr, kr, ts


def best_of(repeat: int, fn, *args) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cp", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--degree", type=int, default=2)
    ap.add_argument("--mode", default="static", choices=["static", "dynamic"])
    ap.add_argument("--alg", default="uniform", choices=["uniform", "greedy"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    masks = {
        "varlen-causal": varlen_causal(rng),
        "sliding-window 4k": sliding_window(rng),
        "shared-question": shared_question(rng),
    }
    ov = OverlapParams(degree=args.degree, mode=args.mode, alg=args.alg)
    print(f"# bench_plan — {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, Python {platform.python_version()}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"total {TOTAL} tokens, chunk {CHUNK}, overlap {args.mode} degree {args.degree} ({args.alg}), best of {args.repeat}\n")
    print("| mask | slices | cp | dispatch ms | plan 1 rank ms | dispatch+plan 1 rank ms | plan all ranks ms "
          "| all ranks ms / rank | remote KV / rank (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (qr, kr, ts) in masks.items():
        for cp in args.cp:
            meta = make_dispatch_meta(qr, kr, ts, TOTAL, CHUNK, cp)
            t_disp = best_of(args.repeat, make_dispatch_meta, qr, kr, ts, TOTAL, CHUNK, cp)
            t_one = best_of(args.repeat, make_dist_attn_plan, qr, kr, ts, meta, ov, [0])
            plan = make_dist_attn_plan(qr, kr, ts, meta, ov)
            t_all = best_of(args.repeat, make_dist_attn_plan, qr, kr, ts, meta, ov)
            remote = np.mean([sum(e - s for s, e in plan.rank_plan(r).remote_k_ranges) for r in range(cp)])
            print(f"| {name} | {len(qr)} | {cp} | {t_disp:.1f} | {t_one:.1f} | {t_disp + t_one:.1f} "
                  f"| {t_all:.1f} | {t_all / cp:.2f} | {remote:.0f} |")


if __name__ == "__main__":
    main()
