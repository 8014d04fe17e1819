"""Rank-side body of the 2-GPU NCCL tests (module level so spawned ranks can import it).

Each rank builds the same global bf16 tensors, runs key -> dispatch -> calc_attn -> undispatch
forward and backward on the Triton kernel backend, then checks out, lse, dq, dk, dv with the FFA
criterion max|x - ref64| <= 2 * max|x_lowp_ref - ref64| + 1e-6 (magi_ffa.testing), where ref64 is
the single-device torch backend in float64 on the global tensors and x_lowp_ref the dense
reference computed in bf16 itself. (The torch backend upcasts bf16 to fp32 internally, so its
bf16 run is no low-precision yardstick; the dense one is, and it is run one KV-head group at a
time so that its [g, S, S] scores fit.)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
import traceback

import torch
import torch.distributed as dist

NAMES = ("out", "lse", "dq", "dk", "dv")


def doc_lengths(total: int, seed: int) -> list[int]:
    """Long-tailed document lengths summing to ``total`` (many short, a few long)."""
    import random

    rng = random.Random(seed)
    out, left = [], total
    while left > 0:
        n = min(left, max(16, int(rng.paretovariate(1.2) * 300)))
        out.append(n)
        left -= n
    return out


def build_mask(case: dict):
    from magi_attention.api.functools import cu_seqlens_slices

    kind, T = case["mask"], case["T"]
    if kind == "causal":
        return [(0, T)], [(0, T)], [1]
    if kind == "varlen_causal":
        cu = [0]
        for n in doc_lengths(T, case.get("seed", 0)):
            cu.append(cu[-1] + n)
        qs, ks, ts, _, _ = cu_seqlens_slices(cu, cu, causal=True)
        return qs, ks, ts
    if kind == "sliding_window":
        qs, ks, ts, _, _ = cu_seqlens_slices([0, T], [0, T], window_size=(case["window"], 0))
        return qs, ks, ts
    if kind == "block_causal":
        b = case["block"]
        starts = range(0, T, b)
        return ([(s, min(s + b, T)) for s in starts], [(0, min(s + b, T)) for s in starts],
                [0] * len(starts))
    raise ValueError(kind)


def native_grpcoll_unsupported(device: torch.device) -> str | None:
    """Why magi_grpcoll's native implementation cannot run here, or None."""
    try:
        from magi_grpcoll.impl import get_impl

        impl = get_impl("native")
    except (ImportError, ValueError) as e:
        return f"magi_grpcoll exposes no native implementation ({e})"
    reasons = impl.not_supported_reasons(input=torch.empty(8, device=device),
                                         group=dist.group.WORLD)
    return "; ".join(reasons) or None


def _ref64(q, k, v, do, qr, kr, tm):
    from magi_ffa import ffa_backward, ffa_forward

    q, k, v, do = (x.double() for x in (q, k, v, do))
    scale = q.shape[-1] ** -0.5
    out, lse, _ = ffa_forward(q, k, v, qr, kr, tm, softmax_scale=scale, backend="torch")
    dq, dk, dv = ffa_backward(do, q, k, v, out, lse, qr, kr, tm, softmax_scale=scale,
                              backend="torch")
    return dict(zip(NAMES, (out, lse, dq, dk, dv)))


def _dense_lowp(q, k, v, do, qr, kr, tm):
    """The dense reference in q's dtype, one KV head (and its g query heads) at a time."""
    from magi_ffa.testing import ref_attn_dense

    hq, hk = q.shape[1], k.shape[1]
    g = hq // hk
    res = {n: [] for n in NAMES}
    for h in range(hk):
        qs = slice(h * g, (h + 1) * g)
        leaves = [q[:, qs].detach().clone().requires_grad_(),
                  k[:, h:h + 1].detach().clone().requires_grad_(),
                  v[:, h:h + 1].detach().clone().requires_grad_()]
        out, lse, _ = ref_attn_dense(*leaves, qr, kr, tm, compute_dtype=q.dtype)
        out.backward(do[:, qs])
        for n, x in zip(NAMES, (out, lse, *(t.grad for t in leaves))):
            res[n].append(x.detach())
        del out, lse, leaves
        torch.cuda.empty_cache()
    return {n: torch.cat(xs, dim=1) for n, xs in res.items()}


def _run_one(case: dict, device: torch.device) -> dict:
    from magi_attention.api import (
        DispatchConfig,
        DistAttnConfig,
        OverlapConfig,
        calc_attn,
        compute_pad_size,
        dispatch,
        magi_attn_flex_key,
        prefetch_flex_key,
        undispatch,
    )
    from magi_attention.common.enum import AttnOverlapMode
    from magi_attention.runtime import graphs
    from magi_ffa.testing import assert_close_to_ref

    T, hq, hk, d, chunk = case["T"], case["hq"], case["hk"], case["d"], case["chunk"]
    world = dist.get_world_size()
    qr, kr, tm = build_mask(case)
    gen = torch.Generator(device=device).manual_seed(case.get("seed", 0) + 17)
    q, k, v, do = (torch.randn(T, h, d, device=device, generator=gen).to(torch.bfloat16)
                   for h in (hq, hk, hk, hq))
    deg = case["degree"]
    oc = (OverlapConfig(mode=AttnOverlapMode.DYNAMIC, degree=None) if deg == "dynamic"
          else OverlapConfig(degree=deg))
    dc = DispatchConfig()
    if case.get("dispatch") == "cost_aware":  # the cheapest candidate: at cp 2 a sliding window turns
        from magi_attention.config import CostAwareDispatchAlg

        dc = DispatchConfig(alg=CostAwareDispatchAlg())
    # ``prefetch``: the key's runtime built on the prefetch thread (api.prefetch_flex_key), which
    # must take this rank's device with it
    make_key = prefetch_flex_key if case.get("prefetch") else magi_attn_flex_key
    key = make_key(qr, kr, tm, T, T, hq, hk, d, compute_pad_size(T, world, chunk),
                   chunk, dist.group.WORLD, DistAttnConfig(dispatch_config=dc, overlap_config=oc))
    as_t = lambda a: torch.tensor(a, dtype=torch.int32, device=device)  # noqa: E731
    qr_t, kr_t, tm_t = as_t(qr).reshape(-1, 2), as_t(kr).reshape(-1, 2), as_t(tm).reshape(-1)
    ref = _ref64(q, k, v, do, qr_t, kr_t, tm_t)
    lowp = _dense_lowp(q, k, v, do, qr_t, kr_t, tm_t)
    # ``repeat``: the same calls again on tensors at the same addresses (the runtime's CUDA graphs
    # capture the second and replay from the third); every repetition is checked
    lq, lk, lv = (dispatch(x, key).detach().requires_grad_() for x in (q, k, v))
    ldo = dispatch(do, key)
    replays_before = graphs.stats()["replays"]
    errs, failures = {}, []
    for i in range(case.get("repeat", 1)):
        lq.grad = lk.grad = lv.grad = None
        seen = graphs.stats()
        lout, meta = calc_attn(lq, lk, lv, key)
        lout.backward(ldo)
        torch.cuda.synchronize()
        if case.get("graph_replays"):  # what each repetition did (the graph case's report)
            now = graphs.stats()
            print(f"[gpu cases] {case['name']} rank {dist.get_rank()} repetition {i + 1}: whole-call graphs "
                  + ", ".join(f"{k} {now[k] - seen[k]}" for k in now), file=sys.stderr, flush=True)
        x = dict(zip(NAMES, (undispatch(t, key) for t in (lout.detach(), meta.lse, lq.grad, lk.grad, lv.grad))))
        assert all(t.dtype == torch.bfloat16 for n, t in x.items() if n != "lse"), \
            {n: t.dtype for n, t in x.items()}
        for n in NAMES:  # every tensor of every repetition checked, then every failure reported
            try:
                assert_close_to_ref(f"{case['name']} rank {dist.get_rank()} repetition {i + 1}: {n}", x[n],
                                    lowp[n], ref[n])
            except AssertionError as e:
                failures.append(str(e))
            fin = torch.isfinite(ref[n])
            err = (x[n].double() - ref[n])[fin].abs().max().item()
            errs[n] = (max(err, errs.get(n, (0.0,))[0]), (lowp[n].double() - ref[n])[fin].abs().max().item())
        del lout, meta, x
    assert not failures, "\n".join(failures)
    if "host_split" in case:  # on how many ranks the backward split its host stage (host_split.py)
        from _dist_cases import ranks_that_split_host

        took = ranks_that_split_host(key, device=device)
        assert took == case["host_split"], f"{case['name']}: {took} of {world} ranks split the host stage's backward"
    replays = graphs.stats()["replays"] - replays_before
    assert replays >= case.get("graph_replays", 0), f"{case['name']}: {replays} whole-call graph replays"
    if "runtime" in case:
        from _dist_cases import check_runtime_class

        check_runtime_class(key, case)
    return errs


def _run_fresh(case: dict, device: torch.device) -> dict:
    """``fresh_masks`` steps with a mask of their own each (varlen training packs its documents anew
    every step), every one checked as :func:`_run_one` checks; then one more new mask, whose step
    (key, dispatch, forward, backward) must make no host sync at all: each would drain the GPU's
    queue mid-step (the native binding derives its peers' layouts from every rank's plan, so it
    exchanges nothing)."""
    from magi_attention import api
    from magi_attention.testing.syncs import HostSyncs

    errs = {}
    for step in range(case["fresh_masks"]):
        errs = _run_one(dict(case, seed=case["seed"] + step), device)
    T, hq, hk, d, chunk = case["T"], case["hq"], case["hk"], case["d"], case["chunk"]
    qr, kr, tm = build_mask(dict(case, seed=case["seed"] + case["fresh_masks"]))
    gen = torch.Generator(device=device).manual_seed(case["seed"])
    q, k, v, do = (torch.randn(T, h, d, device=device, generator=gen).to(torch.bfloat16) for h in (hq, hk, hk, hq))
    cfg = api.DistAttnConfig(overlap_config=api.OverlapConfig(degree=case["degree"]))
    key_args = (qr, kr, tm, T, T, hq, hk, d, api.compute_pad_size(T, dist.get_world_size(), chunk), chunk,
                dist.group.WORLD, cfg)
    with _builds_watched() if case.get("prefetch") else contextlib.nullcontext([]) as built_on:
        if case.get("prefetch"):  # prefetched before the step, as the step before would
            api.prefetch_flex_key(*key_args)
        torch.cuda.synchronize()
        with HostSyncs() as syncs:
            key = api.magi_attn_flex_key(*key_args)
            lq, lk, lv = (api.dispatch(x, key).detach().requires_grad_() for x in (q, k, v))
            ldo = api.dispatch(do, key)
            lout, _ = api.calc_attn(lq, lk, lv, key)
            lout.backward(ldo)
        torch.cuda.synchronize()
    bad = dict(syncs.sites())
    assert not bad, f"{case['name']} rank {dist.get_rank()}: host syncs of a new mask's step: {bad}"
    # prefetched: the first calls' host work (translations, bindings) was done on the prefetch thread
    on_caller = [what for what, thread in built_on if thread == threading.current_thread().name]
    assert not on_caller and (built_on or not case.get("prefetch")), \
        f"{case['name']}: built at the first calls: {on_caller} (all: {built_on})"
    return errs


_WATCHED = (("magi_ffa.backends.fa4", "build_slice_block_mask"), ("magi_grpcoll.impl.native", "cast_binding"),
            ("magi_grpcoll.impl.native", "reduce_binding"))


@contextlib.contextmanager
def _builds_watched():
    """A list that records (what, thread name) of each mask translation and native binding built inside."""
    built, saved = [], []
    for module, name in _WATCHED:
        mod = importlib.import_module(module)
        real = getattr(mod, name)
        saved.append((mod, name, real))

        def watched(*args, _real=real, _name=name, **kwargs):
            built.append((_name, threading.current_thread().name))
            return _real(*args, **kwargs)

        setattr(mod, name, watched)
    try:
        yield built
    finally:
        for mod, name, real in saved:
            setattr(mod, name, real)


def _set_switches(switches: dict) -> dict:
    """Set library switches {"module:ATTRIBUTE": value} (a case's ``switches``); returns the old values."""
    old = {}
    for path, value in switches.items():
        module, attr = path.split(":")
        mod = importlib.import_module(module)
        old[path] = getattr(mod, attr)
        setattr(mod, attr, value)
    return old


def run_gpu_cases(rank: int, world: int, cases: list[dict]) -> dict:
    """{case name: ("ok", {tensor: (err, lowp err)}) | ("skip", reason) | ("error", tb)}."""
    device = torch.device("cuda", torch.cuda.current_device())
    results = {}
    start = time.perf_counter()
    for case in cases:
        if rank == 0:  # progress (pytest -s shows it): a case that hangs names itself
            print(f"[gpu cases] {case['name']} starts at {time.perf_counter() - start:.1f} s", file=sys.stderr,
                  flush=True)
        env = dict(case.get("env", {}))
        if env.get("MAGI_ATTENTION_NATIVE_GRPCOLL") == "1":
            reason = native_grpcoll_unsupported(device)
            if reason:
                results[case["name"]] = ("skip", f"native grpcoll unsupported: {reason}")
                continue
        if env.get("MAGI_ATTENTION_FA4_BACKEND") == "1":
            try:
                import flash_attn.cute.interface  # noqa: F401
            except ImportError as e:
                results[case["name"]] = ("skip", f"Flash-Attention 4 not importable: {e}")
                continue
        os.environ.update(env)
        saved = _set_switches(case.get("switches", {}))
        try:
            results[case["name"]] = ("ok", (_run_fresh if case.get("fresh_masks") else _run_one)(case, device))
        except Exception:  # noqa: BLE001 - reported to the parent test
            results[case["name"]] = ("error", traceback.format_exc())
        finally:
            _set_switches(saved)
            for name in env:
                os.environ.pop(name, None)
            try:
                torch.cuda.empty_cache()
            except Exception as e:  # a sticky device error (an illegal address): no later case can run
                status, detail = results.get(case["name"], ("error", ""))
                raise RuntimeError(f"case {case['name']} left the device unusable ({e}); its own outcome: "
                                   f"{status}\n{detail}") from e
        dist.barrier()
    return results
