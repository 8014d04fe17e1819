"""Host time of the pure-host pieces a new key costs, on any machine (no GPU, no process group).

    python packages/magi-attn/benchmarks/new_key_host_cost.py [--seqlens 32768 65536] [--cp 2]

Varlen training brings a new mask every step (tuning.md, "A new mask every step"), and the step is
host-bound on the lent GPU hosts. ``new_mask_cost.py`` times its phases there, launches included;
this tool times, per key, what needs no GPU, so a change to it can be measured on the development
machine:

- the cost-aware dispatch choice (``solve_dispatch``, ~40 candidate plans);
- the runtime build of rank 0: every rank's plan (native collectives on), the runtime and its
  stages' comm plans (``group_lists``);
- the native bindings of those plans (cast and reduce, their chunk tables, the fold's sources), with
  the meta derived from every rank's lists;
- the fa4 translation of each non-empty call of rank 0 (row intervals, FA4's native form).

Masks: bench_dist's long-tailed varlen causal documents, a new document order per key. Medians over
``--keys`` keys, after one untimed pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_dist import build_mask, doc_law  # noqa: E402

#: rows of K/V at the benchmark's heads and head dim (16 x 128, bf16): what the chunk tables are cut by
ROW_BYTES = 16 * 128 * 2


def _median_ms(fn, items) -> float:
    for item in items[:1]:  # one untimed pass (imports, caches of the code, not of the masks)
        fn(item)
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _one_length(T: int, cp: int, chunk: int, keys: int) -> tuple[float, float, float, float]:
    """(choice, runtime build, native bindings, fa4 translation) median ms per key at length T."""
    import torch
    from magi_attention import _compat
    from magi_attention.config import CostAwareDispatchAlg, DistAttnConfig
    from magi_attention.env import snapshot_flags
    from magi_attention.meta.dispatch_choice import solve_dispatch
    from magi_attention.runtime import dist_attn
    from magi_attention.runtime.runtime_mgr import _overlap_params
    from magi_ffa.backends.fa4.block_sparse import build_slice_block_mask
    from magi_grpcoll.impl.native import (
        cast_binding,
        cast_positions_from_lists,
        reduce_binding,
        reduce_counts_from_lists,
    )

    cpu = torch.device("cpu")
    overlap, alg, flags = _overlap_params(DistAttnConfig()), CostAwareDispatchAlg(), snapshot_flags()
    masks = [build_mask("varlen_causal", T, window=0, seed=1, order_seed=i + 1, **doc_law(T)) for i in range(keys)]
    metas, runtimes = [], []

    def choose(mask):
        metas.append(solve_dispatch(alg, *mask, T, chunk, cp, overlap))

    def build(item):
        mask, meta = item
        plan = _compat.solver.make_dist_attn_plan(*mask, meta, overlap)
        group = [plan.rank_plan(r) for r in range(cp)]
        rt = dist_attn.DistAttnRuntime(group[0], plan.num_stages, None, flags, cpu, group_plans=group)
        runtimes.append((rt, [rt._stage_plans(s, cpu) for s in range(plan.num_stages)]))

    def bind(item):
        for cast, reduce in item[1]:
            pos, cap = cast_positions_from_lists(cast)
            b = cast_binding(cast, pos, cap)
            b.table("push", ROW_BYTES)
            b.table("post", ROW_BYTES)
            reduce_binding(reduce, reduce_counts_from_lists(reduce), 0.25).table("send", ROW_BYTES)

    def translate(item):
        rt = item[0]
        for i, c in enumerate([rt.host_calc, *rt.stage_calcs]):
            if not c.empty:
                sk = T // cp if i == 0 else int(rt.stages[i - 1].num_recv_tokens)
                build_slice_block_mask(c.q_ranges.numpy(), c.k_ranges.numpy(), c.types.numpy(), T // cp, sk)

    t_choice = _median_ms(choose, masks)
    t_build = _median_ms(build, list(zip(masks, metas[1:])))  # metas[0]: the untimed pass's
    items = runtimes[1:]
    return t_choice, t_build, _median_ms(bind, items), _median_ms(translate, items)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[32768, 65536])
    ap.add_argument("--cp", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--keys", type=int, default=9)
    a = ap.parse_args(argv)
    os.environ["MAGI_ATTENTION_NATIVE_GRPCOLL"] = "1"  # the runtime plans every rank (group_lists)
    from magi_attention.runtime import dist_attn

    # the runtime asks its group for rank and size: rank 0 of a group of cp, without a process group
    dist_attn.dist.get_rank = lambda group=None: 0
    dist_attn.dist.get_world_size = lambda group=None: a.cp
    print(f"[new_key_host_cost] cp={a.cp} chunk={a.chunk_size} keys={a.keys}; ms per key (median)")
    print("| T | dispatch choice | runtime build | native bindings | fa4 translation | total |")
    print("|---|---|---|---|---|---|")
    for T in a.seqlens:
        times = _one_length(T, a.cp, a.chunk_size, a.keys)
        cells = " | ".join(f"{t:.2f}" for t in (*times, sum(times)))
        print(f"| {T} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
