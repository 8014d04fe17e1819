"""Where one calc_attn spends its time: host (cProfile) and device (torch.profiler), rank 0.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        packages/magi-attn/benchmarks/profile_dist.py --mask varlen_causal --seqlen 32768

Uses bench_dist's masks and setup (bf16, hq=hk=16, d=128, chunk 512); the kernel backend and
group collectives follow the environment (MAGI_ATTENTION_FA4_BACKEND, MAGI_ATTENTION_NATIVE_GRPCOLL). With the
fa4 backend, whole calls replay from CUDA graphs by default: set MAGI_ATTENTION_CUDA_GRAPHS=0 to profile the
host path a call takes without them.
Prints: host ms per forward and per backward (no sync inside), device ms per forward and backward (back to
back, and one forward after a sync as bench_dist times it), the host paths of a forward and of a backward (us per
call by function, cumulative), and the top device kernels of two forward+backward passes. ``--stages`` adds,
on rank 0, each kernel call of the rank's plan (host stage, remote stages) timed alone, with its area,
TFLOP/s and, on the fa4 backend, the form FA4 runs it in (and, for a call of several slices, its
largest slice alone and the other slices); beside it the whole mask on one GPU, the efficiency
reference. Those calls are timed queued back to back, as the runtime issues them. ``--trace DIR``
writes each rank's device timeline as CSV and prints its summary (``timeline_summary.py``: compute
idle time, communication exposed vs under compute). ``--host-timers``
clocks the functions of every rank's host path (``_host_timers.py``, lighter than cProfile). ``--cat-kv``
runs the K/V casts on ``cat([k, v])`` (the path for a magi_grpcoll without list casts), for a
same-run comparison. ``--ffn-mult M`` puts bench_dist's feed-forward block (hidden M x the token width)
after each layer, and prints the blocks' own device time without attention beside the step's, so a
trace shows what the blocks cost inside the runtime's step against alone.
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
from _common import count_delta, feed_forward_layers, launch_counts, stack_layers  # noqa: E402
from bench_dist import MASKS, build_mask, dispatch_config, doc_law, mask_area  # noqa: E402

#: forward+backward steps under torch.profiler (the kernel table and the --trace timelines)
TRACED_STEPS = 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mask", choices=MASKS, default="varlen_causal")
    ap.add_argument("--seqlen", type=int, default=32768)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--dispatch-alg", default="min_heap", help="as bench_dist.py's")
    ap.add_argument("--stages", action="store_true", help="time each kernel call of rank 0's plan alone")
    ap.add_argument("--layers", type=int, default=1, help="calc_attn calls stacked per step, each with its "
                    "own K/V, as bench_dist's --layers (figures are per layer)")
    ap.add_argument("--host-rank", type=int, default=0, help="the rank whose host path is profiled and "
                    "printed (the ranks' plans differ, and so may their host time)")
    ap.add_argument("--host-timers", action="store_true", help="also clock the functions of the host path "
                    "(_host_timers.py; each rank prints its own table)")
    ap.add_argument("--cat-kv", action="store_true", help="cast cat([k, v]) instead of the list [k, v]")
    ap.add_argument("--ffn-mult", type=int, default=0, metavar="M", help="a feed-forward block after each "
                    "layer, as bench_dist's --ffn-mult (0: none)")
    ap.add_argument("--trace", metavar="DIR", help="write each rank's device timeline of the two profiled "
                    "forward+backward passes to DIR/timeline_<mask>_<T>_rank<r>.csv")
    args = ap.parse_args(argv)
    if args.layers < 1:
        raise SystemExit(f"profile_dist: --layers must be >= 1 (got {args.layers})")
    if args.ffn_mult < 0:
        raise SystemExit(f"profile_dist: --ffn-mult must be >= 0 (got {args.ffn_mult})")
    if args.cat_kv:
        from magi_attention.runtime import dist_attn

        dist_attn.cast_lists = lambda: False
    from magi_attention.api import DistAttnConfig, calc_attn, compute_pad_size, dispatch, magi_attn_flex_key

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    if not 0 <= args.host_rank < world:
        raise SystemExit(f"profile_dist: --host-rank must be in [0, {world}) (got {args.host_rank})")
    T, h, d = args.seqlen, 16, 128
    qr, kr, tm = build_mask(args.mask, T, window=max(1, T // 8), **doc_law(T))
    gen = torch.Generator(device="cuda").manual_seed(1234 + T)
    q, k, v, do = (torch.randn(T, h, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    key = magi_attn_flex_key(qr, kr, tm, T, T, h, h, d, compute_pad_size(T, world, args.chunk_size),
                             args.chunk_size, dist.group.WORLD,
                             DistAttnConfig(dispatch_config=dispatch_config(args.dispatch_alg)))
    lq, lk, lv = (dispatch(x, key).detach().requires_grad_(True) for x in (q, k, v))
    ldo = dispatch(do, key)
    L = args.layers
    blocks = (feed_forward_layers(L, h * d, args.ffn_mult, torch.device("cuda"), torch.bfloat16, seed=4321 + rank)
              if args.ffn_mult else None)
    fwd, leaves = stack_layers(lambda q_, k_, v_: calc_attn(q_, k_, v_, key)[0], lq, lk, lv, L, blocks)

    def step():  # grads cleared first, as bench_dist's steps: no accumulation adds in the timeline
        for t in leaves:
            t.grad = None
        fwd().backward(ldo)

    for _ in range(8):  # as bench_dist: the graphs (native and whole-call) are captured by then
        step()
    torch.cuda.synchronize()
    dist.barrier()
    n = 10
    counts0 = launch_counts()
    t0 = time.perf_counter()
    for _ in range(n):
        out = fwd()
    host_fwd = (time.perf_counter() - t0) / n / L
    torch.cuda.synchronize()
    host_bwd = 0.0
    for _ in range(n):
        out = fwd()
        t0 = time.perf_counter()
        out.backward(ldo)
        host_bwd += (time.perf_counter() - t0) / n / L
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    ev[0].record()
    for _ in range(n):
        out = fwd()
    ev[1].record()
    for _ in range(n):
        step()
    ev[2].record()
    torch.cuda.synchronize()
    fwd_ms = ev[0].elapsed_time(ev[1]) / n / L
    step_ms = ev[1].elapsed_time(ev[2]) / n / L
    alone_ms = single_forward_ms(fwd, n) / L
    hosts = [torch.zeros(2, dtype=torch.float64, device="cuda") for _ in range(world)]
    dist.all_gather(hosts, torch.tensor([host_fwd, host_bwd], dtype=torch.float64, device="cuda"))
    if rank == 0:
        host = "; ".join(f"rank {r} {float(t[0]) * 1e3:.3f} / {float(t[1]) * 1e3:.3f}" for r, t in enumerate(hosts))
        print(f"{args.mask} T={T} world={world}{f', per layer of {L}' if L > 1 else ''}: host ms per forward / backward (no sync): {host}; back to back: "
              f"forward {fwd_ms:.3f} ms, forward+backward {step_ms:.3f} ms; one forward after a sync (as bench_dist "
              f"times it): {alone_ms:.3f} ms", flush=True)
        print(f"launch counts of those steps (rank 0): {count_delta(counts0, launch_counts()) or 'none'}", flush=True)
    if blocks is not None:
        alone = blocks_alone_ms(blocks, lq, ldo, n)
        if rank == 0:
            print(f"the feed-forward blocks alone (no attention), per layer: forward {alone[0]:.3f} ms, "
                  f"forward+backward {alone[1]:.3f} ms", flush=True)
    if args.host_timers:
        print_host_timers(fwd, ldo, n, L, rank, world)
    if args.stages and rank == 0:
        print_stage_kernels(key, (q, k, v, do), (qr, kr, tm), (lq, lk, lv, ldo))
    prof = cProfile.Profile()
    dist.barrier()
    n_prof = 20
    prof.enable()
    for _ in range(n_prof):
        out = fwd()
    prof.disable()
    torch.cuda.synchronize()
    if rank == args.host_rank:
        print_host_breakdown(prof, n_prof * L, f"forward (rank {rank})")
    prof = cProfile.Profile()  # the backward's host path: what stands before its first kernels
    dist.barrier()
    for _ in range(n_prof):
        out = fwd()
        prof.enable()
        out.backward(ldo)
        prof.disable()
    torch.cuda.synchronize()
    if rank == args.host_rank:
        print_host_breakdown(prof, n_prof * L, f"backward (rank {rank})")
    from torch.profiler import ProfilerActivity, profile

    # the phases above ran other patterns (forwards alone), whose outputs lived at other addresses:
    # steps again first, so the traced ones replay what they captured instead of capturing anew
    counts0 = launch_counts()
    for _ in range(4):
        step()
    torch.cuda.synchronize()
    if rank == 0:
        print(f"launch counts of the steps before the traced ones (rank 0): "
              f"{count_delta(counts0, launch_counts()) or 'none'}", flush=True)
    counts0 = launch_counts()
    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as tp:
        for _ in range(TRACED_STEPS):  # each after a sync and a barrier, as bench_dist times a step
            torch.cuda.synchronize()
            dist.barrier()
            step()
        torch.cuda.synchronize()
    if rank == 0:
        print(f"launch counts of the traced steps (rank 0): {count_delta(counts0, launch_counts()) or 'none'}",
              flush=True)
        print(tp.key_averages().table(sort_by="cuda_time_total", row_limit=18), flush=True)
    if args.trace:
        from timeline_summary import read_timeline, report_lines, summarize

        path = os.path.join(args.trace, f"timeline_{args.mask}_{T}_rank{rank}.csv")
        write_timeline(tp, path)
        # the kinds per layer in the log itself: the CSVs are large and may not travel back
        print("\n".join(report_lines(summarize(read_timeline(path)), f"rank {rank} timeline ({path})",
                                      per=TRACED_STEPS * L, unit="layer")), flush=True)
    del out
    dist.barrier()
    dist.destroy_process_group()
    return 0


def print_host_timers(fwd, ldo, n: int, layers: int, rank: int, world: int) -> None:
    """Each rank's host path by function, clocked (not cProfile): per forward and per backward layer."""
    from _host_timers import HostTimers

    timers = HostTimers().install()
    tables = []
    try:
        for what in ("forward", "backward"):
            timers.reset()
            dist.barrier()
            for _ in range(n):
                timers.active = what == "forward"
                out = fwd()
                timers.active = what == "backward"
                if what == "backward":
                    out.backward(ldo)
                timers.active = False
            torch.cuda.synchronize()
            tables.append(timers.table(n * layers, f"{what} layer"))
    finally:
        timers.uninstall()
    for r in range(world):  # one rank at a time, so the tables do not interleave
        dist.barrier()
        if r == rank:
            print(f"rank {rank}:\n" + "\n".join(tables), flush=True)
    dist.barrier()


def blocks_alone_ms(blocks, x, dout, n: int) -> tuple[float, float]:
    """(forward ms, forward+backward ms) per block of ``blocks`` (feed_forward_layers') run back to back
    on a copy of ``x`` with no attention between them: what the blocks cost when nothing runs beside
    them."""
    after, _ = blocks
    leaf = x.detach().clone().requires_grad_(True)

    def run():
        y = leaf
        for block in after:
            y = block(y)
        return y

    for _ in range(3):
        run().backward(dout)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    ev[0].record()
    for _ in range(n):
        run()
    ev[1].record()
    for _ in range(n):
        run().backward(dout)
    ev[2].record()
    torch.cuda.synchronize()
    return ev[0].elapsed_time(ev[1]) / n / len(after), ev[1].elapsed_time(ev[2]) / n / len(after)


def single_forward_ms(fwd, n: int) -> float:
    """Median device time of one forward issued right after a sync and a barrier, as bench_dist
    times a step: the host path before the first kernel counts in full (back to back, it hides)."""
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        dist.barrier()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        ev[0].record()
        fwd()
        ev[1].record()
        torch.cuda.synchronize()
        times.append(ev[0].elapsed_time(ev[1]))
    return sorted(times)[len(times) // 2]


def print_host_breakdown(prof, n: int, what: str, top: int = 30) -> None:
    """The functions under the profiled calls (``what``: "forward" / "backward") by cumulative host
    time, in us per call (cProfile roughly doubles Python-heavy paths: read the shares, not the
    absolute figures)."""
    rows = []
    for (path, line, func), (_, calls, own, cum, _) in pstats.Stats(prof).stats.items():
        where = os.path.basename(path) if path != "~" else ""
        rows.append((cum, own, calls, f"{where}:{line}({func})" if where else func))
    rows.sort(reverse=True)
    print(f"host path of one {what} under cProfile ({n} {what}s), us per {what}:")
    print(f"{'cumulative':>11} {'own':>8} {'calls':>6}  function")
    for cum, own, calls, name in rows[:top]:
        print(f"{cum / n * 1e6:11.1f} {own / n * 1e6:8.1f} {calls / n:6.1f}  {name}")


def write_timeline(tp, path: str) -> None:
    """Every device kernel, copy and fill of a torch.profiler run as CSV rows (stream, start and
    duration in us from the first one, name, and when the host issued it): enough to see, per rank,
    which stream waited on what, and whether the device waited for the host."""
    import csv
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "trace.json")
        tp.export_chrome_trace(raw)
        with open(raw) as f:
            events = json.load(f)["traceEvents"]
    device = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    device.sort(key=lambda e: e["ts"])
    launched = {e["args"]["correlation"]: e["ts"] for e in events  # the host call that issued each one
                if e.get("ph") == "X" and e.get("cat") in ("cuda_runtime", "cuda_driver")
                and "correlation" in e.get("args", {})}
    t0 = device[0]["ts"] if device else 0.0
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stream", "start_us", "dur_us", "name", "launch_us"])
        for e in device:
            host = launched.get(e.get("args", {}).get("correlation"))
            w.writerow([e.get("args", {}).get("stream", e.get("tid")), f"{e['ts'] - t0:.1f}",
                        f"{e['dur']:.1f}", e["name"][:90], "" if host is None else f"{host - t0:.1f}"])


def _timed(fn, n: int = 20, queued: int = 10) -> float:
    """Median ms of ``fn`` over ``n`` samples (after 3 warm-ups), each the mean of ``queued`` calls
    issued back to back between two CUDA events: the queue stays full, as in the runtime, so a call's
    host time hides behind the kernels of the calls before it unless the call is host-bound. On a
    machine without CUDA (a dry run of the script's logic) one call per sample, by the host clock."""
    for _ in range(3):
        fn()
    cuda = torch.cuda.is_available()
    times = []
    for _ in range(n):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(queued):
                fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / queued)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[n // 2]


def _fa4_form(q, k, calc) -> str:
    """How FA4 runs one call's slices (``fa4_mask_form`` of the mask the backend translates them to)."""
    from magi_ffa.backends.base import FFAInputs
    from magi_ffa.backends.fa4 import slice_block_mask

    return fa4_mask_form(slice_block_mask(FFAInputs(q=q, k=k, v=k, q_ranges=calc.q_ranges, k_ranges=calc.k_ranges,
                                                    attn_type_map=calc.types, softmax_scale=1.0, softcap=0.0,
                                                    deterministic=False)))


def fa4_mask_form(mask) -> str:
    """A translated mask's FA4 form: its own causal/window/varlen masking, block lists, or native parts
    (decompose.py: row layers, or parts by slice type) in the directions that run them. Why the parts:
    a staircase remote stage is "block lists + mask fn" as one call but runs as native row layers."""
    from magi_ffa.backends.fa4 import decompose

    one_call = _native_form(mask.native) if mask.native is not None else \
        f"block lists{' + mask fn' if mask.has_partial else ''}"
    dirs = [d for d in ("fwd", "bwd") if mask.parts is not None and decompose.enabled(d, mask.parts_kind)]
    if not dirs:
        return one_call
    kind = {"rows": "row layers", "types": "parts by slice type"}[mask.parts_kind]
    parts = "; ".join(f"{p.covers[0]} x {p.covers[1]} {_native_form(p.mask.native)}" for p in mask.parts)
    rest = "" if len(dirs) == 2 else f", {'bwd' if dirs == ['fwd'] else 'fwd'} {one_call}"
    return f"{'+'.join(dirs)} {len(mask.parts)} {kind} ({parts}){rest}"


def _native_form(n) -> str:
    if n.varlen:
        return (f"varlen {'causal' if n.causal else 'full'} {n.cu_seqlens_q.numel() - 1} docs "
                f"(max q {n.max_seqlen_q}, max k {n.max_seqlen_k})")
    own = ("causal" if n.causal else "full" if n.window_left is None and n.window_right is None
           else f"window ({n.window_left}, {n.window_right})")
    return own if n.batch == 1 else f"batch of {n.batch} {own} docs"


def _largest_slice_and_rest(calc):
    """(name, (q_ranges, k_ranges, types)) of a call's largest-area slice and of the other slices, for
    a call of more than one slice: whether a slow call is one slow shape or the mix of shapes."""
    if calc.q_ranges.shape[0] < 2:
        return []
    lq = (calc.q_ranges[:, 1] - calc.q_ranges[:, 0]).long()
    lk = (calc.k_ranges[:, 1] - calc.k_ranges[:, 0]).long()
    big = int(torch.argmax(lq * lk))  # the bounding rectangle ranks the slices well enough here
    rest = torch.arange(calc.q_ranges.shape[0], device=calc.q_ranges.device) != big
    pick = lambda sel: (calc.q_ranges[sel], calc.k_ranges[sel], calc.types[sel])  # noqa: E731
    return [("largest slice alone", pick(slice(big, big + 1))), ("the other slices", pick(rest))]


def print_stage_kernels(key, global_qkvdo, global_mask, local_qkvdo) -> None:
    """Each kernel call of this rank's plan timed alone (forward, and backward through autograd),
    and the whole mask on one GPU: where the runtime's FA4 time goes, per stage."""
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr
    from magi_ffa import flex_flash_attn_func

    runtime = dist_attn_runtime_dict_mgr.get_mgr(key).runtime
    backend = runtime.backend
    h, d = global_qkvdo[0].shape[1:]

    def measure(q, k, v, do, qr, kr, tm):
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        fwd = _timed(lambda: flex_flash_attn_func(q, k, v, qr, kr, tm, backend=backend))
        out = flex_flash_attn_func(q, k, v, qr, kr, tm, backend=backend)[0]
        bwd = _timed(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
        return fwd, bwd

    rows = []
    gq, gk, gv, gdo = global_qkvdo
    area = mask_area(*global_mask)
    gqr, gkr, gtm = (torch.tensor(x, dtype=torch.int32, device=gq.device) for x in global_mask)
    rows.append(("whole mask, 1 GPU", area, *measure(gq, gk, gv, gdo, gqr, gkr, gtm), "-"))
    lq, lk, lv, ldo = local_qkvdo
    gen = torch.Generator(device=lq.device).manual_seed(7)
    calcs = [("host stage", runtime.host_calc, lk.shape[0])]
    calcs += [(f"remote stage {i}", c, int(st.num_recv_tokens))
              for i, (c, st) in enumerate(zip(runtime.stage_calcs, runtime.stages))]
    for name, calc, n_k in calcs:
        if calc.empty:
            rows.append((name, 0, 0.0, 0.0, "empty"))
            continue
        k_s, v_s = (torch.randn((n_k, *lk.shape[1:]), device=lk.device, dtype=lk.dtype, generator=gen)
                    for _ in range(2))
        form = _fa4_form(lq, k_s, calc) if backend == "fa4" else "-"
        rows.append((name, calc.area, *measure(lq, k_s, v_s, ldo, calc.q_ranges, calc.k_ranges, calc.types), form))
        for part, (qr_p, kr_p, tm_p) in _largest_slice_and_rest(calc):  # is one slice, or the mix, slow?
            area_p = mask_area(qr_p.tolist(), kr_p.tolist(), tm_p.tolist())
            shape = f"{int(qr_p[0, 1] - qr_p[0, 0])} x {int(kr_p[0, 1] - kr_p[0, 0])}" if len(qr_p) == 1 else f"{len(qr_p)} slices"
            rows.append((f"  {part}", area_p, *measure(lq, k_s, v_s, ldo, qr_p, kr_p, tm_p), shape))
    print(f"kernel calls of rank 0's plan, each alone (backend {backend or 'auto'}; ms, TFLOP/s "
          f"= 4 * area * d * h / t, backward 2.5x):")
    print(f"{'call':<20} {'area':>14} {'fwd ms':>8} {'TF/s':>6} {'bwd ms':>8} {'TF/s':>6}  form")
    for name, area, fwd, bwd, form in rows:
        flops = 4.0 * area * d * h
        tf = lambda ms, f=flops: f / (ms * 1e9) if ms > 0 else 0.0  # noqa: E731
        print(f"{name:<20} {area:>14,} {fwd:>8.3f} {tf(fwd):>6.0f} {bwd:>8.3f} {tf(bwd) * 2.5:>6.0f}  {form}")
    calls = [r for r in rows[1:] if not r[0].startswith("  ")]
    stage_fwd = sum(r[2] for r in calls)
    stage_bwd = sum(r[3] for r in calls)
    print(f"sum of rank 0's calls: fwd {stage_fwd:.3f} ms, bwd {stage_bwd:.3f} ms; half the 1-GPU time: "
          f"fwd {rows[0][2] / 2:.3f} ms, bwd {rows[0][3] / 2:.3f} ms", flush=True)


if __name__ == "__main__":
    sys.exit(main())
