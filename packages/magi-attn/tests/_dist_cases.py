"""Rank-side bodies of the distributed tests (module level so spawned ranks can import them)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def case_mask(case):
    """(q_ranges, k_ranges, type codes) of a test case's named mask (shared with test_qo_comm)."""
    from magi_attention.api.functools import cu_seqlens_slices

    kind, T = case["mask"], case["T"]
    if kind == "full":
        return [(0, T)], [(0, T)], [0]
    if kind == "causal":
        return [(0, T)], [(0, T)], [1]
    if kind in ("varlen_full", "varlen_causal"):
        cu = case["cu"]
        qs, ks, ts, _, _ = cu_seqlens_slices(cu, cu, causal=kind == "varlen_causal")
        return qs, ks, ts
    if kind == "sliding_window":
        qs, ks, ts, _, _ = cu_seqlens_slices(case["cu"], case["cu"], window_size=case["window"])
        return qs, ks, ts
    if kind == "block_causal":
        b = case["block"]
        return ([(i, min(i + b, T)) for i in range(0, T, b)],
                [(0, min(i + b, T)) for i in range(0, T, b)], [0] * len(range(0, T, b)))
    if kind == "shared_question":  # a question followed by answers that each see it
        q_len = case["q_len"]
        answers = case["answers"]
        qs, ks, ts = [(0, q_len)], [(0, q_len)], [1]
        start = q_len
        for a in answers:
            qs += [(start, start + a), (start, start + a)]
            ks += [(0, q_len), (start, start + a)]
            ts += [0, 1]
            start += a
        return qs, ks, ts
    if kind == "random":
        from magi_ffa.testing import random_slices

        res = random_slices(case["seed"], T, T, case.get("n", 6))
        qr, kr, tm = res[:3]
        return [tuple(r) for r in qr], [tuple(r) for r in kr], list(tm)
    raise ValueError(kind)


def runtime_of(key):
    """The runtime ``key``'s calls run on (this rank's, from the runtime cache)."""
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr

    return dist_attn_runtime_dict_mgr.get_mgr(key).runtime


def check_runtime_class(key, case: dict):
    """``key``'s runtime, asserted to be of the class ``case["runtime"]`` names (the runtime the case is
    about, e.g. QO comm's, was built)."""
    runtime = runtime_of(key)
    assert type(runtime).__name__ == case["runtime"], f"{case['name']}: ran {type(runtime).__name__}"
    return runtime


def ranks_that_split_host(key, group=None, device=None) -> int:
    """How many ranks of ``group`` split their backward's host stage for ``key`` (runtime/host_split.py);
    every rank of the group calls it (an all_reduce)."""
    took = torch.tensor([float(bool(runtime_of(key).host_split_rows))], device=device)
    dist.all_reduce(took, group=group)
    return int(took.item())


class _LaunchOrderSpy:
    """Records, in order, a runtime's forward/backward entries, calc launches (``_fwd`` / ``_bwd``),
    K/V casts and dK/dV reduces, with its device passing for CUDA so that the host-stage-first
    path (``dist_attn.HOST_STAGE_FIRST``) is taken on gloo: ``_InputsReady`` (an event and a side
    stream) is replaced by a stand-in that logs ``ready`` and issues in place."""

    _METHODS = ("forward", "backward", "_fwd", "_bwd", "_recv_buffer", "_cast_kv", "_reduce_dkv")

    def __init__(self, runtime) -> None:
        import contextlib

        from magi_attention.runtime import dist_attn

        self.log: list[str] = []
        self._runtime, self._module = runtime, dist_attn
        self._saved = (runtime.device, dist_attn._InputsReady)
        log = self.log

        class _AsCuda:
            type = "cuda"

        class _Ready:
            def __init__(self, device) -> None:
                log.append("ready")

            def issue(self):
                return contextlib.nullcontext()

        runtime.device, dist_attn._InputsReady = _AsCuda(), _Ready

        def logged(name: str):
            orig = getattr(runtime, name)

            def call(*args, **kwargs):
                log.append(name)
                return orig(*args, **kwargs)

            return call

        for name in self._METHODS:
            setattr(runtime, name, logged(name))  # an instance attribute shadows the method

    def check(self, label: str) -> None:
        """In each pass that casts: ``ready`` (inputs marked) and the up-front casts' receive
        buffers, the first calc, then those casts, and (backward) a cast before the first reduce;
        unless that pass's first calc (the host stage, or under hide tail the backward's kept tail)
        launches nothing, when the casts come first. (A receive buffer made after the first calc's
        launch could be a block the calc's temporaries just freed, which the cast, waiting for the
        inputs only, would overwrite while the calc runs.)"""
        rt = self._runtime
        first_empty = {"forward": rt.host_calc.empty,
                       "backward": rt.stage_calcs[-1].empty if rt.save_tail else rt.host_calc.empty}
        passes, cur = [], None
        for e in self.log:
            if e in ("forward", "backward"):
                cur = [e]
                passes.append(cur)
            else:
                cur.append(e)
        assert [p[0] for p in passes] == ["forward", "backward"], f"{label}: {self.log}"
        for p in passes:
            calc = "_fwd" if p[0] == "forward" else "_bwd"
            if "_cast_kv" not in p:
                continue
            first_cast = p.index("_cast_kv")
            if first_empty[p[0]]:
                assert "ready" not in p and first_cast < p.index(calc), f"{label}: {p}"
                continue
            assert "ready" in p and p.index("ready") < p.index(calc) < first_cast, f"{label}: {p}"
            up_front = p[:p.index(calc)].count("_recv_buffer")
            assert up_front >= 1 and p[first_cast - 1] != "_recv_buffer", f"{label}: buffers after the calc: {p}"
            if "_reduce_dkv" in p:
                assert first_cast < p.index("_reduce_dkv"), f"{label}: {p}"

    def restore(self) -> None:
        for name in self._METHODS:
            delattr(self._runtime, name)
        self._runtime.device, self._module._InputsReady = self._saved


class _ReduceFlagSpy:
    """Records the ``fold_at_wait`` of every group_reduce plan call until ``restore()``."""

    def __init__(self) -> None:
        from magi_grpcoll.plan import GroupReducePlan

        self.folds_at_wait, self._orig, spy = [], GroupReducePlan.reduce, self

        def reduce(plan, *args, **kwargs):
            spy.folds_at_wait.append(kwargs.get("fold_at_wait", False))
            return spy._orig(plan, *args, **kwargs)

        GroupReducePlan.reduce = reduce

    def restore(self) -> None:
        from magi_grpcoll.plan import GroupReducePlan

        GroupReducePlan.reduce = self._orig


def _fa4_varlen_windows(on: bool) -> bool:
    """Switch magi_ffa's fa4 varlen windows, forgetting the masks translated before; returns the
    previous setting."""
    from magi_ffa.backends.fa4 import clear_mask_cache, native

    before, native.VARLEN_WINDOWS = native.VARLEN_WINDOWS, on
    clear_mask_cache()
    return before


def run_cases(cases, group=None, rank_label=""):
    """Run each case on ``group`` (default WORLD); a failing case raises AssertionError."""
    from magi_attention.api import (
        DistAttnConfig,
        OverlapConfig,
        calc_attn,
        compute_pad_size,
        dispatch,
        magi_attn_flex_key,
        undispatch,
    )
    from magi_attention.common.enum import AttnOverlapMode
    from magi_ffa.testing import ref_attn_dense

    group = dist.group.WORLD if group is None else group
    if isinstance(group, dist.ProcessGroup):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
    else:  # a DeviceMesh over the whole world (hierarchical comm)
        world, rank = group.size(), dist.get_rank()
    report = []
    from magi_attention.runtime import _common as runtime_common
    from magi_attention.runtime import dist_attn

    list_casts, binds, split_default = dist_attn.cast_lists, runtime_common.bound_calls, dist_attn.SPLIT_HOST_BACKWARD
    for case in cases:
        for k_, v_ in case.get("env", {}).items():
            os.environ[k_] = v_
        if "split_host_backward" in case:  # the backward's host stage split around the remote stages, or not
            dist_attn.SPLIT_HOST_BACKWARD = case["split_host_backward"]
        if "cast_lists" in case:  # runtimes built for this case take K/V as a list or concatenated
            dist_attn.cast_lists = lambda want=case["cast_lists"]: want and list_casts()
        if "bound_calls" in case:  # the kernel calls of a magi_ffa without FFACall (interface < 1.4)
            runtime_common.bound_calls = lambda want=case["bound_calls"]: want and binds()
        windows_before = None  # the fa4 backend runs documents with a window natively, or not
        if "fa4_varlen_windows" in case:
            windows_before = _fa4_varlen_windows(case["fa4_varlen_windows"])
        T, hq, hk, d, chunk = case["T"], case["hq"], case["hk"], case["d"], case["chunk"]
        qr, kr, tm = case_mask(case)
        torch.manual_seed(case.get("seed", 0))
        dt = getattr(torch, case.get("dtype", "float64"))  # low-precision cases: the reference
        q, k, v = (torch.randn(T, h, d, dtype=torch.float64).to(dt).requires_grad_()  # runs on the
                   for h in (hq, hk, hk))  # same rounded inputs, in float64
        do = torch.randn(T, hq, d, dtype=torch.float64).to(dt)
        sink = (torch.randn(2, hq, dtype=torch.float64, requires_grad=True)
                if case.get("sink") else None)
        softcap = case.get("softcap", 0.0)
        deg = case.get("degree", 1)
        oc = (OverlapConfig(mode=AttnOverlapMode.DYNAMIC, degree=None) if deg == "dynamic"
              else OverlapConfig(degree=deg, max_num_chunks=max(64, deg)))
        pad = compute_pad_size(T, world, chunk)
        dc = {}
        if case.get("dispatch") in ("cost_aware", "cost_aware_unturned", "rotated_sequential"):
            from magi_attention.api import CostAwareDispatchAlg, DispatchConfig
            from magi_attention.config import UNTURNED_CANDIDATES

            kwargs = {"cost_aware": {}, "cost_aware_unturned": {"candidates": UNTURNED_CANDIDATES},
                      "rotated_sequential": {"candidates": ("rotated_sequential",), "chunk_factors": (1,)}}
            dc = {"dispatch_config": DispatchConfig(alg=CostAwareDispatchAlg(**kwargs[case["dispatch"]]))}
        key = magi_attn_flex_key(qr, kr, tm, T, T, hq, hk, d, pad, chunk, group,
                                 DistAttnConfig(overlap_config=oc, **dc))
        lq, lk, lv = dispatch(q, key), dispatch(k, key), dispatch(v, key)
        if case.get("kv_views"):  # k and v as strided views of one buffer, as from a fused projection
            lkv = torch.stack([lk, lv], dim=2)  # [S, hk, 2, d]
            lk, lv = lkv[:, :, 0], lkv[:, :, 1]
            assert not lk.is_contiguous()
        order = None
        if case.get("launch_order"):  # the first calc launched before the casts it does not need
            runtime = runtime_of(key)
            order = _LaunchOrderSpy(runtime) if not runtime.host_calc.empty else None
        want_ml = case.get("max_logits", True)  # the fa4 backend refuses max_logits
        lout, meta = calc_attn(lq, lk, lv, key, sink=sink, softcap=softcap,
                               return_max_logits=want_ml)
        assert lout.dtype == dt, f"{case['name']}: out is {lout.dtype}, not the input dtype {dt}"
        if "dispatch_chunk" in case:  # the dispatch solved coarser than the key's chunk size
            from magi_attention.api import get_position_ids
            from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr

            dm = dist_attn_runtime_dict_mgr.get_mgr(key).dispatch_meta
            want_chunk = case["dispatch_chunk"].get(world, chunk if world > 1 else T)  # world 1: one chunk
            assert dm.chunk_size == want_chunk, f"{case['name']}: dispatch chunk {dm.chunk_size} != {want_chunk}"
            assert pad == 0, f"{case['name']}: the position check assumes no padding"
            positions = dispatch(torch.arange(T, dtype=torch.float64)[:, None], key)[:, 0]
            assert torch.equal(get_position_ids(key).long(), positions.long())
        if "runtime" in case:
            runtime = check_runtime_class(key, case)
            if world > 1 and hasattr(runtime, "plan_stats"):  # and its remote stage is not empty
                assert sum(runtime.plan_stats["per_rank_comm"]) > 0, f"{case['name']}: {runtime.plan_stats}"
        if "cast_lists" in case:
            runtime = runtime_of(key)
            assert runtime.cast_lists == case["cast_lists"], f"{case['name']}: K/V cast path not taken"
        if "bound_calls" in case and world > 1:
            runtime = runtime_of(key)
            calcs = [c for c in (runtime.host_calc, *runtime.stage_calcs) if not c.empty]
            assert calcs and all(bool(c.bound) == case["bound_calls"] for c in calcs), \
                f"{case['name']}: kernel call path not taken"
        gout = undispatch(lout, key)
        out = gout.detach().double()
        lse = undispatch(meta.lse, key)
        reduce_flags = _ReduceFlagSpy() if "fold_at_wait" in case else None
        try:
            gout.backward(do)
        finally:
            if reduce_flags is not None:
                reduce_flags.restore()
        if order is not None:
            order.restore()
            order.check(f"{case['name']} world {world} rank {rank}")
        if world in case.get("host_split", {}):  # on how many ranks the backward split its host stage
            took = ranks_that_split_host(key, group)
            assert took == case["host_split"][world], \
                f"{case['name']}: {took} of {world} ranks split the host stage's backward"
        if reduce_flags is not None and world > 1:  # the dK/dV reduce path the case is about was taken
            assert reduce_flags.folds_at_wait == [case["fold_at_wait"]], \
                f"{case['name']}: reduces issued with fold_at_wait={reduce_flags.folds_at_wait}"
        grads = [x.grad.double() for x in (q, k, v)] + ([sink.grad] if sink is not None else [])
        assert all(x.grad.dtype == dt for x in (q, k, v)), f"{case['name']}: gradient dtypes"
        q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
        s2 = sink.detach().clone().requires_grad_() if sink is not None else None
        ro, rl, rml = ref_attn_dense(q2, k2, v2, qr, kr, tm, softcap=softcap, sink=s2)
        (ro * do.double()).sum().backward()
        refs = [q2.grad, k2.grad, v2.grad] + ([s2.grad] if s2 is not None else [])
        errs = {"out": (out - ro).abs().max().item()}
        fin = torch.isfinite(rl)
        assert torch.equal(fin, torch.isfinite(lse)), f"{case['name']}: lse -inf pattern differs"
        errs["lse"] = (lse[fin] - rl[fin]).abs().max().item() if fin.any() else 0.0
        if want_ml:
            mf = torch.isfinite(rml)
            assert torch.equal(mf, torch.isfinite(meta.max_logits)), f"{case['name']}: max_logits"
            errs["max_logits"] = (meta.max_logits[mf] - rml[mf]).abs().max().item() if mf.any() else 0
        for name, g, r in zip(["dq", "dk", "dv", "dsink"], grads, refs):
            errs[name] = (g - r).abs().max().item()
        tol = case.get("tol", 1e-8)  # fp64 end to end; FA4 hands back an fp32 lse
        for name, e in errs.items():
            assert e < tol, f"{case['name']} world {world} rank {rank}: {name} max error {e:.3e} (fp64)"
        for k_ in case.get("env", {}):
            del os.environ[k_]
        dist_attn.cast_lists, runtime_common.bound_calls = list_casts, binds
        dist_attn.SPLIT_HOST_BACKWARD = split_default
        if windows_before is not None:
            _fa4_varlen_windows(windows_before)
        report.append((case["name"], errs))
    return report


def run_api_checks(rank, world, _args=None):
    """Cache behaviour, deprecations and bad input, all inside one job."""
    import warnings

    import pytest
    from magi_attention.api import (
        calc_attn,
        dispatch,
        get_most_recent_key,
        get_position_ids,
        magi_attn_flex_dispatch,
        magi_attn_flex_key,
        magi_attn_varlen_key,
        make_flex_key_for_new_mask_after_dispatch,
        undispatch,
    )
    from magi_attention.errors import MagiAttentionError
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr as mgrs

    g = dist.group.WORLD
    T, chunk = 64, 8
    args = ([(0, T)], [(0, T)], "causal", T, T, 2, 1, 8, 0, chunk, g)
    k1 = magi_attn_flex_key(*args)
    k2 = magi_attn_flex_key(*args)
    assert k1 == k2 and mgrs.get_mgr(k1) is mgrs.get_mgr(k2)
    assert get_most_recent_key(g) == k1
    # the key's hash is computed once (lookups are per call) and agrees with a fresh computation
    # on an equal key built apart; a key changed with dataclasses.replace hashes its new fields
    import dataclasses

    assert hash(k1) == hash(k2) == hash(k1) and k1 is not k2
    k_other = dataclasses.replace(k1, chunk_size=2 * chunk)
    assert k_other != k1 and hash(k_other) != hash(k1)  # not the cached hash of the key it came from
    assert hash(k_other) == hash(dataclasses.replace(k1, chunk_size=2 * chunk))
    os.environ["MAGI_ATTENTION_DETERMINISTIC_MODE"] = "1"
    k3 = magi_attn_flex_key(*args)
    del os.environ["MAGI_ATTENTION_DETERMINISTIC_MODE"]
    assert k3 != k1 and k3.is_deterministic_mode_enable and get_most_recent_key(g) == k3
    # dispatch round trip, position ids, and transposed gradients
    torch.manual_seed(0)
    x = torch.randn(T, 3, dtype=torch.float64, requires_grad=True)
    lx = dispatch(x, k1)
    assert torch.equal(undispatch(lx, k1), x)
    pos = get_position_ids(k1)
    assert torch.equal(lx.detach(), x.detach()[pos])
    w = torch.randn(T, 3, dtype=torch.float64)
    (undispatch(lx, k1) * w).sum().backward()
    assert torch.allclose(x.grad, w)
    # the all-gather behind both, flat (as on NCCL) and into views: every rank's rows in rank order
    from magi_attention.functional.dispatch import _all_gather

    mine = torch.arange(15, dtype=torch.float64).reshape(5, 3) + 100 * rank
    want = torch.cat([torch.arange(15, dtype=torch.float64).reshape(5, 3) + 100 * r for r in range(world)])
    for flat in (True, False):
        assert torch.equal(_all_gather(mine, world, g, flat=flat), want), f"flat={flat}"
    # per-group LRU of size 2: a second group interleaved does not disturb the first
    os.environ["MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE"] = "2"
    mgrs.clear()
    g2 = [dist.new_group([r]) for r in range(world)][rank]  # other ranks -> other LRU
    a = magi_attn_flex_key(*args)
    b = magi_attn_flex_key(*args[:-1], g2)
    c = magi_attn_varlen_key([0, 32, 64], [0, 32, 64], 2, 1, 8, 0, chunk, g, causal=True)
    _d = magi_attn_varlen_key([0, 16, 64], [0, 16, 64], 2, 1, 8, 0, chunk, g)
    mgrs.get_mgr(b)  # still there (other group)
    with pytest.raises(MagiAttentionError, match="does not exist"):
        dispatch(x, a)  # evicted from g's LRU by c, d
    del os.environ["MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE"]
    # a new mask reusing the dispatch of c
    e = make_flex_key_for_new_mask_after_dispatch([(0, 64)], [(0, 64)], "full", c)
    assert torch.equal(get_position_ids(e), get_position_ids(c))
    # deprecations
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        lx2, k4 = magi_attn_flex_dispatch(x.detach(), *args)
    assert any(issubclass(r.category, DeprecationWarning) for r in rec)
    # bad input -> clear errors on every rank
    bad = [
        (lambda: magi_attn_flex_key([(0, 64)], [(0, 64), (0, 1)], "full", T, T, 2, 1, 8, 0,
                                    chunk, g), "q_ranges has 1"),
        (lambda: magi_attn_flex_key([(0, 80)], [(0, 64)], "full", T, T, 2, 1, 8, 0, chunk, g),
         "beyond total_seqlen"),
        (lambda: magi_attn_flex_key([(0, 64)], [(0, 64)], "full", T, T, 2, 1, 8, 0, 7, g),
         "not divisible by chunk_size"),
        (lambda: magi_attn_flex_key([(0, 64)], [(0, 64)], "full", T, T, 3, 2, 8, 0, chunk, g),
         "multiple of"),
        (lambda: magi_attn_flex_key([(0, 64)], [(0, 64)], "wide", T, T, 2, 1, 8, 0, chunk, g),
         "not a mask type"),
        (lambda: calc_attn(torch.randn(T // world, 4, 8), torch.randn(T // world, 1, 8),
                           torch.randn(T // world, 1, 8), k1), "num_heads_q"),
        (lambda: calc_attn(torch.randn(5, 2, 8), torch.randn(5, 1, 8),
                           torch.randn(5, 1, 8), k1), "shard holds"),
        (lambda: dispatch(torch.randn(T + 1, 2), k1), "dim 0"),
    ]
    for fn, msg in bad:
        with pytest.raises(MagiAttentionError, match=msg):
            fn()
    return True


# ---------------------------------------------------------------------------------------------
# One spawn for the whole suite: spawning and importing cost far more than the fp64 cases.
# Four ranks run the API checks and the world-4 cases on WORLD, then the world-2 cases on two
# disjoint pairs at once ({0,1} and {2,3}), then world-3 on {0,1,2} while rank 3 runs world-1.
# Subgroups also exercise group-rank (not global-rank) addressing in the runtime and grpcoll.
SUITE_WORLD = 4


def outcome(fn, *args):
    """("ok", result) or ("error", traceback): a rank's failure is reported, not raised."""
    import traceback

    try:
        return ("ok", fn(*args))
    except BaseException:  # noqa: BLE001 - reported to the parent test, which fails on it
        return ("error", traceback.format_exc())


def run_world_suite(rank, world, checks, run, cases_by_world):
    """The shared 4-rank layout: ``checks = (key, fn)`` first, then ``run(cases, group)`` on
    WORLD, on two disjoint pairs, on {0,1,2} beside world 1 on rank 3."""
    assert world == SUITE_WORLD, world
    # every rank creates every group in the same order (a collective requirement)
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    trio = dist.new_group([0, 1, 2])
    solo = [dist.new_group([r]) for r in range(world)]
    key, fn = checks
    res = {key: outcome(fn, rank, world)}
    dist.barrier()
    res[4] = outcome(run, cases_by_world[4], None)
    dist.barrier()
    res[2] = outcome(run, cases_by_world[2], pairs[rank // 2])
    dist.barrier()
    if rank < 3:
        res[3] = outcome(run, cases_by_world[3], trio)
    else:
        res[1] = outcome(run, cases_by_world[1], solo[rank])
    dist.barrier()
    if "hier" in cases_by_world:  # hierarchical comm over a 2 (inter) x 2 (intra) mesh
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("inter", "intra"))
        res["hier"] = outcome(run, cases_by_world["hier"], mesh)
    return res


def run_suite(rank, world, cases_by_world):
    """Returns {"api": outcome, world_size: outcome, ...} for this rank's participations."""
    return run_world_suite(rank, world, ("api", run_api_checks), run_cases, cases_by_world)


def run_fa4_cases(rank, world, ffa_tests_dir, cases):
    """The end-to-end cases with the runtime on the fa4 kernel backend: magi_ffa's FA4 stand-in
    (``ffa_tests_dir/_fake_fa4.py``; only listed tiles visited, the mask function on partial tiles
    only), the backend allowed on CPU in float64 as magi_ffa's own fa4 tests set it up."""
    import sys

    sys.path.insert(0, ffa_tests_dir)
    import _fake_fa4

    _fake_fa4.install_backend_on_cpu(_fake_fa4.KeepForTheProcess)
    report = run_cases(cases)
    calls = _fake_fa4.CALLS
    assert calls["fwd"] > 0 and calls["bwd"] > 0, f"the fa4 backend was not used: {calls}"
    return report
