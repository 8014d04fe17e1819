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


def test_the_prefetch_thread_takes_the_callers_cuda_device(monkeypatch):
    """A new thread starts on CUDA device 0, and a manager records the device it is built on: the
    build must run on the caller's device (rank 1 of a node builds for cuda:1)."""
    from magi_attention.runtime import prefetch

    set_on = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: set_on.append((d, threading.current_thread().name)))
    pending = prefetch.build_in_background(lambda: threading.current_thread().name)
    worker = pending.result()
    assert worker.startswith("magi-attn-prefetch") and set_on == [(3, worker)]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA not in use: no device set
    assert prefetch.build_in_background(lambda: 7).result() == 7 and len(set_on) == 1
