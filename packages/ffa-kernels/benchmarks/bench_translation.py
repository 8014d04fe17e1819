"""Host time of the fa4 backend's mask translation (slices -> FA4's native form or block lists).

    python packages/ffa-kernels/benchmarks/bench_translation.py [--seqlens 16384 32768]

Why: a mask is translated once per distinct slices, but varlen training packs its documents anew
every step, so every step translates its masks again on the host before their first kernel. Prints a
markdown table: the best of ``--repeats`` translations per mask, the FA4 form chosen, and the tensors
a call hands FA4 built (``device_tensors``: the block lists where the mask needs them). CPU only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from magi_ffa.backends.fa4.block_sparse import build_slice_block_mask


def _varlen_causal(T: int, rng) -> tuple:
    """Long-tailed documents (many short, a few long) filling T rows, one causal slice each."""
    cuts, left = [0], T
    while left > 0:
        n = int(min(left, max(16, rng.pareto(1.2) * max(8, T // 128))))
        cuts.append(cuts[-1] + n)
        left -= n
    pairs = [[a, b] for a, b in zip(cuts[:-1], cuts[1:])]
    return pairs, pairs, [1] * len(pairs)


def masks(T: int, rng) -> dict:
    window = T // 8
    return {
        "varlen_causal": _varlen_causal(T, rng),
        # a causal sliding window given as one slice per row (after a causal first window)
        "sliding_window_per_row": ([[0, window]] + [[s, s + 1] for s in range(window, T)],
                           [[0, window]] + [[s - window + 1, s + 1] for s in range(window, T)],
                           [1] + [0] * (T - window)),
        "block_causal": ([[s, s + 2048] for s in range(0, T, 2048)], [[0, s + 2048] for s in range(0, T, 2048)],
                         [0] * (T // 2048)),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqlens", type=int, nargs="+", default=[16384, 32768])
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print("| T | mask | FA4 form | ms |\n|---|---|---|---|")
    for T in a.seqlens:
        for name, (qr, kr, tm) in masks(T, rng).items():
            best = float("inf")
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                m = build_slice_block_mask(np.array(qr), np.array(kr), np.array(tm), T, T, (128, 128))
                _ = m.device_tensors  # what a call hands FA4 (block lists built here where needed)
                best = min(best, time.perf_counter() - t0)
            form = "native" if m.native is not None else "block lists"
            print(f"| {T} | {name} | {form} | {best * 1e3:.2f} |", flush=True)


if __name__ == "__main__":
    main()
