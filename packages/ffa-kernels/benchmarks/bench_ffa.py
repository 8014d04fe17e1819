"""Benchmark: flex_flash_attn_func(backend="triton"|"fa4") vs torch SDPA (cuDNN, flash) and FlexAttention.

Times forward and backward on identical non-zero bf16 inputs (d = 128) with
triton.testing.do_bench (median), over mask families expressed both as FFA slices and as a
FlexAttention mask_mod (BlockMask creation and torch.compile warm-up excluded from timing).
TFLOP/s come from the exact mask area: fwd 4 * area * d * hq, bwd 2.5x that.
SDPA runs only where its own masks express the family (full, causal), FA4 itself (impl fa4) there
and on the varlen masks. The impls ffa_fa4_noreplay, ffa_fa4_nodecomp, ffa_fa4_decomp_all and
ffa_fa4_nobatch are the fa4 backend with FA4's launch replay off (MAGI_FFA_FA4_LAUNCH_REPLAY=0), with
decomposed masks off (MAGI_FFA_FA4_DECOMPOSE=0), with them on in both directions (=all), and with
documents of one length run varlen instead of as a batch (native.BATCHED_DOCUMENTS): its own peers,
one switch each.

    python benchmarks/bench_ffa.py --out results/ffa_h100 [--quick]
    python benchmarks/bench_ffa.py --sweep results/sweep   # tile configs of the Triton kernels
    python benchmarks/bench_ffa.py --probe                  # where a call's host time goes
    python benchmarks/bench_ffa.py --out ... --pin-host-threads 2   # time with the host threads on CPU 2

writes <out>.csv and <out>.md (card, date, commit, command, then one row per case).
--sweep times each candidate config of each pass on the backend directly (16k, full and
causal) and writes the best as a MAGI_FFA_TRITON_CONFIG string to <sweep>.env.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import functools
import importlib
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from magi_ffa.testing import shared_question_slices

REPLAY_ENV = "MAGI_FFA_FA4_LAUNCH_REPLAY"  # magi_ffa.backends.fa4.replay.ENV (read here without importing FA4)
DECOMPOSE_ENV = "MAGI_FFA_FA4_DECOMPOSE"  # magi_ffa.backends.fa4.decompose.ENV
#: the fa4 backend's same-run peers: impl -> (the environment it runs under, the module switch it
#: flips as (module, attribute, value), or None)
FA4_VARIANTS = {"ffa_fa4": ({}, None), "ffa_fa4_noreplay": ({REPLAY_ENV: "0"}, None),
                "ffa_fa4_nodecomp": ({DECOMPOSE_ENV: "0"}, None), "ffa_fa4_decomp_all": ({DECOMPOSE_ENV: "all"}, None),
                "ffa_fa4_nobatch": ({}, ("magi_ffa.backends.fa4.native", "BATCHED_DOCUMENTS", False))}

D = 128
MASKS = ["full", "causal", "varlen_full", "varlen_causal", "swa_1k", "swa_4k", "block_causal",
         "shared_question", "block_sparse_10"]
# on request (--masks): causal with varlen_causal's area; causal documents of one length (2048)
EXTRA_MASKS = ["causal_same_area", "varlen_equal_causal"]
EQUAL_DOCUMENT = 2048


# ---------------------------------------------------------------------------------------------
# masks: FFA slices, the exact area and an equivalent FlexAttention mask_mod
# ---------------------------------------------------------------------------------------------
def _doc_lengths(total: int, rng: random.Random) -> list[int]:
    lens, left = [], total
    while left > 0:
        n = min(left, max(64, int(rng.paretovariate(1.1) * 512)))
        lens.append(n)
        left -= n
    return lens


def build_mask(name: str, total: int, device):
    """(q_ranges, k_ranges, types, mask_mod or None for no mask)."""
    rng = random.Random(0)
    if name == "full":
        return [[0, total]], [[0, total]], [0], None
    if name == "causal":
        return [[0, total]], [[0, total]], [1], lambda b, h, q, kv: q >= kv
    if name == "causal_same_area":
        n = mask_seqlen(name, total)
        return [[0, n]], [[0, n]], [1], lambda b, h, q, kv: q >= kv
    if name.startswith("varlen"):
        equal = name == "varlen_equal_causal"
        lens = [EQUAL_DOCUMENT] * (total // EQUAL_DOCUMENT) if equal else _doc_lengths(total, rng)
        if equal and sum(lens) != total:
            raise ValueError(f"bench_ffa: {name} needs a total that is a multiple of {EQUAL_DOCUMENT}")
        starts = [sum(lens[:i]) for i in range(len(lens))]
        qr = [[s, s + n] for s, n in zip(starts, lens)]
        doc = torch.repeat_interleave(torch.arange(len(lens), device=device), torch.tensor(lens, device=device))
        causal = name.endswith("causal")
        mm = (lambda b, h, q, kv: (doc[q] == doc[kv]) & (q >= kv)) if causal else (lambda b, h, q, kv: doc[q] == doc[kv])
        return qr, qr, [int(causal)] * len(qr), mm
    if name.startswith("swa"):
        w = int(name.split("_")[1][:-1]) * 1024
        qr, kr, tm = [], [], []
        for s in range(0, total, w):
            e = min(total, s + w)
            qr.append([s, e]), kr.append([s, e]), tm.append(1)
            if s > 0:
                qr.append([s, e]), kr.append([s - w + 1, s]), tm.append(2)
        return qr, kr, tm, lambda b, h, q, kv: (q >= kv) & (q - kv < w)
    if name == "block_causal":
        blk = 2048
        qr = [[s, min(total, s + blk)] for s in range(0, total, blk)]
        return qr, [[0, e] for _, e in qr], [0] * len(qr), lambda b, h, q, kv: (kv // blk) <= (q // blk)
    if name == "shared_question":
        qlen = total // 8
        lens = _doc_lengths(total - qlen, rng)
        qr, kr, tm = shared_question_slices(qlen, lens)
        doc = torch.repeat_interleave(torch.arange(len(lens) + 1, device=device),
                                      torch.tensor([qlen, *lens], device=device))
        return qr, kr, tm, lambda b, h, q, kv: (q >= kv) & ((kv < qlen) | (doc[q] == doc[kv]))
    if name == "block_sparse_10":
        blk, nb = 128, total // 128
        gen = torch.Generator().manual_seed(0)
        table = torch.rand(nb, nb, generator=gen) < 0.1
        table |= torch.eye(nb, dtype=torch.bool)  # no empty rows
        idx = table.nonzero().tolist()
        qr = [[i * blk, (i + 1) * blk] for i, _ in idx]
        kr = [[j * blk, (j + 1) * blk] for _, j in idx]
        tab = table.to(device)
        return qr, kr, [0] * len(idx), lambda b, h, q, kv: tab[q // blk, kv // blk]
    raise ValueError(f"bench_ffa: unknown mask {name!r}; expected one of {MASKS + EXTRA_MASKS}")


def mask_seqlen(name: str, total: int) -> int:
    """Tokens a mask spans: `total`, except causal_same_area, a causal sequence whose area equals
    varlen_causal's at `total` (issue #7 asks varlen causal to be within 10% of causal at the same
    area; beside varlen_causal this is that comparison)."""
    if name != "causal_same_area":
        return total
    area = mask_area(*build_mask("varlen_causal", total, "cpu")[:3])
    return (math.isqrt(8 * area + 1) - 1) // 2  # n (n + 1) / 2 <= area


def mask_area(qr, kr, tm) -> int:
    """Exact visible-cell count of cell-disjoint slices (row-wise sums, no dense mask)."""
    area = 0
    for (qs, qe), (ks, ke), t in zip(qr, kr, tm):
        lq, lk = qe - qs, ke - ks
        if lq <= 0 or lk <= 0:
            continue
        i = torch.arange(lq, dtype=torch.int64)
        hi = torch.clamp(i + lk - lq + 1, max=lk) if t in (1, 3) else torch.full_like(i, lk)
        lo = i if t in (2, 3) else torch.zeros_like(i)
        area += int(torch.clamp(hi - lo, min=0).sum())
    return area


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def warm_up(fn, extra: int = 0) -> None:
    """Untimed calls of `fn` until the fa4 backend's launch replay has recorded its key
    (``replay.record_at()`` calls, 8 by default), then `extra` more. Any timing of an ffa_fa4 call
    starts after these: a timed call that is the recording runs the call's kernels twice."""
    from magi_ffa.backends.fa4.replay import record_at

    for _ in range(record_at() + extra):
        fn()


def host_ms_per_call(fn, calls: int, repeats: int = 1, extra_warm: int = 1) -> float:
    """Host ms per call of `fn`: the median over `repeats` runs of `calls` back-to-back calls (no sync
    between them, one after each run), after ``warm_up`` with `extra_warm` more calls. Where the host
    outruns the GPU this is the call's host path alone (profile_fa4, autograd_host)."""
    warm_up(fn, extra=extra_warm)
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t) * 1e3 / calls)
        torch.cuda.synchronize()
    return statistics.median(runs)


#: torch's autograd engine names its per-device threads so (Engine::thread_init, "pt_autograd_<device>")
AUTOGRAD_THREAD_PREFIX = "pt_autograd_"


def autograd_device_threads() -> list[int]:
    """Native ids of torch's autograd device threads in this process (Linux /proc). The first CUDA
    backward starts one per device; each later backward hands its work to it and waits."""
    ids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(AUTOGRAD_THREAD_PREFIX):
                ids.append(int(task.name))
        except OSError:  # the thread ended meanwhile
            continue
    return ids


@contextlib.contextmanager
def host_threads_pinned(cpu: int | None):
    """Inside: the calling thread and torch's autograd device threads run on `cpu` alone (an engine
    thread started inside inherits the pin); on exit, all of them get the caller's CPUs back. None: a
    no-op.

    Why: a CUDA backward hands work from the caller to the engine's device thread and back, and on two
    cores every hand-off wakes one; on one core the backward's host time halved (PERF_NOTES, "Thread
    placement"). Only these threads: FlexAttention's compile workers, CUDA's own threads and the rest
    keep every CPU, where ``taskset`` would pin them all. Make the first calls (compiles) outside.
    """
    if cpu is None:
        yield
        return
    caller = threading.get_native_id()
    before = os.sched_getaffinity(caller)
    if cpu not in before:
        raise ValueError(f"host_threads_pinned(): cpu {cpu} is not one this thread may run on ({sorted(before)})")
    for tid in (caller, *autograd_device_threads()):
        os.sched_setaffinity(tid, {cpu})  # Linux: a thread id pins that thread alone
    try:
        yield
    finally:
        for tid in (caller, *autograd_device_threads()):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)


def timed_median(fn, min_repeats: int = 10) -> float:
    """Median ms of `fn` by ``triton.testing.do_bench``, after ``warm_up`` and with about `min_repeats`
    timed repeats.

    Why: do_bench makes one call, then sizes its warm-up and repeats from five more (25 / 100 ms by
    default), so a 30-60 ms call (32k full backward) gets one warm-up call and 1-3 timed repeats. On a
    key do_bench calls first, the first timed repeat is the key's 8th call: the replay's recording, which
    runs the call's kernels a second time for its check. ffa_fa4's full 32k backward read 370 TFLOP/s
    where its kernels ran at 616.
    """
    import triton

    warm_up(fn)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    return triton.testing.do_bench(fn, warmup=max(25.0, 3 * once), rep=max(100.0, min_repeats * once),
                                   quantiles=[0.5])


# ---------------------------------------------------------------------------------------------
# runners: each returns (fwd_fn, bwd_fn) or raises when not applicable
# ---------------------------------------------------------------------------------------------
def ffa_runner(q, k, v, dout, qr, kr, tm, backend="triton"):
    from magi_ffa import flex_flash_attn_func

    dev = q.device
    qr_t = torch.tensor(qr, dtype=torch.int32, device=dev)
    kr_t = torch.tensor(kr, dtype=torch.int32, device=dev)
    tm_t = torch.tensor(tm, dtype=torch.int32, device=dev)
    fwd = lambda: flex_flash_attn_func(q, k, v, qr_t, kr_t, tm_t, backend=backend)[0]  # noqa: E731
    return fwd, _bwd_of(fwd, q, k, v, dout)


def _bwd_of(fwd, q, k, v, dout):
    out = fwd()

    def bwd():
        torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

    return bwd


def sdpa_runner(kind, mask_name, q, k, v, dout):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    if mask_name not in ("full", "causal", "causal_same_area"):
        raise NotImplementedError("mask not expressible")
    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[kind]
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, h, S, d]
    gqa = q.shape[1] != k.shape[1]

    def fwd():
        with sdpa_kernel([backend]):
            return sdpa(qt, kt, vt, is_causal=mask_name != "full", enable_gqa=gqa)

    fwd()  # raises when this backend refuses the inputs
    return fwd, _bwd_of(fwd, q, k, v, dout.transpose(0, 1).unsqueeze(0))


def fa4_runner(mask_name, q, k, v, dout, qr=None):
    """Flash-Attention 4 itself (flash-attn-4, CuTe DSL) with its own masking: full / causal, and the
    varlen masks as its varlen documents (`qr`: the documents' row ranges, keys the same). The
    fastest kernel seen on Hopper, the bar of issue #7 (FFA >= 0.9x FA4)."""
    from flash_attn.cute.interface import flash_attn_func, flash_attn_varlen_func

    if mask_name.startswith("varlen"):
        cu = torch.tensor([a for a, _ in qr] + [qr[-1][1]], dtype=torch.int32, device=q.device)
        longest = max(b - a for a, b in qr)
        kw = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest, max_seqlen_k=longest,
                  causal=mask_name.endswith("causal"))
        fwd = lambda: flash_attn_varlen_func(q, k, v, **kw)[0]  # noqa: E731
        return fwd, _bwd_of(fwd, q, k, v, dout)
    if mask_name not in ("full", "causal", "causal_same_area"):
        raise NotImplementedError("mask not expressible")
    qb, kb, vb = (x.unsqueeze(0) for x in (q, k, v))  # [1, S, h, d]
    fwd = lambda: flash_attn_func(qb, kb, vb, causal=mask_name != "full")[0]  # noqa: E731
    return fwd, _bwd_of(fwd, q, k, v, dout.unsqueeze(0))


_flex_compiled = None


def flex_runner(mask_mod, total, q, k, v, dout):
    global _flex_compiled
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if _flex_compiled is None:
        # every mask brings its own mask_mod (a recompile); past dynamo's default limit of 8 the
        # 9th mask silently ran FlexAttention eagerly (1.8 TF/s, or out of memory)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        # the timed backward re-runs one graph (retain_graph=True); a compiled backward that
        # donated its buffers refuses that ("non-empty donated buffers"), seen for the mask after
        # a shape change in one run
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    # compiled block-mask creation: the eager one materialises [S, S] index tensors (16 GiB for the
    # block-sparse table lookup at 16k, out of memory on an 80 GB card)
    bm = None if mask_mod is None else create_block_mask(mask_mod, None, None, total, total, device=q.device,
                                                         _compile=True)
    gqa = q.shape[1] != k.shape[1]
    fwd = lambda: _flex_compiled(qt, kt, vt, block_mask=bm, enable_gqa=gqa)  # noqa: E731
    return fwd, _bwd_of(fwd, q, k, v, dout.transpose(0, 1).unsqueeze(0))


# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fa4_variant(impl: str):
    """Run under `impl`'s environment and module switch (FA4_VARIANTS; other impls: unchanged); a
    switch, which changes how masks translate, clears the fa4 backend's mask cache on the way in and
    out."""
    env, switch = FA4_VARIANTS.get(impl, ({}, None))
    saved_env = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    if switch is not None:
        from magi_ffa.backends.fa4 import clear_mask_cache

        module_name, attr, value = switch
        module = importlib.import_module(module_name)
        saved = getattr(module, attr)
        setattr(module, attr, value)
        clear_mask_cache()
    try:
        yield
    finally:
        if switch is not None:
            setattr(module, attr, saved)
            clear_mask_cache()
        for name, old in saved_env.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


@functools.cache
def _commit() -> str:
    """GIT_COMMIT when set (a device machine's copy of the tree may carry a stale .git), else HEAD."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# tuning sweep and host-overhead probe (issue #7)
# ---------------------------------------------------------------------------------------------
SWEEP = {  # first entry of each list = the table default (configs.py); measured losers dropped
    "fwd": ["128,128,8,3", "128,64,8,3", "128,64,8,4", "64,64,4,3"],
    "bwd_dq": ["128,64,8,3", "64,64,4,2", "128,64,8,2", "64,64,4,3"],
    "bwd_dkdv": ["64,128,8,3", "64,64,4,2", "64,128,8,2", "32,64,4,3"],
    "fused": ["64,128,8,3", "64,128,8,2"],
}


def _direct(total, hq, hk, mask, dtype=torch.bfloat16, fresh=False):
    """Backend-level callables (no checks, no autograd): the kernels plus the cached plan.

    fresh: the single-call path (empty buffers in the input dtype written whole, as the API's
    custom ops use them) instead of merging into fp32 accumulators."""
    from magi_ffa.backends.base import FFAInputs
    from magi_ffa.backends.triton import TritonBackend

    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v, dout = (torch.randn(total, h, D, device="cuda", dtype=dtype, generator=gen) for h in (hq, hk, hk, hq))
    qr, kr, tm, _ = build_mask(mask, total, q.device)
    t = lambda x: torch.tensor(x, dtype=torch.int32, device="cuda")  # noqa: E731
    inp = FFAInputs(q, k, v, t(qr).reshape(-1, 2), t(kr).reshape(-1, 2), t(tm), D**-0.5)
    be = TritonBackend()
    out = torch.zeros(total, hq, D, device="cuda")
    lse = torch.full((total, hq), float("-inf"), device="cuda")
    be.forward(inp, out, lse, None)
    delta = (out * dout.float()).sum(-1)
    dq, dk, dv = torch.zeros_like(out), torch.zeros(total, hk, D, device="cuda"), torch.zeros(total, hk, D, device="cuda")
    o2, l2 = torch.zeros_like(out), torch.full_like(lse, float("-inf"))
    fwd = lambda: be.forward(inp, o2, l2, None)  # noqa: E731
    bwd = lambda: be.backward(inp, dout, out, lse, delta, dq, dk, dv)  # noqa: E731
    if fresh:
        o3 = torch.empty_like(q)
        g3 = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        fwd = lambda: be.forward(inp, o3, l2, None, fresh=True)  # noqa: E731
        bwd = lambda: be.backward(inp, dout, out, lse, delta, *g3, fresh=True)  # noqa: E731
    return fwd, bwd, 4 * mask_area(qr, kr, tm) * D * hq


def sweep(prefix: str, total: int = 16384, masks=("full", "causal"), passes=tuple(SWEEP)) -> None:
    import os

    import triton

    os.environ.pop("MAGI_FFA_TRITON_CONFIG", None)
    base = {p: SWEEP[p][0] for p in ("fwd", "bwd_dq", "bwd_dkdv")}
    res: dict = {}
    lines = []
    for pname, cands in SWEEP.items():
        if pname not in passes:
            continue
        for c in cands:
            cfg = dict(base)
            cfg["bwd_dkdv" if pname == "fused" else pname] = c
            os.environ["MAGI_FFA_TRITON_CONFIG"] = ";".join(f"{a}={b}" for a, b in cfg.items())
            os.environ["MAGI_FFA_TRITON_FUSED_BWD"] = "1" if pname == "fused" else "0"
            tot, txt = 0.0, []
            try:
                for m in masks:
                    fwd, bwd, fl = _direct(total, 16, 16, m)
                    fn = fwd if pname == "fwd" else bwd
                    fn()
                    ms = triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")
                    tf = (fl if pname == "fwd" else 2.5 * fl) / ms / 1e9
                    tot += ms
                    txt.append(f"{m} {ms:.3f} ms {tf:.0f} TF/s")
                    del fwd, bwd
                res.setdefault(pname, []).append((tot, c))
            except Exception as exc:  # noqa: BLE001 - out of resources etc.: skip the config
                txt.append(f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}")
            line = f"sweep {pname:8s} {c:12s} " + "; ".join(txt)
            print(line, flush=True)
            lines.append(line)
            torch.cuda.empty_cache()
    os.environ.pop("MAGI_FFA_TRITON_CONFIG", None)
    os.environ.pop("MAGI_FFA_TRITON_FUSED_BWD", None)
    best = {p: min(v)[1] for p, v in res.items() if v}
    # split bwd with the best dq and the best dkdv: each list's first entry is the base pair
    split = 1e9
    if res.get("bwd_dq") and res.get("bwd_dkdv") and res["bwd_dq"][0][1] == base["bwd_dq"]:
        split = min(res["bwd_dq"])[0] + min(res["bwd_dkdv"])[0] - res["bwd_dq"][0][0]
    fused_t = min(res["fused"])[0] if "fused" in res else 1e9
    env = {"fwd": best.get("fwd", base["fwd"]), "bwd_dq": best.get("bwd_dq", base["bwd_dq"]),
           "bwd_dkdv": best.get("bwd_dkdv", base["bwd_dkdv"])}
    use_fused = fused_t < split
    if use_fused:
        env["bwd_dkdv"] = best["fused"]
    env_s = ";".join(f"{a}={b}" for a, b in env.items())
    lines.append(f"best: {env_s}; fused={int(use_fused)} (fused {fused_t:.3f} ms vs split {split:.3f} ms, sum over masks)")
    print(lines[-1], flush=True)
    with open(prefix + ".env", "w") as f:
        f.write(f"export MAGI_FFA_TRITON_CONFIG='{env_s}'\nexport MAGI_FFA_TRITON_FUSED_BWD={int(use_fused)}\n")
    with open(prefix + ".txt", "w") as f:
        f.write(f"card: {torch.cuda.get_device_name()}; date: {datetime.date.today()}; total {total}, h16/16, d{D}, bf16\n")
        f.write("\n".join(lines) + "\n")


def probe(total: int = 8192) -> None:
    """Split one flex_flash_attn_func call into host phases (synchronised wall clock)."""
    for mask in ("full", "causal", "varlen_causal", "swa_1k"):
        _probe_one(mask, total)


def _probe_one(mask: str, total: int) -> None:
    import cProfile
    import io
    import pstats

    import triton
    from magi_ffa import api, ffa_forward
    from magi_ffa import flex_flash_attn_func as ffa

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(total, 16, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    qr, kr, tm, _ = build_mask(mask, total, q.device)
    t = lambda x: torch.tensor(x, dtype=torch.int32, device="cuda")  # noqa: E731
    qr_t, kr_t, tm_t = t(qr).reshape(-1, 2), t(kr).reshape(-1, 2), t(tm)

    def host(fn, n=20):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n * 1e3

    prep = host(lambda: api._prepare("x", q, k, v, qr_t, kr_t, tm_t, None, 0.0))
    f_api = lambda: ffa(q, k, v, qr_t, kr_t, tm_t, backend="triton")  # noqa: E731
    t_api = host(f_api)
    t_acc = host(lambda: ffa_forward(q, k, v, qr_t, kr_t, tm_t, softmax_scale=D**-0.5, backend="triton"))
    fwd, bwd, fl = _direct(total, 16, 16, mask)
    t_dir = triton.testing.do_bench(fwd, return_mode="median")
    t_dirb = triton.testing.do_bench(bwd, return_mode="median")
    t_apib = triton.testing.do_bench(f_api, return_mode="median")
    fwd_f, bwd_f, _ = _direct(total, 16, 16, mask, fresh=True)
    t_dirf = triton.testing.do_bench(fwd_f, return_mode="median")
    t_dirbf = triton.testing.do_bench(bwd_f, return_mode="median")
    print(f"probe {total} {mask:14s} N={len(qr)}: checks(_prepare) {prep:.3f} ms; func fwd wall {t_api:.3f} ms "
          f"(do_bench {t_apib:.3f}); ffa_forward wall {t_acc:.3f} ms; backend fwd {t_dir:.3f} ms "
          f"({fl / t_dir / 1e9:.0f} TF/s), backend bwd {t_dirb:.3f} ms ({2.5 * fl / t_dirb / 1e9:.0f} TF/s); "
          f"fresh backend fwd {t_dirf:.3f} ms, bwd {t_dirbf:.3f} ms", flush=True)
    if mask == "varlen_causal":
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(10):
            out = f_api()[0]
            torch.autograd.grad(out, (q, k, v), dout)
        torch.cuda.synchronize()
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(14)
        print(buf.getvalue()[-3500:], flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="output path prefix (.csv and .md are appended)")
    ap.add_argument("--sweep", help="tune: output path prefix (.txt and .env are appended)")
    ap.add_argument("--sweep-total", type=int, default=16384)
    ap.add_argument("--sweep-masks", default="full,causal")
    ap.add_argument("--sweep-passes", default=",".join(SWEEP))
    ap.add_argument("--probe", action="store_true", help="host-overhead breakdown of one call")
    ap.add_argument("--plot", metavar="CSV", help="only draw the charts (and ratio table) of an earlier run's CSV")
    ap.add_argument("--heads", default="16/16,64/8", help="hq/hk pairs, comma separated")
    ap.add_argument("--quick", action="store_true", help="8k only, MHA only, four masks")
    ap.add_argument("--masks", default=",".join(MASKS))
    ap.add_argument("--totals", default="8192,16384,32768,65536")
    ap.add_argument("--impls", default="ffa_triton,sdpa_cudnn,sdpa_flash,flex")
    ap.add_argument("--pin-host-threads", type=int, default=None, metavar="CPU",
                    help="time every impl with the main thread and torch's autograd device threads on this "
                         "CPU alone (host_threads_pinned); compiles and first calls run unpinned")
    args = ap.parse_args(argv)
    if args.plot:  # no GPU needed
        with open(args.plot, newline="") as f:
            rows = list(csv.DictReader(f))
        prefix = args.plot.removesuffix(".csv")
        print("\n".join(ratio_lines(rows)))
        print(f"wrote {len(plot_results(prefix, rows))} charts next to {args.plot}")
        return 0

    if not torch.cuda.is_available():
        print("bench_ffa: needs a CUDA device", file=sys.stderr)
        return 2
    if args.sweep:
        sweep(args.sweep, args.sweep_total, tuple(args.sweep_masks.split(",")), tuple(args.sweep_passes.split(",")))
        return 0
    if args.probe:
        probe()
        return 0
    if not args.out:
        ap.error("--out is required")
    totals = [int(x) for x in args.totals.split(",")]
    masks = args.masks.split(",")
    heads = [tuple(int(x) for x in hh.split("/")) for hh in args.heads.split(",")]
    if args.quick:
        totals, masks, heads = [8192], ["full", "causal", "varlen_causal", "swa_1k"], [(16, 16)]
    impls = args.impls.split(",")
    card = torch.cuda.get_device_name()
    rows = []
    for total in totals:
        for hq, hk in heads:
            gen = torch.Generator(device="cuda").manual_seed(0)
            q, k, v, dout = (torch.randn(total, h, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                             for h in (hq, hk, hk, hq))
            q, k, v = (x.requires_grad_() for x in (q, k, v))
            for mname in masks:
                n = mask_seqlen(mname, total)  # tokens this mask spans (its own leaves when < total)
                qm, km, vm = (q, k, v) if n == total else (x[:n].detach().requires_grad_() for x in (q, k, v))
                dm = dout[:n]
                qr, kr, tm, mm = build_mask(mname, total, q.device)
                area = mask_area(qr, kr, tm)
                fl_fwd = 4 * area * D * hq
                for impl in impls:
                    row = {"card": card, "total": total, "hq": hq, "hk": hk, "d": D, "mask": mname,
                           "impl": impl, "area": area, "note": f"{n} tokens" if n != total else ""}
                    try:
                        with fa4_variant(impl):
                            if impl == "ffa_triton" or impl in FA4_VARIANTS:
                                fwd, bwd = ffa_runner(qm, km, vm, dm, qr, kr, tm, backend="triton" if impl == "ffa_triton" else "fa4")
                            elif impl.startswith("sdpa_"):
                                fwd, bwd = sdpa_runner(impl[5:], mname, qm, km, vm, dm)
                            elif impl == "flex":
                                fwd, bwd = flex_runner(mm, n, qm, km, vm, dm)
                            elif impl == "fa4":
                                fwd, bwd = fa4_runner(mname, qm, km, vm, dm, qr)
                            else:
                                raise ValueError(f"bench_ffa: unknown impl {impl!r}")
                            timed_bwd = total <= 32768
                            if args.pin_host_threads is not None:  # compiles and the engine's start unpinned
                                fwd()
                                if timed_bwd:
                                    bwd()
                            with host_threads_pinned(args.pin_host_threads):
                                tf = timed_median(fwd)
                                tb = timed_median(bwd) if timed_bwd else None
                            row.update(fwd_ms=round(tf, 4), fwd_tflops=round(fl_fwd / tf / 1e9, 1))
                            if tb is not None:
                                row.update(bwd_ms=round(tb, 4), bwd_tflops=round(2.5 * fl_fwd / tb / 1e9, 1))
                    except Exception as exc:  # noqa: BLE001 - a refusal is a result ("n/a")
                        row["note"] = f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}" if str(exc) else "n/a"
                    torch.cuda.empty_cache()
                    rows.append(row)
                    print(f"[{len(rows)}] {total} h{hq}/{hk} {mname:16s} {impl:11s} "
                          f"fwd {row.get('fwd_tflops', '-')} TF/s bwd {row.get('bwd_tflops', '-')} TF/s {row.get('note', '')}",
                          flush=True)
                    write_results(args.out, rows)
            del q, k, v, dout
    pngs = plot_results(args.out, rows)
    print(f"wrote {args.out}.csv, {args.out}.md and {len(pngs)} charts")
    if "magi_ffa.backends.fa4.replay" in sys.modules:
        print(f"fa4 launch replay: {sys.modules['magi_ffa.backends.fa4.replay'].stats()}")
    return 0


def ratio_lines(rows: list[dict]) -> list[str]:
    """Markdown ratios of each FFA impl to each peer measured beside it (same total, heads, mask)."""
    peers = ("flex", "sdpa_cudnn", "sdpa_flash", "fa4", "ffa_fa4_noreplay", "ffa_fa4_nodecomp")
    by = {(r["total"], r["hq"], r["hk"], r["mask"], r["impl"]): r for r in rows}
    lines = []
    for (total, hq, hk, mask, impl), r in by.items():
        if not impl.startswith("ffa_"):
            continue
        for peer in peers:
            p = by.get((total, hq, hk, mask, peer))
            if p is None or peer == impl:
                continue
            cells = [_ratio(r, p, d) for d in ("fwd", "bwd")]
            if cells != ["–", "–"]:  # the peer refused the mask: no ratio
                lines.append(f"| {total} | {hq}/{hk} | {mask} | {impl} / {peer} | {cells[0]} | {cells[1]} |")
    for (total, hq, hk, mask, impl), r in by.items():  # issue #7: varlen causal vs causal, same area
        p = by.get((total, hq, hk, "causal_same_area", impl))
        if mask != "varlen_causal" or p is None:
            continue
        cells = [_ratio(r, p, d) for d in ("fwd", "bwd")]
        lines.append(f"| {total} | {hq}/{hk} | varlen_causal / causal_same_area | {impl} | {cells[0]} | {cells[1]} |")
    if not lines:
        return []
    return ["", "## ratios (same run)", "", "| total | heads | mask | ratio | fwd | bwd |",
            "|---|---|---|---|---|---|"] + lines


def _ratio(a: dict, b: dict, direction: str) -> str:
    x, y = a.get(f"{direction}_tflops"), b.get(f"{direction}_tflops")
    if x in (None, "") or y in (None, "") or float(y) <= 0:
        return "–"
    return f"{float(x) / float(y):.2f}"


def write_results(out: str, rows: list[dict]) -> None:
    """CSV and markdown of the rows so far (rewritten after every row: a run cut short keeps them)."""
    cols = ["card", "total", "hq", "hk", "d", "mask", "impl", "area", "fwd_ms", "fwd_tflops", "bwd_ms",
            "bwd_tflops", "note"]
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    card = rows[0]["card"] if rows else "?"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "-"
    header = (f"# FFA benchmark\n\ncard: {card}; date: {datetime.date.today()}; commit: {_commit()}; "
              f"torch {torch.__version__}, triton {triton_version}\n\ncommand: `{' '.join(sys.argv)}`\n\n")
    md = ["| total | heads | mask | impl | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s | note |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['total']} | {r['hq']}/{r['hk']} | {r['mask']} | {r['impl']} | {r.get('fwd_ms', '')} | "
                  f"{r.get('fwd_tflops', '')} | {r.get('bwd_ms', '')} | {r.get('bwd_tflops', '')} | {r.get('note', '')} |")
    with open(out + ".md", "w") as f:
        f.write(header + "\n".join(md + ratio_lines(rows)) + "\n")


def plot_results(out: str, rows: list[dict]) -> list[str]:
    """One PNG bar chart per mask (`<out>_<mask>.png`): TFLOP/s of each impl, forward and backward
    panels, one group of bars per (total, heads). Returns the files written ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"bench_ffa: no plots, matplotlib unavailable ({e})")
        return []
    written = []
    for mask in dict.fromkeys(r["mask"] for r in rows):
        mrows = [r for r in rows if r["mask"] == mask]
        groups = list(dict.fromkeys((int(r["total"]), f"{r['hq']}/{r['hk']}") for r in mrows))
        impls = list(dict.fromkeys(r["impl"] for r in mrows if r.get("fwd_tflops") not in (None, "")))
        fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(groups), 3.6), sharey=True)
        width = 0.8 / max(1, len(impls))
        for ax, d in zip(axes, ("fwd", "bwd")):
            for i, impl in enumerate(impls):
                vals = []
                for total, heads in groups:
                    r = next((r for r in mrows if int(r["total"]) == total and f"{r['hq']}/{r['hk']}" == heads
                              and r["impl"] == impl), None)
                    v = r.get(f"{d}_tflops") if r is not None else None
                    vals.append(float(v) if v not in (None, "") else 0.0)
                ax.bar([g + i * width for g in range(len(groups))], vals, width, label=impl)
            ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
            ax.set_xticklabels([f"{t // 1024}k h{h}" for t, h in groups], fontsize=8)
            ax.set_title(f"{mask} {d}")
            ax.set_ylabel("TFLOP/s")
        axes[0].legend(fontsize=7)
        fig.suptitle(mrows[0]["card"], fontsize=9)
        fig.tight_layout()
        path = f"{out}_{mask}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    sys.exit(main())
