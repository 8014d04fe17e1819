"""QO-comm runtime (MAGI_ATTENTION_QO_COMM=1) end to end on CPU/gloo vs a float64 reference.

One 4-rank spawn runs every case: world 4 on WORLD, world 2 on two disjoint pairs at once, world 3
on {0,1,2} beside world 1 on rank 3. Each case checks out, lse, max_logits, dq, dk, dv (and dsink)
against the dense float64 reference, plus the runtime's ``plan_stats`` against the cast lists it
runs and against the other ranks' view of the plan. fp64 cases go through the runtime's
cast-and-merge lse path, the fp32 case through grpcoll's ``reduce_op="lse"``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from _dist_cases import case_mask, run_world_suite
from magi_attention import env
from magi_attention.errors import EnvFlagError

QO = {"MAGI_ATTENTION_QO_COMM": "1"}
SPAWN_ENV = {"MAGI_ATTENTION_SDPA_BACKEND": "1", "MAGI_ATTENTION_DSINK_ALL_REDUCE_OP": "sum"}


def _mask_area(qr, kr, tm) -> int:
    area = 0
    for (qs, qe), (ks, ke), t in zip(qr, kr, tm):
        lq, lk = qe - qs, ke - ks
        if lq <= 0 or lk <= 0:
            continue
        i = torch.arange(lq)[:, None]
        j = torch.arange(lk)[None, :]
        causal, inv = j <= i + lk - lq, j >= i
        vis = {0: torch.ones(lq, lk, dtype=torch.bool), 1: causal, 2: inv, 3: causal & inv}[t]
        area += int(vis.sum())
    return area


def _check_stats(rt, rank, world, group, mask_area, case):
    """plan_stats agrees with the cast lists, with the mask and with every other rank."""
    s = rt.plan_stats
    name = case["name"]
    assert len(s["per_rank_area"]) == world, name
    g = s["num_head_groups"]
    assert g == (case["hk"] if case.get("env", {}).get("MAGI_ATTENTION_FLATTEN_HEAD_GROUPS") else 1)
    assert sum(s["per_rank_area"]) == g * mask_area, (name, s["per_rank_area"], mask_area)
    assert s["host_area"] + s["remote_area"] == s["per_rank_area"][rank], name
    for which, n in (("q", rt.n_rq), ("kv", rt.n_rk)):
        cast = getattr(rt, f"{which}_cast")
        assert sum(cast.output_split_sizes) == n == s[f"num_remote_{which}_tokens"], name
        foreign = sum(sz for sz, src in zip(cast.output_split_sizes, cast.src_index)
                      if src != rank)
        assert s[f"per_rank_comm_{which}"][rank] == foreign, (name, which, foreign, s)
    assert s["per_rank_comm"] == [a + b for a, b in zip(s["per_rank_comm_q"],
                                                         s["per_rank_comm_kv"])]
    views = [None] * world
    shared = {k: v for k, v in s.items() if k.startswith("per_rank") or k in ("alg", "cost")}
    dist.all_gather_object(views, shared, group=group)
    assert all(v == views[0] for v in views), f"{name}: ranks disagree on the plan"
    return s


def run_qo_cases(cases, group=None):
    """Run each case on ``group``; returns [(name, errs, plan_stats)] or raises AssertionError."""
    from magi_attention.api import (
        DispatchConfig,
        DistAttnConfig,
        calc_attn,
        compute_pad_size,
        dispatch,
        magi_attn_flex_key,
        undispatch,
    )
    from magi_attention.config import CostAwareDispatchAlg, SequentialDispatchAlg
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr
    from magi_attention.runtime.qo_comm import QOCommRuntime
    from magi_ffa.testing import ref_attn_dense

    group = dist.group.WORLD if group is None else group
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    report = []
    for case in cases:
        case_env = dict(QO, **case.get("env", {}))
        os.environ.update(case_env)
        try:
            T, hq, hk, d, chunk = case["T"], case["hq"], case["hk"], case["d"], case["chunk"]
            dtype = case.get("dtype", torch.float64)
            qr, kr, tm = case_mask(case)
            torch.manual_seed(case.get("seed", 0))
            q = torch.randn(T, hq, d, dtype=torch.float64)
            k = torch.randn(T, hk, d, dtype=torch.float64)
            v = torch.randn(T, hk, d, dtype=torch.float64)
            do = torch.randn(T, hq, d, dtype=torch.float64)
            sink = torch.randn(2, hq, dtype=torch.float64) if case.get("sink") else None
            softcap = case.get("softcap", 0.0)
            want_ml = case.get("max_logits", True)
            if case.get("coarse"):  # a dispatch on chunks coarser than the key's: the QO grid is the key's
                alg = CostAwareDispatchAlg(candidates=("sequential",), chunk_factors=(case["coarse"],))
            else:
                alg = SequentialDispatchAlg() if case.get("sequential") else None
            cfg = DistAttnConfig(dispatch_config=DispatchConfig(alg=alg)) if alg else DistAttnConfig()
            assert not cfg.overlap_config.enable, "QO comm must force overlap off"
            key = magi_attn_flex_key(qr, kr, tm, T, T, hq, hk, d, compute_pad_size(T, world, chunk),
                                     chunk, group, cfg)
            assert key.is_qo_comm_enable
            mgr = dist_attn_runtime_dict_mgr.get_mgr(key)
            rt = mgr.runtime
            assert isinstance(rt, QOCommRuntime), type(rt)
            if case.get("coarse") and world in (2, 4):  # 96 tokens: chunks of 24 divide at 2 and 4 ranks
                assert mgr.dispatch_meta.chunk_size == chunk * case["coarse"], mgr.dispatch_meta
            stats = _check_stats(rt, rank, world, group, _mask_area(qr, kr, tm), case)

            xs = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v)]
            s1 = sink.detach().to(dtype).clone().requires_grad_() if sink is not None else None
            lq, lk, lv = (dispatch(t, key) for t in xs)
            lout, meta = calc_attn(lq, lk, lv, key, sink=s1, softcap=softcap,
                                   return_max_logits=want_ml)
            assert lout.dtype == dtype
            out = undispatch(lout, key)
            lse = undispatch(meta.lse, key)
            (out * do.to(dtype)).sum().backward()
            grads = [t.grad for t in xs] + ([s1.grad] if s1 is not None else [])

            r = [t.detach().clone().requires_grad_() for t in (q, k, v)]
            s2 = sink.detach().clone().requires_grad_() if sink is not None else None
            ro, rl, rml = ref_attn_dense(*r, qr, kr, tm, softcap=softcap, sink=s2)
            (ro * do).sum().backward()
            refs = [t.grad for t in r] + ([s2.grad] if s2 is not None else [])

            fin = torch.isfinite(rl)
            assert torch.equal(fin, torch.isfinite(lse)), f"{case['name']}: lse -inf pattern"
            errs = {"out": (out.double() - ro).abs().max().item(),
                    "lse": (lse.double()[fin] - rl[fin]).abs().max().item() if fin.any() else 0.0}
            if want_ml:
                mf = torch.isfinite(rml)
                assert torch.equal(mf, torch.isfinite(meta.max_logits)), case["name"]
                errs["max_logits"] = ((meta.max_logits.double()[mf] - rml[mf]).abs().max().item()
                                      if mf.any() else 0.0)
            else:
                assert meta.max_logits is None
            for nm, gr, rf in zip(["dq", "dk", "dv", "dsink"], grads, refs):
                errs[nm] = (gr.double() - rf).abs().max().item()
            tol = {torch.float64: 1e-9, torch.float32: 2e-4}.get(dtype, 6e-2)
            for nm, e in errs.items():
                assert e < tol, f"{case['name']} world {world} rank {rank}: {nm} error {e:.3e}"
            report.append((case["name"], errs, stats))
        finally:
            for k_ in case_env:
                os.environ.pop(k_, None)
    return report


def run_flag_errors(rank, world):
    """Flatten head groups with a sink or max_logits: a clear error on every rank."""
    from magi_attention.api import calc_attn, dispatch, magi_attn_flex_key
    from magi_attention.errors import MagiAttentionError

    os.environ.update(QO, MAGI_ATTENTION_FLATTEN_HEAD_GROUPS="1")
    try:
        T = 32
        key = magi_attn_flex_key([(0, T)], [(0, T)], "causal", T, T, 4, 2, 8, 0, 8,
                                 dist.group.WORLD)
        q, k, v = (dispatch(torch.randn(T, h, 8, dtype=torch.float64), key) for h in (4, 2, 2))
        with pytest.raises(MagiAttentionError, match="FLATTEN_HEAD_GROUPS.*sink"):
            calc_attn(q, k, v, key, sink=torch.zeros(1, 4, dtype=torch.float64))
        with pytest.raises(MagiAttentionError, match="FLATTEN_HEAD_GROUPS.*max_logits"):
            calc_attn(q, k, v, key, return_max_logits=True)
    finally:
        for k_ in list(QO) + ["MAGI_ATTENTION_FLATTEN_HEAD_GROUPS"]:
            os.environ.pop(k_, None)
    return True


def run_suite(rank, world, cases_by_world):
    return run_world_suite(rank, world, ("flags", run_flag_errors), run_qo_cases, cases_by_world)


def qo_cases(world: int) -> list[dict]:
    base = dict(hq=4, hk=2, d=8, T=96, chunk=8)
    cases = [
        dict(base, name="block-causal-sink", mask="block_causal", block=24, sink=True),
        dict(base, name="shared-question", mask="shared_question", q_len=30,
             answers=[20, 25, 21]),
        dict(base, name="varlen-causal-seq", mask="varlen_causal", cu=[0, 33, 40, 96],
             sequential=True),
        dict(base, name="random-sink-softcap", mask="random", seed=3, sink=True, softcap=5.0,
             T=90),
        dict(base, name="causal-fp32", mask="causal", dtype=torch.float32, sink=True),
        dict(base, name="flatten-gqa", mask="varlen_causal", cu=[0, 50, 96], max_logits=False,
             env={"MAGI_ATTENTION_FLATTEN_HEAD_GROUPS": "1"}),
        dict(base, name="mha-odd-pad", mask="random", seed=7, hq=2, hk=2, T=83, sink=True),
        dict(base, name="causal-seq-bf16-wire", mask="causal", sequential=True,
             dtype=torch.bfloat16),  # partial out / dq / dkv travel in bf16 (comm_dtype)
        # one document of 60 tokens on dispatch chunks of 24: the solver works on the key's chunks of
        # 8 (runtime_mgr.QO_KEY_CHUNK_GRID), so parts of that document may run on another rank
        dict(base, name="varlen-causal-coarse", mask="varlen_causal", cu=[0, 60, 72, 96], coarse=3),
    ]
    return cases[::2] if world in (1, 3) else cases


@pytest.fixture(scope="module")
def qo_suite():
    from magi_attention.testing import run_distributed

    return run_distributed(run_suite, 4, {w: qo_cases(w) for w in (1, 2, 3, 4)}, env=SPAWN_ENV,
                           timeout=420)


def _outcomes(suite, key):
    got = []
    for rank, res in enumerate(suite):
        if key in res:
            status, payload = res[key]
            if status != "ok":
                pytest.fail(f"{key!r} failed on rank {rank}:\n{payload}", pytrace=False)
            got.append((rank, payload))
    return got


@pytest.mark.dist
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_qo_comm_matches_reference(world, qo_suite):
    reports = _outcomes(qo_suite, world)
    assert [r for r, _ in reports] == {1: [3], 2: [0, 1, 2, 3], 3: [0, 1, 2], 4: [0, 1, 2, 3]}[world]
    names = [c["name"] for c in qo_cases(world)]
    for rank, report in reports:
        assert [n for n, _, _ in report] == names, (rank, report)
    if world > 1:  # the dynamic solver really moved Q somewhere (the lse reduce carried data)
        moved = {n: max(sum(s["per_rank_comm_q"]) for r, rep in reports
                        for nn, _, s in rep if nn == n) for n in names}
        assert any(m > 0 for m in moved.values()), moved


@pytest.mark.dist
def test_flatten_head_groups_rejects_sink_and_max_logits(qo_suite):
    assert [r for r, _ in _outcomes(qo_suite, "flags")] == [0, 1, 2, 3]


def test_flag_combinations(monkeypatch):
    monkeypatch.setenv("MAGI_ATTENTION_QO_COMM", "1")
    assert env.check_flag_comb().qo_comm
    monkeypatch.setenv("MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE", "1")
    with pytest.raises(EnvFlagError, match="BWD_HIDE_TAIL_REDUCE=1 with MAGI_ATTENTION_QO_COMM"):
        env.check_flag_comb()
    monkeypatch.delenv("MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE")
    monkeypatch.setenv("MAGI_ATTENTION_HIERARCHICAL_COMM", "1")
    with pytest.raises(EnvFlagError, match="HIERARCHICAL_COMM=1 with MAGI_ATTENTION_QO_COMM"):
        env.check_flag_comb()


def test_group_major_layout_round_trip():
    from magi_attention.runtime.qo_comm import _from_groups, _to_groups

    x = torch.randn(5, 6, 3)
    y = _to_groups(x, 3)
    assert y.shape == (15, 2, 3)
    assert torch.equal(y[2 * 5 + 4], x[4, 4:6])  # group 2, token 4
    assert torch.equal(_from_groups(y, 3), x)
    lse = torch.randn(5, 6)
    assert torch.equal(_from_groups(_to_groups(lse, 2), 2), lse)


def test_lse_merge_rows_matches_logsumexp():
    from magi_attention.runtime.qo_comm import _lse_merge_rows

    torch.manual_seed(1)
    out = torch.randn(4, 2, 3, dtype=torch.float64)
    lse = torch.randn(4, 2, dtype=torch.float64)
    lse[3] = float("-inf")  # an owner row with nothing yet
    out[3] = 0
    rows = torch.tensor([0, 0, 2, 3])
    r_out = torch.randn(4, 2, 3, dtype=torch.float64)
    r_lse = torch.randn(4, 2, dtype=torch.float64)
    r_lse[3, 1] = float("-inf")  # a partial that saw nothing for one head
    exp_out, exp_lse = out.clone(), lse.clone()
    for i in range(4):
        terms = [(out[i], lse[i])] + [(r_out[j], r_lse[j]) for j in range(4) if rows[j] == i]
        ls = torch.stack([t[1] for t in terms])
        tot = torch.logsumexp(ls, 0)
        w = torch.exp(ls - torch.where(torch.isinf(tot), torch.zeros_like(tot), tot))
        exp_lse[i] = tot
        exp_out[i] = sum(w[n].unsqueeze(-1) * terms[n][0] for n in range(len(terms)))
    _lse_merge_rows(out, lse, rows, r_out, r_lse)
    assert torch.allclose(lse, exp_lse, atol=1e-12) and torch.isinf(lse[3, 1])
    assert torch.allclose(out, exp_out, atol=1e-12) and torch.equal(out[3, 1], torch.zeros(3))
