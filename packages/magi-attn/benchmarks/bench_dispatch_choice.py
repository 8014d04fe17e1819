"""Host time of the cost-aware dispatch choice, the part of a new key that grows with the mask.

    python packages/magi-attn/benchmarks/bench_dispatch_choice.py [--seqlens ...] [--cps ...] [--dump FILE]

Why: varlen training packs its batches anew, so every step brings a new mask and a new key, and the
key's dispatch is chosen on the host before the step's first kernel. ``CostAwareDispatchAlg`` plans
every candidate (algorithms x chunk factors, ~58 at cp 2) and weighs each by area and by tiles.
Times ``solve_dispatch`` for causal, sliding window, four long-tailed varlen causal draws (as
bench_dist draws them) and 40 random slices of all four mask types, at each length and cp, against
the default ``MinHeapDispatchAlg`` in the same run. ``--dump FILE`` writes every choice (partitions)
and its planned tile costs, so two versions of the code can be compared bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_dist import build_mask, doc_law  # noqa: E402


def masks(T: int, rng) -> list[tuple[str, tuple]]:
    """The named masks of one length (random slices drawn from ``rng``)."""
    out = [("causal", build_mask("causal", T, window=0, doc_base=0, doc_cap=0)),
           ("sliding_window", build_mask("sliding_window", T, window=T // 8, doc_base=0, doc_cap=0))]
    for seed in range(4):
        out.append((f"varlen_causal_{seed}", build_mask("varlen_causal", T, window=0, seed=seed, **doc_law(T))))
    n = 40
    qs, ks = (np.sort(rng.integers(0, T, size=(n, 2)), axis=1) for _ in range(2))
    qs[:, 1] += 1
    ks[:, 1] += 1
    out.append(("random_slices", (qs.tolist(), ks.tolist(), rng.integers(0, 4, size=n).tolist())))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqlens", type=int, nargs="+", default=[32768, 65536, 131072])
    p.add_argument("--cps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--dump", default=None, help="write every choice and its planned costs here")
    a = p.parse_args(argv)

    from magi_attention import _compat
    from magi_attention.api import DistAttnConfig
    from magi_attention.config import CostAwareDispatchAlg, MinHeapDispatchAlg
    from magi_attention.meta import dispatch_choice
    from magi_attention.runtime.runtime_mgr import _overlap_params

    params = _overlap_params(DistAttnConfig())
    rng = np.random.default_rng(0)
    lines, total = [], {"cost_aware": 0.0, "min_heap": 0.0}
    print("| T | cp | mask | cost_aware ms | min_heap ms |\n|---|---|---|---|---|")
    for T in a.seqlens:
        for cp in a.cps:
            for name, m in masks(T, rng):
                ms = {}
                for label, alg in (("cost_aware", CostAwareDispatchAlg()), ("min_heap", MinHeapDispatchAlg())):
                    t0 = time.perf_counter()
                    meta = dispatch_choice.solve_dispatch(alg, *m, T, a.chunk_size, cp, params)
                    ms[label] = (time.perf_counter() - t0) * 1e3
                    total[label] += ms[label]
                    if label == "cost_aware" and a.dump:
                        plan = _compat.solver.make_dist_attn_plan(*m, meta, params)
                        lines.append(f"{T} {cp} {name} {[list(p) for p in meta.partitions]} "
                                     f"{dispatch_choice.planned_time(plan, cp)!r}")
                print(f"| {T} | {cp} | {name} | {ms['cost_aware']:.1f} | {ms['min_heap']:.2f} |", flush=True)
    print(f"\ntotal: cost_aware {total['cost_aware'] / 1e3:.2f} s, min_heap {total['min_heap'] / 1e3:.2f} s")
    if a.dump:
        Path(a.dump).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
