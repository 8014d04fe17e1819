"""Static distributed attention plan: exact cell coverage, minimal remote ranges, transfer
symmetry, cast-argument sanity, equal stage counts, determinism, dynamic/greedy modes, bad input.

Every check maps the plan back to global coordinates and compares with a dense brute-force mask.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from _masks import dense_mask, slice_cells
from magi_solver import (
    DistAttnPlan,
    OverlapParams,
    RangeError,
    make_dispatch_meta,
    make_dist_attn_plan,
)
from test_dispatch import random_mask, varlen_mask


def positions(ranges) -> np.ndarray:
    """Global token of each local position of a buffer holding `ranges` back to back."""
    if not ranges:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(s, e, dtype=np.int64) for s, e in ranges])


def add_calc(cover: np.ndarray, calc, qpos: np.ndarray, kpos: np.ndarray) -> None:
    q, k, t = calc.as_arrays()
    assert q.dtype == np.int32 and q.shape == (len(calc), 2) and t.shape == (len(calc),)
    area = 0
    for (qs, qe), (ks, ke), ty in zip(q.tolist(), k.tolist(), t.tolist()):
        assert 0 <= qs < qe <= len(qpos), "q range outside the host buffer"
        assert 0 <= ks < ke <= len(kpos), "k range outside its KV buffer"
        cells = slice_cells(qe - qs, ke - ks, ty)
        area += int(cells.sum())
        cover[np.ix_(qpos[qs:qe], kpos[ks:ke])] += cells
    assert area == calc.area
    assert list(map(tuple, q.tolist())) == calc.q_ranges and calc.mask_types == t.tolist()


def ranges_of(mask_1d: np.ndarray) -> list[tuple[int, int]]:
    """Merged ranges of the True positions."""
    out, idx = [], np.flatnonzero(mask_1d)
    for i in idx.tolist():
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def canon(plan: DistAttnPlan) -> list:
    out = [plan.cp_size, plan.num_stages]
    for r in plan.built_ranks:
        rp = plan.rank_plan(r)
        out.append((rp.host_q_ranges, rp.remote_k_ranges, rp.host_calc.q_ranges, rp.host_calc.k_ranges,
                    rp.host_calc.mask_types))
        for st in rp.stages:
            c = st.cast
            out.append((st.remote_k_ranges, st.calc.q_ranges, st.calc.k_ranges, st.calc.mask_types,
                        c.input_split_sizes, c.dst_indices, c.output_split_sizes, c.src_index))
    return out


def check_plan(qr, kr, ts, total: int, meta, plan: DistAttnPlan) -> None:
    """All invariants of the plan against the dense mask."""
    cp, ns = meta.cp_size, plan.num_stages
    dense = dense_mask(qr, kr, ts, total)
    cover = np.zeros_like(dense)
    assert plan.cp_size == cp and plan.built_ranks == list(range(cp))
    if cp == 1:
        assert ns == 0
    rps = [plan.rank_plan(r) for r in range(cp)]
    for r, rp in enumerate(rps):
        assert rp.rank == r and len(rp.stages) == ns
        assert rp.host_q_ranges == rp.host_k_ranges == meta.host_ranges_per_rank[r]
        hpos = positions(rp.host_q_ranges)
        add_calc(cover, rp.host_calc, hpos, hpos)
        # remote k ranges: exactly the keys the host rows touch, minus what the rank holds
        held = np.zeros(total, bool)
        held[hpos] = True
        touched = dense[hpos].any(axis=0)
        assert rp.remote_k_ranges == ranges_of(touched & ~held)
        stage_union = np.zeros(total, np.int64)
        for st in rp.stages:
            kpos = positions(st.remote_k_ranges)
            assert st.num_recv_tokens == len(kpos)
            assert all(a < b for a, b in st.remote_k_ranges)
            assert all(st.remote_k_ranges[i][1] < st.remote_k_ranges[i + 1][0]
                       for i in range(len(st.remote_k_ranges) - 1))
            stage_union[kpos] += 1
            add_calc(cover, st.calc, hpos, kpos)
            c = st.cast
            assert sum(c.input_split_sizes) == meta.shard_seqlen
            assert len(c.dst_indices) == len(c.input_split_sizes)
            assert all(x >= 0 for x in c.input_split_sizes)
            for d in c.dst_indices:
                assert d == sorted(set(d)) and r not in d and all(0 <= x < cp for x in d)
            assert sum(c.output_split_sizes) == st.num_recv_tokens
            assert len(c.src_index) == len(c.output_split_sizes)
            assert all(0 <= s < cp and s != r for s in c.src_index)
        np.testing.assert_array_equal(stage_union > 0, touched & ~held)
        assert stage_union.max(initial=0) <= 1, "a remote key is fetched by two stages"
    np.testing.assert_array_equal(cover, dense)  # every cell exactly once across all ranks
    # transfer symmetry per stage: what i sends to j (from its cast args and host buffer) is, in
    # order, what j's buffer holds from i
    for s in range(ns):
        for i in range(cp):
            ci, hpos_i = rps[i].stages[s].cast, positions(rps[i].host_k_ranges)
            starts = np.concatenate([[0], np.cumsum(ci.input_split_sizes)])
            for j in range(cp):
                sent = [hpos_i[starts[t]:starts[t + 1]] for t, d in enumerate(ci.dst_indices) if j in d]
                sent_arr = np.concatenate(sent) if sent else np.zeros(0, np.int64)
                cj = rps[j].stages[s].cast
                kpos_j = positions(rps[j].stages[s].remote_k_ranges)
                ostarts = np.concatenate([[0], np.cumsum(cj.output_split_sizes)])
                got = [kpos_j[ostarts[t]:ostarts[t + 1]] for t, src in enumerate(cj.src_index) if src == i]
                got_arr = np.concatenate(got) if got else np.zeros(0, np.int64)
                np.testing.assert_array_equal(sent_arr, got_arr, err_msg=f"stage {s}: {i}->{j}")


def build(qr, kr, ts, total, chunk, cp, overlap=None, alg="min_heap", ranks=None):
    meta = make_dispatch_meta(qr, kr, ts, total, chunk, cp, alg)
    plan = make_dist_attn_plan(qr, kr, ts, meta, overlap or OverlapParams(), ranks)
    return meta, plan


OVERLAPS = [
    OverlapParams(),
    OverlapParams(degree=3, min_chunk_size=2),
    OverlapParams(degree=4, min_chunk_size=1, max_num_chunks=6),
    OverlapParams(enable=False),
    OverlapParams(degree=2, min_chunk_size=3, alg="greedy", calc_cost_factor=0.05),
    OverlapParams(mode="dynamic", dynamic_max_degree=4, min_chunk_size=2, comm_cost_factor=3.0),
    OverlapParams(mode="dynamic", alg="greedy", min_chunk_size=1, max_num_chunks=8),
    OverlapParams(degree=3, min_chunk_size=2, random_costs=True, random_seed=4),
]


@pytest.mark.parametrize("seed", range(16))
def test_random_masks_invariants(seed: int) -> None:
    rng = random.Random(100 + seed)
    cp = rng.choice([1, 2, 3, 4, 5, 8])
    chunk = rng.choice([1, 2, 3, 4])
    total = chunk * cp * rng.randint(1, 4)
    pad = rng.randint(0, chunk * cp - 1) if total > chunk * cp else 0
    qr, kr, ts = random_mask(rng, total, pad)
    ov = OVERLAPS[seed % len(OVERLAPS)]
    alg = rng.choice(["min_heap", "sequential", "random_select", "topp_heap"])
    meta, plan = build(qr, kr, ts, total, chunk, cp, ov, alg)
    check_plan(qr, kr, ts, total, meta, plan)


@pytest.mark.parametrize("cp", [16, 32, 64])
def test_large_cp_small_lengths(cp: int) -> None:
    rng = random.Random(cp)
    total = cp * 2 * 2
    qr, kr, ts = random_mask(rng, total, pad=3)
    meta, plan = build(qr, kr, ts, total, 2, cp, OverlapParams(degree=2, min_chunk_size=2))
    check_plan(qr, kr, ts, total, meta, plan)


@pytest.mark.parametrize("ov", OVERLAPS, ids=repr)
def test_varlen_all_types_each_overlap(ov) -> None:
    rng = random.Random(5)
    qr, kr, ts = varlen_mask(rng, 96, causal=False)
    qr += [(40, 60)]  # one extra FULL slice on rows of other docs, over keys no doc uses there
    kr += [(90, 96)]
    ts += [0]
    if dense_mask(qr, kr, ts, 96).max() > 1:
        qr, kr, ts = qr[:-1], kr[:-1], ts[:-1]
    meta, plan = build(qr, kr, ts, 96, 3, 4, ov)
    check_plan(qr, kr, ts, 96, meta, plan)


def test_cp1_whole_mask_on_host() -> None:
    qr, kr, ts = random_mask(random.Random(9), 30, pad=2)
    meta, plan = build(qr, kr, ts, 30, 3, 1)
    assert plan.num_stages == 0 and plan.rank_plan(0).stages == []
    assert plan.rank_plan(0).remote_k_ranges == []
    check_plan(qr, kr, ts, 30, meta, plan)


def test_full_causal_merges_to_few_slices() -> None:
    """One CAUSAL slice over the whole sequence: per host chunk at most FULL + CAUSAL, merged."""
    meta, plan = build([(0, 64)], [(0, 64)], [1], 64, 4, 4, OverlapParams(degree=2, min_chunk_size=4))
    for r in range(4):
        hc = plan.rank_plan(r).host_calc
        assert len(hc) == 4 and hc.mask_types == [1, 1, 1, 1]
    check_plan([(0, 64)], [(0, 64)], [1], 64, meta, plan)


def test_empty_stages_are_valid() -> None:
    """Block-diagonal FULL: nothing remote, yet every stage exists with zero-length splits."""
    qr = [(i * 8, (i + 1) * 8) for i in range(4)]
    meta, plan = build(qr, qr, [0] * 4, 32, 8, 4, OverlapParams(degree=3, min_chunk_size=1), "sequential")
    assert plan.num_stages == 3
    for r in range(4):
        rp = plan.rank_plan(r)
        assert rp.remote_k_ranges == []
        for st in rp.stages:
            assert st.num_recv_tokens == 0 and len(st.calc) == 0 and st.cast.output_split_sizes == []
            assert st.cast.input_split_sizes == [8] and st.cast.dst_indices == [[]]
    check_plan(qr, qr, [0] * 4, 32, meta, plan)


def test_deterministic_and_rank_subsets() -> None:
    rng = random.Random(11)
    qr, kr, ts = random_mask(rng, 96, pad=5)
    for ov in OVERLAPS:
        meta, full = build(qr, kr, ts, 96, 3, 8, ov)
        assert canon(full) == canon(make_dist_attn_plan(qr, kr, ts, meta, ov))
        sub = make_dist_attn_plan(qr, kr, ts, meta, ov, ranks=[5, 2])
        assert sub.built_ranks == [2, 5] and sub.num_stages == full.num_stages
        for r in (2, 5):
            one = DistAttnPlanView(sub, r)
            assert one == DistAttnPlanView(full, r)
        with pytest.raises(RangeError, match="rank=3 was not built"):
            sub.rank_plan(3)


class DistAttnPlanView:
    """Comparable snapshot of one rank's plan."""

    def __init__(self, plan, r):
        rp = plan.rank_plan(r)
        self.v = (rp.remote_k_ranges, rp.host_calc.q_ranges, rp.host_calc.k_ranges, rp.host_calc.mask_types,
                  [(s.remote_k_ranges, s.calc.q_ranges, s.calc.k_ranges, s.calc.mask_types,
                    s.cast.input_split_sizes, s.cast.dst_indices, s.cast.output_split_sizes,
                    s.cast.src_index) for s in rp.stages])

    def __eq__(self, other):
        return self.v == other.v


def test_dynamic_mode_same_stage_count_everywhere() -> None:
    rng = random.Random(2)
    qr, kr, ts = varlen_mask(rng, 256, causal=True)
    meta = make_dispatch_meta(qr, kr, ts, 256, 4, 8)
    counts = set()
    for ccf in [0.001, 0.1, 1.0, 10.0]:
        ov = OverlapParams(mode="dynamic", dynamic_max_degree=5, min_chunk_size=2, calc_cost_factor=ccf)
        plan = make_dist_attn_plan(qr, kr, ts, meta, ov)
        assert 1 <= plan.num_stages <= 5
        assert {len(plan.rank_plan(r).stages) for r in range(8)} == {plan.num_stages}
        counts.add(plan.num_stages)
        check_plan(qr, kr, ts, 256, meta, plan)
    assert len(counts) >= 2, "the cost factors should change the chosen degree"
    # dynamic_max_degree=0: no limit but max_num_chunks
    ov = OverlapParams(mode="dynamic", dynamic_max_degree=0, min_chunk_size=1, max_num_chunks=12,
                       calc_cost_factor=0.001, alg="greedy")
    plan = make_dist_attn_plan(qr, kr, ts, meta, ov)
    assert 1 <= plan.num_stages <= 12
    check_plan(qr, kr, ts, 256, meta, plan)


def test_greedy_hides_comm_at_least_as_well_as_uniform() -> None:
    """Greedy is never worse than uniform under the cost model, and strictly better somewhere."""
    rng = random.Random(4)
    qr, kr, ts = random_mask(rng, 192)
    meta = make_dispatch_meta(qr, kr, ts, 192, 4, 4)

    def cost(plan, r, cf_calc, cf_comm):
        rp = plan.rank_plan(r)
        st = rp.stages
        total = max(cf_comm * st[0].num_recv_tokens, cf_calc * rp.host_calc.area)
        for s in range(1, len(st)):
            total += max(cf_comm * st[s].num_recv_tokens, cf_calc * st[s - 1].calc.area)
        return total + cf_calc * st[-1].calc.area

    gains = []
    for deg in [1, 2, 3, 4]:
        kw = dict(degree=deg, min_chunk_size=2, max_num_chunks=16, calc_cost_factor=0.02)
        uni = make_dist_attn_plan(qr, kr, ts, meta, OverlapParams(**kw))
        gre = make_dist_attn_plan(qr, kr, ts, meta, OverlapParams(alg="greedy", **kw))
        check_plan(qr, kr, ts, 192, meta, gre)
        for r in range(4):
            cu, cg = cost(uni, r, 0.02, 1.0), cost(gre, r, 0.02, 1.0)
            assert cg <= cu + 1e-6
            gains.append(cu - cg)
    assert max(gains) > 1.0, "greedy should beat the uniform split on this mask"


def test_overlap_params_and_bad_input() -> None:
    ov = OverlapParams(degree=2, alg="greedy")
    assert (ov.degree, ov.alg, ov.mode, ov.enable) == (2, "greedy", "static", True)
    import pickle

    assert pickle.loads(pickle.dumps(ov)) == ov and "degree=2" in repr(ov)
    for kw, needle in [
        ({"mode": "auto"}, "mode='auto'"),
        ({"alg": "best"}, "alg='best'"),
        ({"degree": 0}, "degree=0"),
        ({"mode": "dynamic", "dynamic_max_degree": -1}, "dynamic_max_degree=-1"),
        ({"degree": 70}, "degree=70"),
        ({"min_chunk_size": 0}, "min_chunk_size=0"),
        ({"calc_cost_factor": -1.0}, "calc_cost_factor=-1"),
    ]:
        with pytest.raises(RangeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            OverlapParams(**kw)
    meta = make_dispatch_meta([(0, 16)], [(0, 16)], [1], 16, 2, 2)
    with pytest.raises(RangeError, match="q_ranges\\[0\\]=\\(0, 17\\)"):
        make_dist_attn_plan([(0, 17)], [(0, 16)], [1], meta, OverlapParams())
    with pytest.raises(RangeError, match="ranks contains 2"):
        make_dist_attn_plan([(0, 16)], [(0, 16)], [1], meta, OverlapParams(), ranks=[2])
    with pytest.raises(RangeError, match="mask_types\\[0\\]=7"):
        make_dist_attn_plan([(0, 16)], [(0, 16)], [7], meta, OverlapParams())
    with pytest.raises(RangeError, match="len\\(mask_types\\)=2"):
        make_dist_attn_plan([(0, 16)], [(0, 16)], [1, 1], meta, OverlapParams())


_THREADED_SCRIPT = """
import hashlib, random, sys
sys.path.insert(0, {tests!r})
from test_dispatch import varlen_mask
from magi_solver import OverlapParams, make_dispatch_meta, make_dist_attn_plan
T = 1 << 16  # chunk 1: > 50000 chunk pieces, so the plan builder runs ranks on threads
qr, kr, ts = varlen_mask(random.Random(0), T, causal=False)
meta = make_dispatch_meta(qr, kr, ts, T, 1, 8)
plan = make_dist_attn_plan(qr, kr, ts, meta, OverlapParams(degree=3, min_chunk_size=64))
h = hashlib.sha256()
for r in range(8):
    rp = plan.rank_plan(r)
    h.update(repr((rp.remote_k_ranges, rp.host_calc.q_ranges, rp.host_calc.k_ranges,
                   rp.host_calc.mask_types, rp.host_calc.area,
                   [(s.calc.q_ranges, s.calc.k_ranges, s.calc.mask_types, s.cast.input_split_sizes,
                     s.cast.dst_indices, s.cast.output_split_sizes, s.cast.src_index)
                    for s in rp.stages])).encode())
print(h.hexdigest())
"""


def test_threaded_build_matches_single_thread() -> None:
    """A large mask (threaded build) gives the same plan with OMP_NUM_THREADS=1 and =2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = _THREADED_SCRIPT.format(tests=str(Path(__file__).resolve().parent))
    digests = []
    for n in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=n)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                             timeout=120, check=True)
        digests.append(out.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]


@pytest.mark.parametrize("seed", range(8))
def test_flat_calls_read_every_call_of_every_rank(seed: int) -> None:
    """flat_calls (interface 1.1) holds what a walk over ranks, stages and calls reads."""
    rng = random.Random(300 + seed)
    cp = rng.choice([1, 2, 3, 4, 8])
    chunk = rng.choice([1, 2, 4])
    total = chunk * cp * rng.randint(1, 4)
    qr, kr, ts = random_mask(rng, total)
    _, plan = build(qr, kr, ts, total, chunk, cp, OVERLAPS[seed % len(OVERLAPS)], "min_heap")
    area, recv, q, k, t, call = plan.flat_calls()
    per_rank = 1 + plan.num_stages
    assert area.shape == (cp, per_rank) and recv.shape == (cp,) and area.dtype == recv.dtype == np.int64
    want_q, want_k, want_t, want_call = [], [], [], []
    for r in range(cp):
        rp = plan.rank_plan(r)
        calcs = [rp.host_calc, *(s.calc for s in rp.stages)]
        assert area[r].tolist() == [c.area for c in calcs]
        assert recv[r] == sum(s.num_recv_tokens for s in rp.stages)
        for j, c in enumerate(calcs):
            if c.area:  # empty calls are left out
                cq, ck, ct = c.as_arrays()
                want_q += cq.tolist()
                want_k += ck.tolist()
                want_t += ct.tolist()
                want_call += [r * per_rank + j] * len(c)
    assert q.dtype == k.dtype == t.dtype == call.dtype == np.int32
    assert q.reshape(-1, 2).tolist() == want_q and k.reshape(-1, 2).tolist() == want_k
    assert t.tolist() == want_t and call.tolist() == want_call
    bare = plan.flat_calls(with_slices=False)
    assert np.array_equal(bare[0], area) and np.array_equal(bare[1], recv) and bare[5].shape == (0,)
    if cp > 1:  # every rank must be built
        meta = make_dispatch_meta(qr, kr, ts, total, chunk, cp, "min_heap")
        with pytest.raises(RangeError, match="was not built"):
            make_dist_attn_plan(qr, kr, ts, meta, OverlapParams(), ranks=[0]).flat_calls()
