"""Dynamic solver (QO comm) vs the static KV-only plan: solve time, max per-rank area, comm volume.

Masks of 1M tokens: varlen-causal with long-tailed documents, block-causal (64 blocks, each block
sees itself and every earlier block in full), shared question (per sample a causal question, then
answers seeing the whole question and themselves causally) and a causal sliding window (4096) over
the varlen documents. For each cp size, the dispatch (min_heap) is built once; then
make_dynamic_plan (binary_greedy and ncq, ranks=[0]: what one rank runs) and make_dist_attn_plan
(KV-only, overlap disabled, all ranks) are timed. Comm volume is the total number of tokens that
cross ranks, q + kv, and "weighted" counts a kv token twice (K and V) and a q token hq/hkv times.
Prints a markdown table with date, machine and command. Run:

    .venv/bin/python packages/solver/benchmarks/bench_dynamic.py [--cp 8 32 64] [--chunk 2048]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np
from magi_solver import OverlapParams, make_dispatch_meta, make_dist_attn_plan, make_dynamic_plan

TOTAL = 1 << 20
NUM_DOCS = 2048


def long_tailed_lengths(rng: np.random.Generator, n: int, total: int) -> list[int]:
    """n positive lengths summing to total, Pareto-distributed (a few very long documents)."""
    raw = rng.pareto(1.2, n) + 1.0
    lens = np.maximum(1, np.floor(raw / raw.sum() * total)).astype(np.int64)
    lens[np.argmax(lens)] += total - lens.sum()
    return lens.tolist()


def varlen_causal(rng):
    cu = np.concatenate([[0], np.cumsum(long_tailed_lengths(rng, NUM_DOCS, TOTAL))]).tolist()
    qr = [(cu[i], cu[i + 1]) for i in range(NUM_DOCS)]
    return qr, list(qr), [1] * NUM_DOCS


def block_causal(rng, blocks: int = 64):
    b = TOTAL // blocks
    qr = [(i * b, (i + 1) * b) for i in range(blocks)]
    kr = [(0, (i + 1) * b) for i in range(blocks)]
    return qr, kr, [0] * blocks


def shared_question(rng, samples: int = 256, answers: int = 3):
    qr, kr, ts = [], [], []
    s = 0
    size = TOTAL // samples
    for _ in range(samples):
        q_len = int(size * rng.uniform(0.2, 0.5))
        a_len = (size - q_len) // answers
        qr.append((s, s + q_len)), kr.append((s, s + q_len)), ts.append(1)
        pos = s + q_len
        for a in range(answers):
            e = s + size if a == answers - 1 else pos + a_len
            qr.append((pos, e)), kr.append((s, s + q_len)), ts.append(0)
            qr.append((pos, e)), kr.append((pos, e)), ts.append(1)
            pos = e
        s += size
    return qr, kr, ts


def sliding_window(rng, window: int = 4096):
    qr, kr, ts = [], [], []
    s = 0
    for ln in long_tailed_lengths(rng, NUM_DOCS, TOTAL):
        e = s + ln
        head = min(ln, window)
        qr.append((s, s + head)), kr.append((s, s + head)), ts.append(1)
        if ln > window:
            qr.append((s + window, e)), kr.append((s + 1, e)), ts.append(3)
        s = e
    return qr, kr, ts


MASKS = {
    "varlen causal (long tail)": varlen_causal,
    "block causal": block_causal,
    "shared question": shared_question,
    "sliding window 4096": sliding_window,
}


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cp", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--heads-q", type=int, default=8)
    ap.add_argument("--heads-kv", type=int, default=8)
    args = ap.parse_args()
    qw = args.heads_q / args.heads_kv
    print(
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}  "
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    )
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"tokens {TOTAL}, chunk {args.chunk}, heads q/kv {args.heads_q}/{args.heads_kv}\n")
    print(
        "| mask | cp | solve s (BG) | solve s (NCQ) | plan s (KV-only) | feasible | max area BG / KV-only "
        "| comm tokens BG (q+kv) | comm tokens KV-only | weighted comm BG / KV-only |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, make in MASKS.items():
        qr, kr, ts = make(np.random.default_rng(0))
        for cp in args.cp:
            meta = make_dispatch_meta(qr, kr, ts, TOTAL, args.chunk, cp)
            kw = dict(num_heads_q=args.heads_q, num_heads_kv=args.heads_kv, ranks=[0])
            bg, t_bg = timed(make_dynamic_plan, qr, kr, ts, meta, alg="binary_greedy", **kw)
            _, t_ncq = timed(make_dynamic_plan, qr, kr, ts, meta, alg="ncq", **kw)
            st, t_st = timed(make_dist_attn_plan, qr, kr, ts, meta, OverlapParams(enable=False))
            st_area, st_comm = [], 0
            for r in range(cp):
                rp = st.rank_plan(r)
                st_area.append(rp.host_calc.area + sum(s.calc.area for s in rp.stages))
                st_comm += sum(e - s for s, e in rp.remote_k_ranges)
            cq, ckv = sum(bg.per_rank_comm_q), sum(bg.per_rank_comm_kv)
            w_bg, w_st = qw * cq + 2 * ckv, 2 * st_comm
            print(
                f"| {name} | {cp} | {t_bg:.2f} | {t_ncq:.2f} | {t_st:.2f} | {bg.feasible} "
                f"| {max(bg.per_rank_area) / max(st_area):.3f} | {cq}+{ckv} | {st_comm} "
                f"| {w_bg / max(w_st, 1):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
