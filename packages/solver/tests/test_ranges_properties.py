"""Hypothesis properties of AttnRange / AttnRanges against plain Python token-set semantics."""

from __future__ import annotations

import random

from _geometry_ref import runs, tokens
from hypothesis import given, settings
from hypothesis import strategies as st
from magi_solver import AttnRange, AttnRanges, RangeError

SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def pair(draw, lo: int = 0, hi: int = 40) -> tuple[int, int]:
    a = draw(st.integers(lo, hi))
    b = draw(st.integers(lo, hi))
    return (min(a, b), max(a, b))


pair_lists = st.lists(pair(), max_size=8)


def _ranges(pairs) -> AttnRanges:
    return AttnRanges.from_ranges(pairs)


def _non_empty_runs(rs: AttnRanges) -> list[tuple[int, int]]:
    return [p for p in rs.to_naive_ranges() if p[0] < p[1]]


# ---------------------------------------------------------------- AttnRange


@SETTINGS
@given(pair(), pair())
def test_range_binary_ops_match_sets(a, b) -> None:
    ra, rb = AttnRange(*a), AttnRange(*b)
    ta, tb = set(range(*a)), set(range(*b))
    assert set(range(ra.intersect(rb).start, ra.intersect(rb).end)) == ta & tb
    assert ra.intersect_size(rb) == len(ta & tb)
    assert tokens(r.to_naive_range() for r in ra.union(rb)) == ta | tb
    assert ra.union_size(rb) == len(ta | tb)
    diff = ra.diff_by(rb)
    assert tokens(r.to_naive_range() for r in diff) == tb - ta
    assert all(not r.is_empty() for r in diff)
    assert ra.is_subrange_of(rb) == (a[0] >= b[0] and a[1] <= b[1])
    assert ra.is_overlap_with(rb) == (a[0] < b[1] and b[0] < a[1])
    assert ra.offset(5).to_naive_range() == (a[0] + 5, a[1] + 5)


@SETTINGS
@given(pair(), st.none() | st.integers(-5, 45), st.none() | st.integers(-5, 45))
def test_range_truncate(a, lo, hi) -> None:
    r = AttnRange(*a).truncate(lo, hi)
    want = set(range(*a)) & set(range(-10 if lo is None else lo, 50 if hi is None else hi))
    assert set(range(r.start, r.end)) == want
    assert r.start <= r.end


# ---------------------------------------------------------------- AttnRanges set algebra


@SETTINGS
@given(pair_lists)
def test_merge_and_sort(pairs) -> None:
    rs = _ranges(pairs)
    merged = rs.merge()
    assert tokens(merged.to_naive_ranges()) == tokens(pairs)
    assert _non_empty_runs(merged) == runs(tokens(pairs))
    assert merged.is_merged() and merged.is_sorted()
    assert rs.is_merged() == (
        rs == merged and all(x.end < y.start for x, y in zip(list(rs)[:-1], list(rs)[1:]))
    )
    assert rs.sort().to_naive_ranges() == sorted(pairs, key=lambda p: p[0])
    assert rs.is_sorted() == (rs.sort() == rs)
    assert rs.union_size() == len(tokens(pairs))
    assert rs.total_seqlen == sum(e - s for s, e in pairs)
    assert rs.intersect_size() == rs.total_seqlen - rs.union_size()
    assert rs.is_non_overlap() == (rs.total_seqlen == rs.union_size())
    assert rs.max_seqlen == max((e - s for s, e in pairs), default=0)
    assert rs.points == sorted({x for p in pairs for x in p})
    assert list(rs.clear_empty().to_naive_ranges()) == [p for p in pairs if p[0] < p[1]]


@SETTINGS
@given(pair_lists, pair_lists)
def test_hole_and_overlap_ranges(a, b) -> None:
    ra, rb = _ranges(a), _ranges(b)
    hole = ra.find_hole_ranges(rb)
    assert hole.to_naive_ranges() == runs(tokens(a) - tokens(b))
    overlap = ra.find_overlap_ranges(rb)
    assert overlap.to_naive_ranges() == runs(tokens(a) & tokens(b))
    # the "already merged" fast paths give the same answer on merged inputs
    ma, mb = ra.merge(), rb.merge()
    assert ma.find_hole_ranges(mb, is_self_merged=True, is_other_merged=True) == hole
    assert ma.find_overlap_ranges(mb, True, True) == overlap
    assert ra.intersect_size_with(rb) == len(tokens(a) & tokens(b))
    assert ra.union_size_with(rb) == len(tokens(a) | tokens(b))


@SETTINGS
@given(pair_lists, st.data())
def test_make_ranges_local(pairs, data) -> None:
    rs = _ranges(pairs)
    buffer = sorted(tokens(pairs))  # merged ranges stored back to back, ascending
    local_of = {t: i for i, t in enumerate(buffer)}
    pieces = _non_empty_runs(rs.merge())
    queries = []
    for s, e in data.draw(st.lists(st.sampled_from(pieces), max_size=6)) if pieces else []:
        a = data.draw(st.integers(s, e))
        b = data.draw(st.integers(a, e))
        queries.append((a, b))
    local = rs.make_ranges_local(AttnRanges.from_ranges(queries))
    for (a, b), loc in zip(queries, local):
        assert loc.seqlen == b - a
        if a < b:
            assert [buffer[i] for i in range(loc.start, loc.end)] == list(range(a, b))
            assert loc.start == local_of[a]
        assert rs.make_range_local(AttnRange(a, b)) == loc


@SETTINGS
@given(pair_lists, pair())
def test_make_range_local_rejects_ranges_outside(pairs, q) -> None:
    rs = _ranges(pairs)
    pieces = rs.merge().to_naive_ranges()
    inside = any(s <= q[0] and q[1] <= e for s, e in pieces)
    if inside:
        rs.make_range_local(AttnRange(*q))
    else:
        try:
            rs.make_range_local(AttnRange(*q))
        except RangeError as exc:
            assert f"[{q[0]}, {q[1]})" in str(exc)
        else:
            raise AssertionError(f"{q} is not inside {pieces} but was localised")


@SETTINGS
@given(pair_lists, st.integers(1, 12), st.randoms(use_true_random=False))
def test_chunk(pairs, chunk_size, rnd: random.Random) -> None:
    order = runs(tokens(pairs))  # non-overlapping; shuffle to check the list order is kept
    rnd.shuffle(order)
    rs = AttnRanges.from_ranges(order)
    stream = [t for s, e in order for t in range(s, e)]
    chunks = rs.chunk(chunk_size)
    assert [t for c in chunks for r in c for t in range(r.start, r.end)] == stream
    sizes = [c.total_seqlen for c in chunks]
    assert all(sz == chunk_size for sz in sizes[:-1])
    assert len(chunks) == -(-len(stream) // chunk_size)
    assert all(not r.is_empty() for c in chunks for r in c)


@SETTINGS
@given(pair_lists, st.none() | st.integers(-3, 43), st.none() | st.integers(-3, 43))
def test_truncate(pairs, lo, hi) -> None:
    got = _ranges(pairs).truncate(lo, hi).to_naive_ranges()
    lo_, hi_ = (-10 if lo is None else lo), (50 if hi is None else hi)
    want = [(max(s, lo_), min(e, hi_)) for s, e in pairs if max(s, lo_) < min(e, hi_)]
    assert got == want


@SETTINGS
@given(pair_lists, st.integers(1, 9))
def test_merge_with_split_alignment(pairs, align) -> None:
    got = _ranges(pairs).merge_with_split_alignment(align)
    want = set()
    for s, e in pairs:
        want |= set(range(s // align * align, -(-e // align) * align))
    assert _non_empty_runs(got) == runs(want)
    assert all(r.start % align == 0 and r.end % align == 0 for r in got)


@SETTINGS
@given(st.lists(st.integers(1, 6), max_size=6))
def test_cu_seqlens_round_trip(lengths) -> None:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    rs = AttnRanges.from_cu_seqlens(cu, cu[-1])
    assert rs.is_cu_seqlens(cu[-1])
    assert rs.to_cu_seqlens(cu[-1]) == cu
    assert rs.to_naive_ranges() == list(zip(cu[:-1], cu[1:]))
