"""Dispatch: chunk areas against brute-force cell counts, partition validity, the algorithms
against the exact optimum, position ids, permutations and input checks.

Also hosts the random mask generators that test_plan.py reuses (random cell-disjoint masks of all
four types); the brute-force cell matrix lives in _masks.py.
"""

from __future__ import annotations

import itertools
import pickle
import random

import magi_solver
import numpy as np
import pytest
from _masks import dense_mask
from magi_solver import DispatchMeta, RangeError, make_dispatch_meta, solve_dispatch

ALGS = [
    "min_heap",
    "sequential",
    "random_select",
    "topp_heap",
    "sorted_sequential_select",
    "backtracking_pruning",
]


# ---------------------------------------------------------------- dense reference helpers


def random_mask(rng: random.Random, total: int, pad: int = 0):
    """A random cell-disjoint mask over [0, total - pad) plus the padding slice.

    Rows are cut into bands; a band holds one slice, or two slices over disjoint k ranges, of
    random types and random (possibly empty, possibly shorter or longer than q) k ranges.
    """
    valid = total - pad
    qr, kr, ts = [], [], []
    pos = 0
    while pos < valid:
        ln = min(valid - pos, rng.choice([1, 2, 3, 5, 8, 13, rng.randint(1, max(1, valid // 2))]))
        if rng.random() < 0.15:  # an empty band: rows that attend nothing
            pos += ln
            continue
        a, b = sorted(rng.randint(0, valid) for _ in range(2))
        if rng.random() < 0.3 and b - a >= 2:
            c = rng.randint(a + 1, b - 1)
            parts = [(a, c), (c, b)]
        else:
            parts = [(a, b)]
        for ks, ke in parts:
            qr.append((pos, pos + ln))
            kr.append((ks, ke))
            ts.append(rng.randint(0, 3))
        pos += ln
    order = list(range(len(qr)))
    rng.shuffle(order)
    qr, kr, ts = [qr[i] for i in order], [kr[i] for i in order], [ts[i] for i in order]
    if pad:
        qr.append((valid, total))
        kr.append((0, 0))
        ts.append(0)
    return qr, kr, ts


def varlen_mask(rng: random.Random, total: int, causal: bool = True):
    """Documents of random lengths, each one CAUSAL (or random type) slice on itself."""
    qr, kr, ts = [], [], []
    pos = 0
    while pos < total:
        ln = min(total - pos, rng.randint(1, max(1, total // 3)))
        qr.append((pos, pos + ln))
        kr.append((pos, pos + ln))
        ts.append(1 if causal else rng.randint(0, 3))
        pos += ln
    return qr, kr, ts


def max_bucket(workloads, parts) -> int:
    return max(sum(workloads[j] for j in p) for p in parts)


def check_partitions(parts, n: int, k: int) -> None:
    assert len(parts) == k
    assert all(p == sorted(p) for p in parts)
    assert all(len(p) == n // k for p in parts)
    assert sorted(itertools.chain.from_iterable(parts)) == list(range(n))


# ---------------------------------------------------------------- chunk areas


@pytest.mark.parametrize("seed", range(12))
def test_chunk_areas_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    cp = rng.choice([1, 2, 3, 4, 8])
    chunk = rng.choice([1, 2, 3, 4, 7])
    total = chunk * cp * rng.randint(1, 4)
    pad = rng.randint(0, min(total - 1, chunk * cp - 1))
    qr, kr, ts = random_mask(rng, total, pad)
    dense = dense_mask(qr, kr, ts, total)
    assert dense.max() <= 1, "generator must give cell-disjoint slices"
    meta = make_dispatch_meta(qr, kr, ts, total, chunk, cp)
    assert sum(meta.chunk_areas) == dense.sum()
    c = meta.chunk_size
    assert [int(dense[i * c : (i + 1) * c].sum()) for i in range(meta.num_chunks)] == meta.chunk_areas
    check_partitions(meta.partitions, meta.num_chunks, cp)


def test_cp1_is_one_chunk() -> None:
    qr, kr, ts = varlen_mask(random.Random(0), 40)
    meta = make_dispatch_meta(qr, kr, ts, 40, 4, 1)
    assert (meta.num_chunks, meta.chunk_size, meta.partitions) == (1, 40, [[0]])
    assert meta.chunk_areas == [int(dense_mask(qr, kr, ts, 40).sum())]


# ---------------------------------------------------------------- layout fields


@pytest.mark.parametrize("cp", [1, 2, 3, 4, 8, 16, 32, 64])
def test_meta_layout(cp: int) -> None:
    rng = random.Random(cp)
    chunk = rng.choice([1, 2, 3])
    total = chunk * cp * rng.randint(1, 3)
    pad = rng.randint(0, chunk * cp - 1) if total > chunk * cp else 0
    qr, kr, ts = random_mask(rng, total, pad)
    meta = make_dispatch_meta(qr, kr, ts, total, chunk, cp)
    n, c = meta.num_chunks, meta.chunk_size
    assert meta.shard_seqlen * cp == total
    check_partitions(meta.partitions, n, cp)
    assert meta.perm_idxs == list(itertools.chain.from_iterable(meta.partitions))
    assert [meta.perm_idxs[u] for u in meta.unperm_idxs] == list(range(n))
    assert [meta.unperm_idxs[p] for p in meta.perm_idxs] == list(range(n))
    valid = [qe for (qs, qe), (ks, ke) in zip(qr, kr) if qe > qs and ke > ks]
    assert meta.max_valid_ids == max(valid, default=0)
    for r in range(cp):
        toks = np.concatenate([np.arange(i * c, (i + 1) * c) for i in meta.partitions[r]])
        pos = meta.position_ids(r)
        assert pos.dtype == np.int64 and pos.shape == (meta.shard_seqlen,)
        np.testing.assert_array_equal(pos, np.minimum(toks, max(meta.max_valid_ids - 1, 0)))
        covered = np.concatenate([np.arange(s, e) for s, e in meta.host_ranges_per_rank[r]])
        np.testing.assert_array_equal(covered, toks)  # merged, ascending, same tokens
        hr = meta.host_ranges_per_rank[r]
        assert all(hr[i][1] < hr[i + 1][0] for i in range(len(hr) - 1))


def test_position_ids_clamp_padding() -> None:
    meta = make_dispatch_meta([(0, 10), (10, 16)], [(0, 10), (0, 0)], [1, 0], 16, 2, 2)
    assert meta.max_valid_ids == 10
    allpos = np.concatenate([meta.position_ids(r) for r in range(2)])
    assert sorted(allpos.tolist()) == sorted(np.minimum(np.arange(16), 9).tolist())


def test_pickle_and_repr() -> None:
    qr, kr, ts = random_mask(random.Random(3), 48)
    meta = make_dispatch_meta(qr, kr, ts, 48, 3, 4)
    back = pickle.loads(pickle.dumps(meta))
    assert isinstance(back, DispatchMeta) and back == meta and hash(back) == hash(meta)
    assert back.host_ranges_per_rank == meta.host_ranges_per_rank
    assert "DispatchMeta(" in repr(meta) and "cp_size=4" in repr(meta)
    with pytest.raises(AttributeError):
        meta.cp_size = 3  # type: ignore[misc]


# ---------------------------------------------------------------- algorithms


def test_min_heap_regression() -> None:
    w = [2, 4, 3, 16, 13, 5, 9, 10]
    parts = solve_dispatch(w, 4)
    check_partitions(parts, 8, 4)
    assert max_bucket(w, parts) == 18


def test_min_heap_not_optimal_but_btp_is() -> None:
    w = [8, 7, 6, 5, 4, 2, 2, 2]
    assert max_bucket(w, solve_dispatch(w, 2)) == 19
    assert max_bucket(w, solve_dispatch(w, 2, "backtracking_pruning")) == 18


def brute_optimum(w, k) -> int:
    """Exact equal-count minimax by enumeration (tiny inputs)."""
    n = len(w)
    cap = n // k
    best = None

    def rec(i, sums, cnts):
        nonlocal best
        if i == n:
            m = max(sums)
            best = m if best is None else min(best, m)
            return
        for b in range(k):
            if cnts[b] < cap:
                sums[b] += w[i]
                cnts[b] += 1
                rec(i + 1, sums, cnts)
                sums[b] -= w[i]
                cnts[b] -= 1

    rec(0, [0] * k, [0] * k)
    return best


@pytest.mark.parametrize("seed", range(10))
def test_backtracking_is_exact(seed: int) -> None:
    rng = random.Random(seed)
    k = rng.choice([2, 3])
    n = k * rng.choice([2, 3])
    w = [rng.choice([0, rng.randint(1, 30)]) for _ in range(n)]
    parts = solve_dispatch(w, k, "backtracking_pruning")
    check_partitions(parts, n, k)
    assert max_bucket(w, parts) == brute_optimum(w, k)


def test_heuristics_vs_optimum(capsys) -> None:
    """Every heuristic is >= the exact optimum and within a sane factor of it; ratios printed."""
    rng = random.Random(7)
    ratios: dict[str, list[float]] = {a: [] for a in ALGS}
    for _ in range(25):
        k = rng.choice([2, 3, 4])
        n = k * rng.choice([2, 3, 4])
        w = [rng.randint(0, 100) for _ in range(n)]
        opt = max_bucket(w, solve_dispatch(w, k, "backtracking_pruning"))
        for alg in ALGS:
            parts = solve_dispatch(w, k, alg, top_p=0.5, seed=3, allocation_ratio=0.5)
            check_partitions(parts, n, k)
            got = max_bucket(w, parts)
            assert got >= opt
            ratios[alg].append(got / max(opt, 1))
    with capsys.disabled():
        print("\nmax-bucket / optimum (mean, worst) over 25 random inputs:")
        for alg, rs in ratios.items():
            print(f"  {alg:26s} {sum(rs) / len(rs):.3f} {max(rs):.3f}")
    assert max(ratios["min_heap"]) <= 4 / 3 + 1e-9  # LPT-like bound
    assert max(ratios["topp_heap"]) <= 2.0
    assert sum(ratios["min_heap"]) <= sum(ratios["sequential"])


def test_sequential_and_random_select() -> None:
    w = list(range(12))
    assert solve_dispatch(w, 3, "sequential") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    a = solve_dispatch(w, 3, "random_select", seed=1)
    assert a == solve_dispatch(w, 3, "random_select", seed=1)
    others = [solve_dispatch(w, 3, "random_select", seed=s) for s in range(2, 8)]
    assert any(o != a for o in others)
    for o in others:
        check_partitions(o, 12, 3)


def test_topp_heap_affinity() -> None:
    w = [10, 10, 10, 10]
    assert solve_dispatch(w, 2, "topp_heap", top_p=0.0) == solve_dispatch(w, 2, "min_heap")
    # Jobs 0/2 need keys [0,8), jobs 1/3 need [8,16): with affinity they end up together.
    kr = [[(0, 8)], [(8, 16)], [(0, 8)], [(8, 16)]]
    parts = solve_dispatch(w, 2, "topp_heap", top_p=1.0, job_k_ranges=kr)
    assert sorted(parts) == [[0, 2], [1, 3]]


def test_sorted_sequential_keeps_samples_together() -> None:
    w = [5, 5, 5, 5, 1, 1, 0, 0]
    sid = [0, 0, 0, 0, 1, 1, -1, -1]
    parts = solve_dispatch(w, 2, "sorted_sequential_select", job_sample_ids=sid)
    check_partitions(parts, 8, 2)
    assert [0, 1, 2, 3] in parts
    half = solve_dispatch(w, 2, "sorted_sequential_select", allocation_ratio=0.5, job_sample_ids=sid)
    check_partitions(half, 8, 2)


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("cp", [1, 2, 4, 8])
def test_every_alg_through_make_dispatch_meta(alg: str, cp: int) -> None:
    rng = random.Random(hash((alg, cp)) & 0xFFFF)
    chunk = 2
    total = chunk * cp * (2 if cp <= 4 else 1) * 2
    qr, kr, ts = varlen_mask(rng, total, causal=False)
    meta = make_dispatch_meta(qr, kr, ts, total, chunk, cp, alg, top_p=0.5, seed=5)
    check_partitions(meta.partitions, meta.num_chunks, cp)
    assert meta == make_dispatch_meta(qr, kr, ts, total, chunk, cp, alg, top_p=0.5, seed=5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"chunk_size": 5}, "chunk_size=5"),
        ({"chunk_size": 0}, "chunk_size=0"),
        ({"cp_size": 3}, "cp_size=3"),
        ({"cp_size": 0}, "cp_size=0"),
        ({"total_seqlen": 0}, "total_seqlen=0"),
        ({"q_ranges": [(0, 8), (8, 17)]}, "q_ranges[1]=(8, 17)"),
        ({"q_ranges": [(0, 8), (9, 8)]}, "q_ranges[1]=(9, 8)"),
        ({"k_ranges": [(-1, 8), (0, 16)]}, "k_ranges[0]=(-1, 8)"),
        ({"k_ranges": [(0, 8)]}, "len(k_ranges)=1"),
        ({"mask_types": [1, 4]}, "mask_types[1]=4"),
        ({"alg": "min_heep"}, "alg='min_heep'"),
        ({"top_p": 1.5, "alg": "topp_heap"}, "top_p=1.5"),
    ],
)
def test_bad_input_raises_range_error(kwargs, needle: str) -> None:
    args = dict(
        q_ranges=[(0, 8), (8, 16)],
        k_ranges=[(0, 8), (0, 16)],
        mask_types=[1, 0],
        total_seqlen=16,
        chunk_size=2,
        cp_size=2,
    )
    args.update(kwargs)
    with pytest.raises(RangeError) as ei:
        make_dispatch_meta(**args)
    assert needle in str(ei.value) and "make_dispatch_meta()" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_solve_dispatch_bad_input() -> None:
    with pytest.raises(RangeError, match="multiple of cp_size=3"):
        solve_dispatch([1, 2, 3, 4], 3)
    with pytest.raises(RangeError, match="workloads\\[1\\]=-2"):
        solve_dispatch([1, -2], 2)
    with pytest.raises(RangeError, match="at most 32 jobs"):
        solve_dispatch([1] * 64, 2, "backtracking_pruning")


def test_exported() -> None:
    for name in ["make_dispatch_meta", "DispatchMeta", "solve_dispatch"]:
        assert name in magi_solver.__all__
