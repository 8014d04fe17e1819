"""What a training step with a new mask costs, phase by phase, and where it waits for the GPU.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        packages/magi-attn/benchmarks/new_mask_cost.py --seqlen 32768 --layers 4

Varlen training packs its documents anew every step, so every step brings a new key, a new runtime and
calls seen once. Such a step overlaps well only if its host work (key, dispatch, runtime build, kernel
metadata, plan binding) queues without waiting for the GPU: every host-device sync on that path drains
the queue, and the host work after it runs exposed. This tool runs steps with a new document order each
(bench_dist's varlen causal mask, ``order_seed`` = step) and prints, on rank 0:

- each phase's host ms, timed alone (a device sync before and after): key, dispatch, the first
  forward layer (which builds the runtime), the other layers, the backward;
- the host-device syncs of one step by phase and by the call site in our packages that asked for them
  (``torch.cuda.set_sync_debug_mode``), so each can be removed or justified.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import os
import pstats
import re
import statistics
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from _common import leaf, pin_cpus  # noqa: E402
from bench_dist import build_mask, dispatch_config, doc_law  # noqa: E402
from magi_attention.testing.syncs import OUR_PACKAGES, HostSyncs  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlen", type=int, default=32768)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--dispatch-alg", default="cost_aware", help="as bench_dist.py's")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after 3 warm-ups)")
    ap.add_argument("--cprofile", type=int, default=40, metavar="N",
                    help="also cProfile the timed steps on rank 0 and print the N functions of most own "
                         "time and of our packages' most cumulative time (0: off)")
    ap.add_argument("--profile-dir", default=None, metavar="DIR",
                    help="instead, cProfile each phase of the timed steps on rank 0 apart and write "
                         "DIR/<phase>.prof (pstats files, to read with python -m pstats)")
    ap.add_argument("--pin-cpus", action="store_true",
                    help="pin each rank to its block of the host's CPUs (as bench_dist.py's)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("new_mask_cost: needs CUDA (it counts host-device syncs)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if a.pin_cpus:
        pin_cpus()
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    from magi_attention.api import DistAttnConfig, calc_attn, compute_pad_size, dispatch, magi_attn_flex_key

    T, hq, d = a.seqlen, 16, 128
    dev = torch.device("cuda", local)
    gen = torch.Generator(device=dev).manual_seed(7)
    q, k, v = (leaf(torch.randn(T, hq, d, device=dev, dtype=torch.bfloat16, generator=gen)) for _ in range(3))
    make_mask = functools.partial(build_mask, "varlen_causal", T, window=T // 8, **doc_law(T))
    pad = compute_pad_size(T, world, a.chunk_size)
    dcfg = DistAttnConfig(dispatch_config=dispatch_config(a.dispatch_alg))
    times: dict[str, list[float]] = collections.defaultdict(list)
    syncs = HostSyncs()

    def drain():  # the phases' own syncs are not counted
        with syncs.paused():
            torch.cuda.synchronize()

    by_phase = collections.defaultdict(cProfile.Profile) if a.profile_dir and rank == 0 else None

    def phase(name, fn, timed):
        syncs.phase = name
        drain()
        prof = by_phase[name] if by_phase is not None and timed else None
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()  # host time of the phase: what it issues and every wait inside
        if prof:
            prof.disable()
        drain()
        if timed:
            times[name].append((t1 - t0) * 1e3)
        return out

    def step(i, timed):
        key = phase("key", lambda: magi_attn_flex_key(*make_mask(order_seed=i + 1), T, T, hq, hq, d, pad,
                                                      a.chunk_size, dist.group.WORLD, dcfg), timed)
        lq, lk, lv = phase("dispatch", lambda: [dispatch(t, key) for t in (q, k, v)], timed)
        x = phase("forward, layer 1", lambda: calc_attn(lq, lk, lv, key)[0], timed)

        def rest(x=x):  # each layer on K/V of its own, as bench_dist --fresh-masks (its own addresses)
            for _ in range(a.layers - 1):
                x = calc_attn(x, lk.clone(), lv.clone(), key)[0]
            return x

        x = phase(f"forward, layers 2-{a.layers}", rest, timed) if a.layers > 1 else x
        phase("backward", lambda: x.backward(torch.ones_like(x)), timed)
        for t in (q, k, v):
            t.grad = None

    for i in range(3):
        step(i, False)
    prof = cProfile.Profile() if a.cprofile and rank == 0 and not a.profile_dir else None
    if prof:
        prof.enable()
    for i in range(3, 3 + a.steps):
        step(i, True)
    if prof:
        prof.disable()
    with syncs:  # one more step, counting its syncs
        step(3 + a.steps, False)
    if rank == 0:
        print(f"[new_mask_cost] T={T} world={world} layers={a.layers} dispatch={a.dispatch_alg} "
              f"steps={a.steps}{' cpus pinned' if a.pin_cpus else ''}; host ms per phase, each timed alone (median):")
        for name, ts in times.items():
            print(f"  {name:22s} {statistics.median(ts):8.2f}")
        print(f"[new_mask_cost] host-device syncs of one step: {sum(syncs.counts.values())}")
        for (ph, site), n in sorted(syncs.counts.items()):
            print(f"  {ph:22s} {n:4d}  {site}")
        if by_phase:
            os.makedirs(a.profile_dir, exist_ok=True)
            for name, p in by_phase.items():
                p.dump_stats(os.path.join(a.profile_dir, re.sub(r"\W+", "_", name).strip("_") + ".prof"))
            print(f"[new_mask_cost] per-phase profiles in {a.profile_dir}")
        if prof:
            st = pstats.Stats(prof)
            st.sort_stats("tottime").print_stats(a.cprofile)
            st.sort_stats("cumulative").print_stats("|".join(OUR_PACKAGES), a.cprofile)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
