"""Dynamic attention solver (QO comm): exact coverage, balance, sender/receiver agreement of the
Q and KV casts, determinism, NCQ == KV-only, flattened head groups, bad input.

Every check maps the plan back to global coordinates and compares with a dense brute-force mask.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque

import numpy as np
import pytest
from _masks import dense_mask, slice_cells
from magi_solver import (
    DynamicPlan,
    RangeError,
    make_dispatch_meta,
    make_dist_attn_plan,
    make_dynamic_plan,
)

ALGS = ["ncq", "grg", "binary_greedy"]


# ---- brute-force references (contract predicate, no solver code) ----


def expand(m: np.ndarray, groups: int) -> np.ndarray:
    """Block-diagonal replication: the mask of the flattened head-group space."""
    total = m.shape[0]
    out = np.zeros((total * groups, total * groups), np.int64)
    for g in range(groups):
        out[g * total : (g + 1) * total, g * total : (g + 1) * total] = m
    return out


def positions(ranges) -> np.ndarray:
    """Global token of each position of a buffer holding `ranges` back to back."""
    if not ranges:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(s, e, dtype=np.int64) for s, e in ranges])


def random_mask(rng: random.Random, total: int):
    """Random slices of all four types: documents, plus free slices (overlaps, empty rows allowed)."""
    qr, kr, ts = [], [], []
    pos = 0
    while pos < total:
        ln = min(total - pos, rng.randint(1, max(1, total // 3)))
        if rng.random() < 0.8:
            qr.append((pos, pos + ln))
            kr.append((pos, pos + ln))
            ts.append(rng.randint(0, 3))
        pos += ln
    for _ in range(rng.randint(0, 3)):
        qs, qe = sorted(rng.randint(0, total) for _ in range(2))
        ks, ke = sorted(rng.randint(0, total) for _ in range(2))
        qr.append((qs, qe))
        kr.append((ks, ke))
        ts.append(rng.randint(0, 3))
    return qr, kr, ts


def add_calc(cover: np.ndarray, calc, qpos: np.ndarray, kpos: np.ndarray) -> None:
    q, k, t = calc.as_arrays()
    area = 0
    for (qs, qe), (ks, ke), ty in zip(q.tolist(), k.tolist(), t.tolist()):
        assert 0 <= qs < qe <= len(qpos), "q range outside its buffer"
        assert 0 <= ks < ke <= len(kpos), "k range outside its buffer"
        cells = slice_cells(qe - qs, ke - ks, ty)
        area += int(cells.sum())
        cover[np.ix_(qpos[qs:qe], kpos[ks:ke])] += cells
    assert area == calc.area


def cover_of(plan: DynamicPlan) -> tuple[np.ndarray, list[int]]:
    """Cells computed by every rank's host + remote calc (global) and each rank's area."""
    n = plan.total_seqlen
    total = np.zeros((n, n), np.int64)
    areas = []
    for r in range(plan.cp_size):
        rp = plan.rank_plan(r)
        cov = np.zeros_like(total)
        hp = positions(rp.host_ranges)
        add_calc(cov, rp.host_calc, hp, hp)
        add_calc(cov, rp.remote_calc, positions(rp.remote_q_ranges), positions(rp.remote_kv_ranges))
        # host calc touches only what the rank holds
        assert rp.num_remote_q_tokens == len(positions(rp.remote_q_ranges))
        assert rp.num_remote_kv_tokens == len(positions(rp.remote_kv_ranges))
        areas.append(int(cov.sum()))
        total += cov
    return total, areas


def bucket_cover(plan: DynamicPlan, r: int) -> np.ndarray:
    n = plan.total_seqlen
    out = np.zeros((n, n), np.int64)
    for (qs, qe), (ks, ke), t in plan.buckets(r):
        out[qs:qe, ks:ke] += slice_cells(qe - qs, ke - ks, t)
    return out


def simulate_cast(plan: DynamicPlan, which: str) -> None:
    """group_cast semantics (api §8.2) on buffers holding global positions: every rank's output
    must equal its remote buffer, and every sent split must be consumed."""
    cp = plan.cp_size
    queues: dict[tuple[int, int], deque] = defaultdict(deque)
    for p in range(cp):
        rp = plan.rank_plan(p)
        cast = getattr(rp, f"{which}_cast")
        local = positions(rp.host_ranges)
        assert sum(cast.input_split_sizes) == len(local)
        assert len(cast.dst_indices) == len(cast.input_split_sizes)
        off = 0
        for size, dsts in zip(cast.input_split_sizes, cast.dst_indices):
            assert size > 0
            assert dsts == sorted(set(dsts)) and all(0 <= d < cp for d in dsts)
            for d in dsts:
                queues[(p, d)].append(local[off : off + size])
            off += size
    for d in range(cp):
        rp = plan.rank_plan(d)
        cast = getattr(rp, f"{which}_cast")
        expect = positions(getattr(rp, f"remote_{which}_ranges"))
        got = []
        for size, src in zip(cast.output_split_sizes, cast.src_index):
            piece = queues[(src, d)].popleft()
            assert len(piece) == size, f"rank {d} expects {size} tokens from {src}, got {len(piece)}"
            got.append(piece)
        got_arr = np.concatenate(got) if got else np.zeros(0, np.int64)
        np.testing.assert_array_equal(got_arr, expect)
        red = cast.transpose()
        assert red.input_split_sizes == cast.output_split_sizes and red.dst_index == cast.src_index
        assert red.output_split_sizes == cast.input_split_sizes and red.src_indices == cast.dst_indices
    assert all(len(q) == 0 for q in queues.values()), "some sent splits were never received"


def build(rng: random.Random, cp: int, chunk: int, per_rank: int):
    total = cp * chunk * per_rank
    qr, kr, ts = random_mask(rng, total)
    meta = make_dispatch_meta(qr, kr, ts, total, chunk, cp)
    return qr, kr, ts, total, meta


def comm_of(plan: DynamicPlan, r: int) -> int:
    rp = plan.rank_plan(r)
    held = set(positions(rp.host_ranges).tolist())
    need = set(positions(rp.remote_q_ranges).tolist()) - held
    need_kv = set(positions(rp.remote_kv_ranges).tolist()) - held
    return len(need) + len(need_kv)


# ---- tests ----


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("seed", range(6))
def test_coverage_exact_and_args_consistent(alg: str, seed: int) -> None:
    rng = random.Random(seed * 7 + len(alg))
    cp = rng.choice([1, 2, 3, 4])
    qr, kr, ts, total, meta = build(rng, cp, rng.choice([2, 4, 5]), rng.choice([1, 2, 3]))
    plan = make_dynamic_plan(qr, kr, ts, meta, alg=alg, seed=seed)
    assert plan.cp_size == cp and plan.alg == alg and plan.total_seqlen == total
    ref = dense_mask(qr, kr, ts, total)
    cover, areas = cover_of(plan)
    np.testing.assert_array_equal(cover, ref)
    assert areas == plan.per_rank_area
    buckets = sum(bucket_cover(plan, r) for r in range(cp))
    np.testing.assert_array_equal(buckets, ref)
    for r in range(cp):
        rp = plan.rank_plan(r)
        assert rp.host_ranges == meta.host_ranges_per_rank[r]
        assert plan.per_rank_comm[r] == comm_of(plan, r)
        assert int(bucket_cover(plan, r).sum()) == plan.per_rank_area[r]
    simulate_cast(plan, "q")
    simulate_cast(plan, "kv")


@pytest.mark.parametrize("alg", ALGS)
def test_host_calc_is_local_and_remote_needs_remote(alg: str) -> None:
    rng = random.Random(11)
    qr, kr, ts, total, meta = build(rng, 4, 4, 2)
    plan = make_dynamic_plan(qr, kr, ts, meta, alg=alg)
    for r in range(4):
        rp = plan.rank_plan(r)
        held = set(positions(rp.host_ranges).tolist())
        # the remote buffers never hold a row only a host cell needs: each remote cell has q or k foreign
        rq, rk = positions(rp.remote_q_ranges), positions(rp.remote_kv_ranges)
        q, k, t = rp.remote_calc.as_arrays()
        for (qs, qe), (ks, ke), ty in zip(q.tolist(), k.tolist(), t.tolist()):
            cells = slice_cells(qe - qs, ke - ks, ty)
            ii, jj = np.nonzero(cells)
            foreign = [(rq[qs + a] not in held) or (rk[ks + b] not in held) for a, b in zip(ii, jj)]
            assert all(foreign), "a cell with q and k both local was put in the remote calc"


@pytest.mark.parametrize("alg", ["grg", "binary_greedy"])
@pytest.mark.parametrize("seed", range(4))
def test_balance_when_feasible(alg: str, seed: int) -> None:
    rng = random.Random(100 + seed)
    cp = rng.choice([2, 4, 8])
    total = cp * 8 * 4
    qr, kr, ts = [], [], []
    pos = 0
    while pos < total:  # long-tailed causal documents
        ln = min(total - pos, int(rng.paretovariate(1.2) * 6))
        qr.append((pos, pos + ln))
        kr.append((pos, pos + ln))
        ts.append(1)
        pos += ln
    meta = make_dispatch_meta(qr, kr, ts, total, 8, cp)
    plan = make_dynamic_plan(qr, kr, ts, meta, alg=alg, seed=seed)
    area = plan.per_rank_area
    assert sum(area) == int(dense_mask(qr, kr, ts, total).sum())
    if plan.feasible:
        assert max(area) <= 1.10 * sum(area) / cp + 1e-9
    else:
        assert max(area) > 1.10 * sum(area) / cp


def test_binary_greedy_balances_what_ncq_cannot() -> None:
    """A dispatch forced unbalanced (sequential): NCQ is infeasible, BinaryGreedy moves cells."""
    cp, chunk, total = 4, 4, 64
    qr, kr, ts = [(0, total)], [(0, total)], [1]
    meta = make_dispatch_meta(qr, kr, ts, total, chunk, cp, alg="sequential")
    ncq = make_dynamic_plan(qr, kr, ts, meta, alg="ncq")
    bg = make_dynamic_plan(qr, kr, ts, meta, alg="binary_greedy")
    assert not ncq.feasible
    assert bg.feasible and max(bg.per_rank_area) <= 1.10 * sum(bg.per_rank_area) / cp
    assert max(bg.per_rank_area) < max(ncq.per_rank_area)
    assert sum(bg.per_rank_comm_q) > 0  # balancing needed q movement
    np.testing.assert_array_equal(cover_of(bg)[0], dense_mask(qr, kr, ts, total))
    simulate_cast(bg, "q")
    simulate_cast(bg, "kv")


@pytest.mark.parametrize("alg", ALGS)
def test_deterministic(alg: str) -> None:
    rng = random.Random(5)
    qr, kr, ts, total, meta = build(rng, 4, 4, 3)

    def canon(p: DynamicPlan):
        out = [p.feasible, p.per_rank_area, p.per_rank_comm, p.cost]
        for r in range(p.cp_size):
            rp = p.rank_plan(r)
            out.append(
                (
                    p.buckets(r),
                    rp.remote_q_ranges,
                    rp.remote_kv_ranges,
                    rp.host_calc.q_ranges,
                    rp.remote_calc.k_ranges,
                    rp.q_cast.dst_indices,
                    rp.kv_cast.src_index,
                )
            )
        return out

    first = canon(make_dynamic_plan(qr, kr, ts, meta, alg=alg, seed=3))
    for _ in range(2):
        assert canon(make_dynamic_plan(qr, kr, ts, meta, alg=alg, seed=3)) == first
    # a subset of ranks gives the same per-rank plans
    sub = make_dynamic_plan(qr, kr, ts, meta, alg=alg, seed=3, ranks=[2])
    assert sub.built_ranks == [2]
    assert (
        sub.rank_plan(2).remote_calc.q_ranges
        == make_dynamic_plan(qr, kr, ts, meta, alg=alg, seed=3).rank_plan(2).remote_calc.q_ranges
    )
    with pytest.raises(RangeError, match="not built"):
        sub.rank_plan(0)


@pytest.mark.parametrize("seed", range(5))
def test_ncq_is_kv_only(seed: int) -> None:
    rng = random.Random(200 + seed)
    cp = rng.choice([2, 4])
    qr, kr, ts, total, meta = build(rng, cp, 4, 2)
    plan = make_dynamic_plan(qr, kr, ts, meta, alg="ncq")
    static = make_dist_attn_plan(qr, kr, ts, meta)
    for r in range(cp):
        held = set(positions(meta.host_ranges_per_rank[r]).tolist())
        for (qs, qe), _, _ in plan.buckets(r):
            assert set(range(qs, qe)) <= held, "NCQ put a cell away from its q owner"
        assert plan.per_rank_comm_q[r] == 0
        srp = static.rank_plan(r)
        assert plan.per_rank_comm_kv[r] == sum(e - s for s, e in srp.remote_k_ranges)
        static_area = srp.host_calc.area + sum(st.calc.area for st in srp.stages)
        assert plan.per_rank_area[r] == static_area


def test_flatten_head_groups_splits_groups() -> None:
    """One indivisible cell per group: only flattening lets two GQA groups run on two ranks."""
    total, chunk, cp = 16, 4, 2
    qr, kr, ts = [(0, 4)], [(0, 4)], [0]
    meta = make_dispatch_meta(qr, kr, ts, total, chunk, cp)
    plain = make_dynamic_plan(qr, kr, ts, meta, num_heads_q=4, num_heads_kv=2)
    assert plain.num_head_groups == 1 and not plain.feasible
    flat = make_dynamic_plan(qr, kr, ts, meta, num_heads_q=4, num_heads_kv=2, flatten_head_groups=True)
    assert flat.num_head_groups == 2 and flat.total_seqlen == 2 * total and flat.flatten_head_groups
    assert flat.feasible and flat.per_rank_area == [16, 16]
    groups_on = [{qs // total for (qs, _), _, _ in flat.buckets(r)} for r in range(cp)]
    assert groups_on[0] and groups_on[1] and groups_on[0].isdisjoint(groups_on[1])
    np.testing.assert_array_equal(cover_of(flat)[0], expand(dense_mask(qr, kr, ts, total), 2))
    simulate_cast(flat, "q")
    simulate_cast(flat, "kv")


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("seed", range(3))
def test_flatten_coverage_random(alg: str, seed: int) -> None:
    rng = random.Random(300 + seed)
    qr, kr, ts, total, meta = build(rng, rng.choice([2, 3, 4]), 4, 2)
    plan = make_dynamic_plan(
        qr, kr, ts, meta, alg=alg, num_heads_q=6, num_heads_kv=3, flatten_head_groups=True, seed=seed
    )
    assert plan.num_head_groups == 3
    for r in range(plan.cp_size):  # the local buffer is group-major
        expect = [(g * total + s, g * total + e) for g in range(3) for s, e in meta.host_ranges_per_rank[r]]
        np.testing.assert_array_equal(positions(plan.rank_plan(r).host_ranges), positions(expect))
    np.testing.assert_array_equal(cover_of(plan)[0], expand(dense_mask(qr, kr, ts, total), 3))
    simulate_cast(plan, "q")
    simulate_cast(plan, "kv")


def test_cost_factors_shift_the_tradeoff() -> None:
    """With free communication BinaryGreedy only minimises the maximum area; with free compute
    it never moves more than KV-only does."""
    cp, chunk, total = 4, 4, 64
    rng = random.Random(9)
    qr, kr, ts = random_mask(rng, total)
    meta = make_dispatch_meta(qr, kr, ts, total, chunk, cp)
    ncq = make_dynamic_plan(qr, kr, ts, meta, alg="ncq")
    cheap_comm = make_dynamic_plan(qr, kr, ts, meta, comm_cost_factor=0.0)
    assert max(cheap_comm.per_rank_area) <= max(ncq.per_rank_area)
    cheap_calc = make_dynamic_plan(qr, kr, ts, meta, calc_cost_factor=0.0)
    assert cheap_calc.cost <= make_dynamic_plan(qr, kr, ts, meta, alg="ncq", calc_cost_factor=0.0).cost + 1e-9


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"alg": "simplex"}, "alg="),
        ({"num_heads_q": 3, "num_heads_kv": 2}, "multiple of num_heads_kv"),
        ({"num_heads_kv": 0}, "num_heads_kv=0"),
        ({"calc_cost_factor": -1.0}, "calc_cost_factor"),
        ({"comm_cost_factor": float("nan")}, "comm_cost_factor"),
        ({"seed": -1}, "seed=-1"),
        ({"ranks": [4]}, "ranks contains 4"),
        ({"ranks": []}, "ranks=\\[\\]"),
    ],
)
def test_bad_params_raise(kwargs, needle: str) -> None:
    qr, kr, ts = [(0, 32)], [(0, 32)], [1]
    meta = make_dispatch_meta(qr, kr, ts, 32, 4, 4)
    with pytest.raises(RangeError, match=needle):
        make_dynamic_plan(qr, kr, ts, meta, **kwargs)


@pytest.mark.parametrize(
    "qr, kr, ts, needle",
    [
        ([(5, 2)], [(0, 4)], [0], "inverted"),
        ([(0, 4)], [(0, 40)], [0], "outside"),
        ([(0, 4)], [(0, 4)], [7], "mask_types\\[0\\]=7"),
        ([(0, 4), (4, 8)], [(0, 4)], [0], "must be equal"),
    ],
)
def test_bad_mask_raises(qr, kr, ts, needle: str) -> None:
    meta = make_dispatch_meta([(0, 32)], [(0, 32)], [1], 32, 4, 4)
    with pytest.raises(RangeError, match=needle) as ei:
        make_dynamic_plan(qr, kr, ts, meta)
    assert "make_dynamic_plan()" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_buckets_bad_rank_and_repr() -> None:
    meta = make_dispatch_meta([(0, 32)], [(0, 32)], [1], 32, 4, 4)
    plan = make_dynamic_plan([(0, 32)], [(0, 32)], [1], meta)
    with pytest.raises(RangeError, match="rank=9"):
        plan.buckets(9)
    with pytest.raises(RangeError, match="rank=-1"):
        plan.rank_plan(-1)
    assert "DynamicPlan(cp_size=4" in repr(plan)
    assert "DynamicRankPlan(rank=1" in repr(plan.rank_plan(1))
    assert "DynCastArgs(" in repr(plan.rank_plan(1).q_cast)
    assert len(plan.per_rank_comm) == 4


def test_independent_of_thread_count() -> None:
    """Ranks may run different OpenMP thread counts; the plan must not depend on it."""
    import os
    import subprocess
    import sys

    code = (
        "import hashlib\n"
        "from magi_solver import make_dispatch_meta, make_dynamic_plan\n"
        "qr=[(0,40),(40,100),(100,128),(10,30)]; kr=[(0,40),(0,100),(60,128),(50,90)]; ts=[1,3,0,2]\n"
        "meta=make_dispatch_meta(qr,kr,ts,128,4,4)\n"
        "h=hashlib.sha1()\n"
        "for alg in ['grg','binary_greedy']:\n"
        "    p=make_dynamic_plan(qr,kr,ts,meta,alg=alg,num_heads_q=4,num_heads_kv=2,flatten_head_groups=True)\n"
        "    h.update(repr([p.buckets(r) for r in range(4)]+[p.rank_plan(r).q_cast.dst_indices for r in range(4)]).encode())\n"
        "print(h.hexdigest())\n"
    )
    outs = set()
    for n in ("1", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=n)
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        outs.add(proc.stdout.strip())
    assert len(outs) == 1
