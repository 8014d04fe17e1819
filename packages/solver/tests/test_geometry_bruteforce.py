"""Exhaustive small-shape checks of slice_area and AttnRectangle against dense cell counting."""

from __future__ import annotations

import itertools

import pytest
from _geometry_ref import band_cells, rect_cells, slice_cells
from hypothesis import given, settings
from hypothesis import strategies as st
from magi_solver import AttnMaskType, AttnRange, AttnRectangle, AttnRectangles, slice_area

LENGTHS = range(11)
OFFSETS = [(0, 0), (3, 7), (9, 1)]
TYPES = [0, 1, 2, 3]


def _assert_tight(rect: AttnRectangle, cells: set[tuple[int, int]]) -> None:
    """Non-empty rectangles keep their tightest bounds: each bound is reached by a cell."""
    if not cells:
        assert rect.is_empty()
        return
    assert not rect.is_empty()
    qs = [q for q, _ in cells]
    ks = [k for _, k in cells]
    ds = [k - q for q, k in cells]
    assert (rect.q_range.start, rect.q_range.end) == (min(qs), max(qs) + 1)
    assert (rect.k_range.start, rect.k_range.end) == (min(ks), max(ks) + 1)
    assert (rect.d_lo, rect.d_hi) == (min(ds), max(ds))


def _assert_slices_exact(rect: AttnRectangle, cells: set[tuple[int, int]]) -> None:
    slices = rect.to_slices()
    assert len(slices) <= 3
    seen: set[tuple[int, int]] = set()
    total = 0
    for q, k, t in slices:
        assert isinstance(t, AttnMaskType)
        part = slice_cells(q.start, q.end, k.start, k.end, t.to_int_type())
        assert part, f"empty slice {(q, k, t)} emitted for {rect}"
        assert not (part & seen), f"slices of {rect} overlap"
        seen |= part
        total += len(part)
    assert seen == cells
    assert total == len(cells)


def _assert_cuts_exact(rect: AttnRectangle, cells: set[tuple[int, int]], lo: int, hi: int) -> None:
    for pos in range(lo - 1, hi + 2):
        left, right = rect.cut_q(pos)
        assert rect_cells(left) == {c for c in cells if c[0] < pos}
        assert rect_cells(right) == {c for c in cells if c[0] >= pos}
        assert left.area() + right.area() == len(cells)
        left, right = rect.cut_k(pos)
        assert rect_cells(left) == {c for c in cells if c[1] < pos}
        assert rect_cells(right) == {c for c in cells if c[1] >= pos}
        assert left.area() + right.area() == len(cells)


@pytest.mark.parametrize("code", TYPES)
@pytest.mark.parametrize("q_off,k_off", OFFSETS)
def test_slice_area_and_rectangle_match_dense_mask(code: int, q_off: int, k_off: int) -> None:
    for lq, lk in itertools.product(LENGTHS, LENGTHS):
        qs, qe, ks, ke = q_off, q_off + lq, k_off, k_off + lk
        cells = slice_cells(qs, qe, ks, ke, code)
        assert slice_area(qs, qe, ks, ke, code) == len(cells), (lq, lk, code)
        assert slice_area(AttnRange(qs, qe), AttnRange(ks, ke), AttnMaskType.from_int_type(code)) == len(
            cells
        )
        rect = AttnRectangle(AttnRange(qs, qe), AttnRange(ks, ke), code)
        assert rect.area() == len(cells), (lq, lk, code)
        assert rect_cells(rect) == cells
        _assert_tight(rect, cells)
        _assert_slices_exact(rect, cells)


@pytest.mark.parametrize("code", TYPES)
def test_rectangle_cuts_split_cells_exactly(code: int) -> None:
    q_off, k_off = 2, 5
    for lq, lk in itertools.product(range(8), range(8)):
        qs, qe, ks, ke = q_off, q_off + lq, k_off, k_off + lk
        cells = slice_cells(qs, qe, ks, ke, code)
        rect = AttnRectangle(AttnRange(qs, qe), AttnRange(ks, ke), code)
        _assert_cuts_exact(rect, cells, min(qs, ks), max(qe, ke))


def test_banded_rectangles_area_cuts_and_slices() -> None:
    """Arbitrary bands (what repeated cuts produce): area, tightness, cuts and <= 3 slices."""
    qs, ks = 2, 4
    for lq, lk in itertools.product(range(7), range(7)):
        qe, ke = qs + lq, ks + lk
        for d_lo in range(ks - qe - 1, ke - qs + 1):
            for d_hi in range(d_lo - 1, ke - qs + 1):
                cells = band_cells(qs, qe, ks, ke, d_lo, d_hi)
                rect = AttnRectangle.from_band(AttnRange(qs, qe), AttnRange(ks, ke), d_lo, d_hi)
                assert rect.area() == len(cells), (lq, lk, d_lo, d_hi)
                _assert_tight(rect, cells)
                _assert_slices_exact(rect, cells)
                if lq in (0, 3, 6) and lk in (0, 4, 6):
                    _assert_cuts_exact(rect, cells, qs, ke)


def test_repeated_cuts_stay_exact() -> None:
    """Cut a causal rectangle in q then k, several times: the pieces partition the cells."""
    rect = AttnRectangle(AttnRange(3, 14), AttnRange(0, 17), AttnMaskType.BICAUSAL)
    cells = slice_cells(3, 14, 0, 17, 3)
    for qpos, kpos in itertools.product(range(3, 15, 3), range(0, 18, 4)):
        a, b = rect.cut_q(qpos)
        a1, a2 = a.cut_k(kpos)
        b1, b2 = b.cut_k(kpos + 1)
        parts = [rect_cells(p) for p in (a1, a2, b1, b2)]
        assert sum(len(p) for p in parts) == len(cells) == sum(p.area() for p in (a1, a2, b1, b2))
        assert set().union(*parts) == cells
        for p in (a1, a2, b1, b2):
            _assert_slices_exact(p, rect_cells(p))


def test_rectangles_batch_matches_single() -> None:
    qr = [AttnRange(0, 8), AttnRange(8, 12), AttnRange(12, 12), AttnRange(12, 20)]
    kr = [AttnRange(0, 8), AttnRange(0, 12), AttnRange(0, 5), AttnRange(2, 4)]
    types = ["causal", AttnMaskType.FULL, 0, 3]
    rects = AttnRectangles.from_ranges(qr, kr, types)
    # the empty slice and the bi-causal slice with Lq > Lk are dropped
    assert len(rects) == 2
    cells = slice_cells(0, 8, 0, 8, 1) | slice_cells(8, 12, 0, 12, 0)
    assert rects.area() == len(cells)
    for pos in range(0, 14):
        lo, hi = rects.cut_q(pos)
        assert lo.area() == len({c for c in cells if c[0] < pos})
        assert hi.area() == len({c for c in cells if c[0] >= pos})
        lo, hi = rects.cut_k(pos)
        assert lo.area() == len({c for c in cells if c[1] < pos})
        assert all(not r.is_empty() for r in list(lo) + list(hi))
    assert rects.get_qo_ranges_union().to_naive_ranges() == [(0, 12)]
    assert rects.get_kv_ranges_union().to_naive_ranges() == [(0, 12)]
    back = set()
    for q, k, t in rects.to_slices():
        back |= slice_cells(q.start, q.end, k.start, k.end, t.to_int_type())
    assert back == cells


@settings(max_examples=200, deadline=None)
@given(
    st.integers(-(10**15), 10**15),
    st.integers(-(10**15), 10**15),
    st.integers(0, 12),
    st.integers(0, 12),
    st.integers(-14, 14),
    st.integers(-14, 14),
    st.integers(-2, 14),
)
def test_far_offsets_match_local_brute_force(qo, ko, lq, lk, d_lo_local, width, cut) -> None:
    """Large coordinates: the same cells translated, so the same area, slices and cuts."""
    d_hi_local = d_lo_local + width
    shift = ko - qo
    rect = AttnRectangle.from_band(
        AttnRange(qo, qo + lq), AttnRange(ko, ko + lk), d_lo_local + shift, d_hi_local + shift
    )
    cells = band_cells(0, lq, 0, lk, d_lo_local, d_hi_local)
    assert rect.area() == len(cells)
    moved = {(q - qo, k - ko) for q, k in rect_cells(rect)}
    assert moved == cells
    back = set()
    for q, k, t in rect.to_slices():
        back |= {(a - qo, b - ko) for a, b in slice_cells(q.start, q.end, k.start, k.end, t.to_int_type())}
    assert back == cells
    lo, hi = rect.cut_q(qo + cut)
    assert lo.area() == len({c for c in cells if c[0] < cut})
    assert hi.area() == len({c for c in cells if c[0] >= cut})
