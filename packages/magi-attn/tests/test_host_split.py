"""The block of the backward's split host stage (runtime/host_split.py): its invariants on random
documents, optimality against every valid block, and the cases without one."""

import itertools

import numpy as np
import pytest
from magi_attention.runtime import host_split
from magi_solver import slice_area


def _documents(rng, rows: int):
    """Causal documents over ``rows`` rows, some cut into a full piece and a causal one."""
    cuts = np.sort(rng.choice(np.arange(1, rows), size=rng.integers(1, 9), replace=False))
    edges = [0, *cuts.tolist(), rows]
    q, k, t = [], [], []
    for a, b in zip(edges, edges[1:]):
        if b - a > 2 and rng.random() < 0.4:  # rows [m, b) see [a, m) fully and [m, b) causally
            m = int(rng.integers(a + 1, b))
            q += [(m, b), (m, b), (a, m)]
            k += [(a, m), (m, b), (a, m)]
            t += [0, 1, 1]
        else:
            q.append((a, b))
            k.append((a, b))
            t.append(1)
    return np.array(q, dtype=np.int32), np.array(k, dtype=np.int32), np.array(t, dtype=np.int32)


def test_slice_areas_match_the_solver():
    rng = np.random.default_rng(0)
    q = np.sort(rng.integers(0, 40, size=(300, 2)), axis=1).astype(np.int32)
    k = np.sort(rng.integers(0, 40, size=(300, 2)), axis=1).astype(np.int32)
    t = rng.integers(0, 4, size=300).astype(np.int32)
    want = [slice_area(*a, *b, c) for a, b, c in zip(q.tolist(), k.tolist(), t.tolist())]
    assert host_split.slice_areas(q, k, t).tolist() == want


def _brute_best(q, k, t, rows, busy):
    """The largest smaller area over every block [x0, x1) that no slice crosses and no busy row meets."""
    area = host_split.slice_areas(q, k, t)
    total = int(area.sum())
    lo, hi = np.minimum(q[:, 0], k[:, 0]), np.maximum(q[:, 1], k[:, 1])
    best = -1
    for x0, x1 in itertools.combinations(range(rows + 1), 2):
        if any(a < x < b for a, b in zip(lo, hi) for x in (x0, x1) if area[(lo == a) & (hi == b)].sum()):
            continue
        if any(a < x1 and b > x0 for a, b in busy):
            continue
        late = int(area[(lo >= x0) & (hi <= x1)].sum())
        best = max(best, min(late, total - late))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_block_is_valid_and_the_best(seed):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(8, 40))
    q, k, t = _documents(rng, rows)
    busy = [tuple(sorted(rng.integers(0, rows + 1, size=2).tolist())) for _ in range(rng.integers(0, 3))]
    cut = host_split.split_host_rows(q, k, t, rows, [np.array(busy, dtype=np.int64).reshape(-1, 2)])
    best = _brute_best(q, k, t, rows, busy)
    total = int(host_split.slice_areas(q, k, t).sum())
    if cut is None:
        assert best < host_split.MIN_SHARE * total
        return
    x0, x1 = cut.late_rows
    assert 0 <= x0 < x1 <= rows
    assert not any(a < x1 and b > x0 for a, b in busy), "the late block meets a row a reduce folds into"
    # every slice in exactly one call: the late ones inside the block (rebased), the early ones outside it
    lq, lk = cut.late.q + x0, cut.late.k + x0
    assert ((lq >= x0) & (lq <= x1)).all() and ((lk >= x0) & (lk <= x1)).all()
    assert not (((cut.early.q[:, 0] < x1) & (cut.early.q[:, 1] > x0))
                | ((cut.early.k[:, 0] < x1) & (cut.early.k[:, 1] > x0))).any()
    got = sorted(zip(map(tuple, np.concatenate([cut.early.q, lq]).tolist()),
                     map(tuple, np.concatenate([cut.early.k, lk]).tolist()),
                     np.concatenate([cut.early.types, cut.late.types]).tolist()))
    live = host_split.slice_areas(q, k, t) > 0
    assert got == sorted(zip(map(tuple, q[live].tolist()), map(tuple, k[live].tolist()), t[live].tolist()))
    assert cut.early.area + cut.late.area == total
    assert min(cut.early.area, cut.late.area) == best >= host_split.MIN_SHARE * total


def test_no_block_without_a_cut_or_free_rows():
    one = np.array([[0, 64]], dtype=np.int32)
    causal = np.array([1], dtype=np.int32)
    assert host_split.split_host_rows(one, one, causal, 64, []) is None  # nothing to cut
    docs = np.array([[0, 32], [32, 64]], dtype=np.int32)
    types = np.array([1, 1], dtype=np.int32)
    assert host_split.split_host_rows(docs, docs, types, 64, []) is not None
    # every row folded into by a reduce: no block may run late
    assert host_split.split_host_rows(docs, docs, types, 64, [np.array([[0, 64]])]) is None


def test_sent_rows_are_the_splits_with_a_destination():
    got = host_split.sent_rows([4, 0, 3, 5, 2], [[1], [1], [], [0, 2], []])
    assert got.tolist() == [[0, 4], [7, 12]]
