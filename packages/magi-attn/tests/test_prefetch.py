"""api.prefetch_flex_key / prefetch_varlen_key (runtime/prefetch.py) on 2 gloo ranks.

A prefetched key's manager is built on the prefetch thread and waited for where the key is first
used; the results are the same as with a key made at once; the cache keeps the order the keys were
asked in; a build that fails raises where the key is used and leaves the cache; bad arguments raise
at once.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

import pytest
import torch
import torch.distributed as dist
from magi_attention.testing.dist import run_distributed

T, HQ, HK, D, CHUNK = 96, 2, 1, 8, 8
MASK_A = ([0, 17, 58, 96], True)  # cu_seqlens, causal
MASK_B = ([0, 40, 96], False)


def _step(key, seed: int):
    """Forward and backward of calc_attn on this rank's tokens: out, lse and the three gradients."""
    from magi_attention.api import calc_attn, dispatch

    gen = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(T, h, D, generator=gen, dtype=torch.float64) for h in (HQ, HK, HK, HQ))
    lq, lk, lv = (dispatch(x, key).requires_grad_() for x in (q, k, v))
    out, meta = calc_attn(lq, lk, lv, key)
    out.backward(dispatch(do, key))
    return [out.detach(), meta.lse, lq.grad, lk.grad, lv.grad]


def _prefetched_keys_match_keys_made_at_once(rank, world):
    from magi_attention.api import magi_attn_varlen_key, prefetch_varlen_key
    from magi_attention.runtime import runtime_mgr
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr as mgrs

    g = dist.group.WORLD
    built_on = []
    real_build = runtime_mgr.init_dist_attn_runtime_mgr

    def build(key, ref=None):
        built_on.append(threading.current_thread().name)
        return real_build(key, ref)

    runtime_mgr.init_dist_attn_runtime_mgr = build
    try:
        args = [(cu, cu, HQ, HK, D, 0, CHUNK, g) for cu, _ in (MASK_A, MASK_B)]
        causal = [c for _, c in (MASK_A, MASK_B)]
        a = prefetch_varlen_key(*args[0], causal=causal[0])
        b = prefetch_varlen_key(*args[1], causal=causal[1])
        d = mgrs.dict_for(g)
        assert list(d)[-2:] == [a, b]  # entered at once, in the order asked
        assert magi_attn_varlen_key(*args[1], causal=causal[1]) == b  # the same key, waited for
        assert not isinstance(dict.__getitem__(d, b), Future)  # the cache now holds the manager
        rt = dict.__getitem__(d, b).runtime  # its first calls' host work done on the thread too
        assert rt.num_stages >= 1 and sorted(rt._plans) == list(range(rt.num_stages))
        got = [_step(b, 1), _step(a, 2)]  # b used first: a was built before it anyway
        assert len(built_on) == 2 and all(n.startswith("magi-attn-prefetch") for n in built_on), built_on
        assert list(d)[-2:] == [b, a]  # the LRU order of use
        mgrs.clear()  # the same keys made at once, on this thread
        a2 = magi_attn_varlen_key(*args[0], causal=causal[0])
        b2 = magi_attn_varlen_key(*args[1], causal=causal[1])
        assert (a2, b2) == (a, b) and built_on[2:] == [threading.current_thread().name] * 2
        want = [_step(b2, 1), _step(a2, 2)]
        for xs, ys in zip(got, want):
            for x, y in zip(xs, ys):
                assert torch.equal(x, y)
    finally:
        runtime_mgr.init_dist_attn_runtime_mgr = real_build
        mgrs.clear()


def test_prefetched_keys_give_what_keys_made_at_once_give():
    run_distributed(_prefetched_keys_match_keys_made_at_once, 2, timeout=180)


def _failures_and_eviction(rank, world):
    from magi_attention import _compat
    from magi_attention.api import dispatch, magi_attn_flex_key, prefetch_flex_key
    from magi_attention.errors import KeyNotFoundError, MagiAttentionError
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr as mgrs

    g = dist.group.WORLD
    x = torch.randn(T, 3, dtype=torch.float64)

    def args(n):  # a full mask over the first n tokens: another key for each n
        return [(0, n)], [(0, n)], "full", T, T, HQ, HK, D, 0, CHUNK, g

    # bad arguments: raised at once, naming the function
    with pytest.raises(MagiAttentionError, match="prefetch_flex_key"):
        prefetch_flex_key([(0, 80)], [(0, 64)], "full", T, T, HQ, HK, D, 0, 7, g)
    # a build that fails: raised where the key is used, and the key leaves the cache
    solver = _compat.solver
    real_plan = solver.make_dist_attn_plan

    def failing_plan(*a, **kw):
        raise RuntimeError("planner down")

    solver.make_dist_attn_plan = failing_plan
    try:
        bad = prefetch_flex_key(*args(64))
        with pytest.raises(RuntimeError, match="planner down"):
            dispatch(x, bad)
    finally:
        solver.make_dist_attn_plan = real_plan
    assert bad not in mgrs.dict_for(g)
    assert magi_attn_flex_key(*args(64)) == bad  # built again, now fine
    assert torch.equal(dispatch(x, bad), dispatch(x, mgrs.most_recent_key(g)))
    # the LRU counts a prefetched key when it is asked for: with room for 2, the first of 3 goes
    os.environ["MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE"] = "2"
    mgrs.clear()
    try:
        k1, k2, k3 = (prefetch_flex_key(*args(n)) for n in (32, 48, 80))
        with pytest.raises(KeyNotFoundError):
            mgrs.get_mgr(k1)
        assert mgrs.get_mgr(k2).key == k2 and mgrs.get_mgr(k3).key == k3
    finally:
        del os.environ["MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE"]
        mgrs.clear()


def test_prefetch_failures_and_eviction():
    run_distributed(_failures_and_eviction, 2, timeout=180)


def test_the_prefetch_thread_takes_the_callers_cuda_device_and_orders_its_uploads(monkeypatch):
    """A new thread starts on CUDA device 0, and a manager records the device it is built on: the
    build must run on the caller's device (rank 1 of a node builds for cuda:1). Its uploads run on a
    side stream that first waits for the work the caller had queued when it asked (memory an evicted
    runtime gave back is reused after the calls that read it), and the first use makes the caller's
    stream wait for them. Streams and events faked."""
    import contextlib

    from magi_attention.runtime import prefetch

    log, current = [], {}

    class Stream:
        def __init__(self, name="side", device=None):
            self.name = name

        def wait_event(self, ev):
            log.append((threading.current_thread().name.split("_")[0], self.name, "waits", ev.name))

    class Event:
        made = 0

        def __init__(self):
            Event.made += 1
            self.name = f"event{Event.made}"

        def record(self, stream):
            log.append((threading.current_thread().name.split("_")[0], stream.name, "records", self.name))

    @contextlib.contextmanager
    def on_stream(stream):
        current[threading.current_thread().name], before = stream, current.get(threading.current_thread().name)
        yield
        current[threading.current_thread().name] = before

    caller = Stream("caller")
    monkeypatch.setattr(prefetch, "_streams", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: caller)
    set_on = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: set_on.append((d, threading.current_thread().name)))

    def build():
        name = threading.current_thread().name
        log.append((name.split("_")[0], current[name].name, "uploads", ""))
        return name

    pending = prefetch.build_in_background(build)
    worker = prefetch.ready(pending)
    assert worker.startswith("magi-attn-prefetch") and set_on == [(3, worker)]
    assert log == [("MainThread", "caller", "records", "event1"),  # what the caller had queued
                   ("magi-attn-prefetch", "side", "waits", "event1"),
                   ("magi-attn-prefetch", "side", "uploads", ""),
                   ("magi-attn-prefetch", "side", "records", "event2"),
                   ("MainThread", "caller", "waits", "event2")]  # the first use, after the uploads
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA not in use: no device, no streams
    log.clear()
    assert prefetch.ready(prefetch.build_in_background(lambda: 7)) == 7 and len(set_on) == 1 and log == []


@pytest.mark.parametrize("native", [True, False])
def test_a_prefetched_runtime_does_its_first_calls_host_work_ahead(monkeypatch, native):
    """``DistAttnRuntime.prepare_ahead`` (run on the prefetch thread): every stage's comm plans; with
    native collectives their bindings and copy tables at the row sizes of the latest calls (from
    every rank's plan, no exchange); each non-empty kernel call's mask translation at the lengths
    its forward and backward will see. Rank 0 of 2 on CPU, the group faked."""
    from magi_attention import _compat
    from magi_attention.config import CostAwareDispatchAlg, DistAttnConfig
    from magi_attention.env import snapshot_flags
    from magi_attention.meta.dispatch_choice import solve_dispatch
    from magi_attention.runtime import dist_attn
    from magi_attention.runtime.runtime_mgr import _overlap_params
    from magi_grpcoll import api as grpcoll_api
    from magi_grpcoll.impl import native as native_impl

    monkeypatch.setenv("MAGI_ATTENTION_NATIVE_GRPCOLL", "1" if native else "0")
    monkeypatch.setattr(dist_attn.dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist_attn.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(grpcoll_api, "_group_info", lambda fn, group: (0, 2))
    monkeypatch.setattr(dist_attn, "recent_itemsizes", {"cast": 2, "reduce": 4})
    prepared = []
    monkeypatch.setattr(_compat.ffa.FFACall, "prepare",
                        lambda self, sq, sk, device: prepared.append((self._ranges[0], sq, sk, device)) or True)
    total, row = 4096, HK * D
    cu = [0, 700, 1900, 2000, 4096]
    qr = [(a, b) for a, b in zip(cu, cu[1:])]
    mask = (qr, qr, [1] * len(qr))
    overlap = _overlap_params(DistAttnConfig())
    meta = solve_dispatch(CostAwareDispatchAlg(), *mask, total, 256, 2, overlap)
    plan = _compat.solver.make_dist_attn_plan(*mask, meta, overlap)
    group = [plan.rank_plan(r) for r in range(2)]
    rt = dist_attn.DistAttnRuntime(group[0], plan.num_stages, None, snapshot_flags(), torch.device("cpu"),
                                   group_plans=group)
    assert plan.num_stages >= 1 and not rt._plans
    rt.prepare_ahead(total // 2, row)
    assert sorted(rt._plans) == list(range(plan.num_stages))
    for cast, reduce in rt._plans.values():
        if native:
            assert set(native_impl._NATIVE._bindings[cast]._tables) >= {("post", 2 * row)}
            assert set(native_impl._NATIVE._bindings[reduce]._tables) == {("send", 4 * row)}
        else:
            assert cast not in native_impl._NATIVE._bindings and reduce not in native_impl._NATIVE._bindings
    calls = [(rt.host_calc, total // 2)] + [(c, int(st.num_recv_tokens)) for c, st in zip(rt.stage_calcs, rt.stages)]
    want = [(c.q_ranges, total // 2, sk, torch.device("cpu")) for c, sk in calls if not c.empty]
    assert len(want) >= 2 and prepared == want
