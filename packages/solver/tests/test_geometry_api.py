"""Python protocol of the geometry types: errors, pickling, repr, hashing, sequences, AttnMaskType."""

from __future__ import annotations

import copy
import pickle

import pytest
from magi_solver import (
    AttnMaskType,
    AttnRange,
    AttnRanges,
    AttnRectangle,
    AttnRectangles,
    RangeError,
    slice_area,
)


def _sample_values():
    rs = AttnRanges.from_ranges([(5, 10), (0, 3), (12, 12)])
    rect = AttnRectangle(AttnRange(2, 9), AttnRange(1, 12), AttnMaskType.BICAUSAL)
    cut = rect.cut_q(5)[1].cut_k(8)[0]
    rects = AttnRectangles.from_ranges([(0, 4), (4, 9)], [(0, 4), (0, 9)], ["causal", "inv_causal"])
    return [AttnRange(3, 7), AttnRange(4, 4), rs, AttnRanges(), rect, cut, rects]


# ---------------------------------------------------------------- errors


def test_range_error_is_value_error() -> None:
    assert issubclass(RangeError, ValueError)


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: AttnRange(7, 3), "start=7, end=3"),
        (lambda: AttnRanges.from_ranges([(0, 2), (9, 4)]), "(9, 4)"),
        (lambda: AttnMaskType.from_int_type(4), "code=4"),
        (lambda: AttnMaskType.from_int_type(-1), "code=-1"),
        (lambda: slice_area(0, 4, 0, 4, 5), "code=5"),
        (lambda: slice_area(0, 4, 0, 4, "diagonal"), "'diagonal'"),
        (lambda: slice_area(5, 4, 0, 4, 0), "start=5, end=4"),
        (lambda: AttnRectangle(AttnRange(0, 3), AttnRange(0, 3), 9), "code=9"),
        (lambda: AttnRanges.from_ranges([(0, 8)]).chunk(0), "chunk_size=0"),
        (lambda: AttnRanges.from_ranges([(0, 8)]).chunk(-3), "chunk_size=-3"),
        (lambda: AttnRanges.from_ranges([(0, 8), (4, 9)]).chunk(2), "[[0, 8), [4, 9)]"),
        (lambda: AttnRanges.from_ranges([(0, 5), (8, 9)]).make_range_local(AttnRange(4, 8)), "[4, 8)"),
        (
            lambda: AttnRanges.from_ranges([(0, 5)]).make_ranges_local(AttnRanges.from_ranges([(6, 7)])),
            "[6, 7)",
        ),
        (lambda: AttnRanges.from_cu_seqlens([0, 4, 4, 9], 9), "cu_seqlens[1]=4"),
        (lambda: AttnRanges.from_cu_seqlens([1, 4], 4), "cu_seqlens[0]=1"),
        (lambda: AttnRanges.from_cu_seqlens([0, 4], 5), "seq_len=5"),
        (lambda: AttnRanges.from_ranges([(1, 4)]).to_cu_seqlens(4), "[[1, 4)]"),
        (lambda: AttnRanges().start, "empty"),
        (lambda: AttnRanges().pop(), "empty"),
        (lambda: AttnRanges.from_ranges([(0, 1)])[3], "index 3"),
        (lambda: AttnRanges.from_ranges([(0, 1)]).merge_with_split_alignment(0), "split_alignment=0"),
        (lambda: AttnRectangles.from_ranges([(0, 1)], [], [0]), "(1, 0, 1)"),
    ],
)
def test_bad_input_raises_range_error_with_values(call, needle: str) -> None:
    with pytest.raises(RangeError) as info:
        call()
    assert needle in str(info.value)


def test_setters_are_checked() -> None:
    r = AttnRange(2, 6)
    r.start = 6
    r.end = 9
    assert r.to_naive_range() == (6, 9)
    with pytest.raises(RangeError, match="start = 10"):
        r.start = 10
    with pytest.raises(RangeError, match="end = 5"):
        r.end = 5
    assert r == AttnRange(6, 9)
    with pytest.raises(RangeError, match=r"\[4, 3\)"):
        AttnRange(1, 3).check_valid(start=4)


def test_wrong_types_raise_type_error() -> None:
    with pytest.raises(TypeError):
        AttnRanges.from_ranges([(0, 1, 2)])
    with pytest.raises(TypeError):
        AttnRanges.from_ranges(["ab"])
    with pytest.raises(TypeError):
        slice_area(0, 1, 0, 1, 1.5)  # type: ignore[call-overload]


# ---------------------------------------------------------------- value protocol


@pytest.mark.parametrize("value", _sample_values(), ids=repr)
def test_pickle_copy_eq_hash(value) -> None:
    for clone in (pickle.loads(pickle.dumps(value)), copy.copy(value), copy.deepcopy(value)):
        assert clone == value
        assert hash(clone) == hash(value)
        assert type(clone) is type(value)
    assert value != object()
    assert value != "x"


def test_repr() -> None:
    assert repr(AttnRange(3, 7)) == "[3, 7)"
    assert repr(AttnRanges.from_ranges([(0, 5), (7, 9)])) == "[[0, 5), [7, 9)]"
    assert repr(AttnRanges()) == "[]"
    rect = AttnRectangle(AttnRange(0, 4), AttnRange(0, 4), "causal")
    assert repr(rect) == "AttnRectangle(q=[0, 4), k=[0, 4), d=[-3, 0])"
    assert repr(AttnRectangles([rect])) == f"AttnRectangles([{rect!r}])"
    assert repr(AttnMaskType.CAUSAL) == "<AttnMaskType.CAUSAL: 'causal'>"


def test_hash_and_eq_distinguish_values() -> None:
    assert AttnRange(1, 2) != AttnRange(1, 3)
    assert len({AttnRange(1, 2), AttnRange(1, 2), AttnRange(2, 1 + 1)}) == 2
    a = AttnRanges.from_ranges([(0, 2), (3, 4)])
    b = AttnRanges.from_ranges([(3, 4), (0, 2)])
    assert a != b and a == b.sort()
    assert len({a, b, b.sort()}) == 2
    assert AttnRange(1, 2) < AttnRange(1, 3) < AttnRange(2, 2)


# ---------------------------------------------------------------- sequence protocol


def test_sequence_protocol() -> None:
    rs = AttnRanges.from_ranges([(0, 2), (4, 6), (8, 9)])
    assert len(rs) == rs.size == 3
    assert rs[-1] == AttnRange(8, 9)
    assert rs[1:] == AttnRanges.from_ranges([(4, 6), (8, 9)])
    assert rs[::-1].to_naive_ranges() == [(8, 9), (4, 6), (0, 2)]
    assert [r.to_naive_range() for r in rs] == [(0, 2), (4, 6), (8, 9)]
    rs[0] = (1, 2)
    rs[1] = AttnRange(3, 6)
    assert rs.to_naive_ranges() == [(1, 2), (3, 6), (8, 9)]
    rs[1:] = [(10, 11)]
    assert rs.to_naive_ranges() == [(1, 2), (10, 11)]
    rs.append((20, 25))
    rs.insert(0, AttnRange(-3, -1))
    rs.extend(AttnRanges.from_ranges([(30, 31)]))
    rs.extend([(40, 41)])
    assert rs.pop() == AttnRange(40, 41)
    assert rs.pop(0) == AttnRange(-3, -1)
    del rs[0]
    assert rs.to_naive_ranges() == [(10, 11), (20, 25), (30, 31)]
    assert (rs.start, rs.end, rs.total_seqlen, rs.max_seqlen) == (10, 31, 7, 5)
    # items are copies: mutating one does not change the list
    item = rs[0]
    item.end = 19
    assert rs[0] == AttnRange(10, 11)
    assert rs.clone() == rs and rs.clone() is not rs
    assert AttnRanges().is_empty() and not rs.is_empty()


def test_anchor_examples() -> None:
    rs = AttnRanges.from_ranges([(5, 10), (15, 20), (25, 30)])
    assert rs.make_range_local(AttnRange(17, 20)) == AttnRange(7, 10)
    chunks = AttnRanges.from_ranges([(5, 10)]).chunk(4)
    assert [c.to_naive_ranges() for c in chunks] == [[(5, 9)], [(9, 10)]]
    assert AttnRanges.from_ranges([(0, 3), (3, 5), (7, 8)]).merge().to_naive_ranges() == [(0, 5), (7, 8)]
    assert AttnRange(2, 5).truncate(6, 9) == AttnRange(6, 6)


# ---------------------------------------------------------------- AttnMaskType


def test_mask_type_enum() -> None:
    assert AttnMaskType("causal") is AttnMaskType.CAUSAL
    assert AttnMaskType.INVCAUSAL.value == "inv_causal"
    assert [m.name for m in AttnMaskType] == ["FULL", "CAUSAL", "BICAUSAL", "INVCAUSAL"]
    codes = {m.name: m.to_int_type() for m in AttnMaskType}
    assert codes == {"FULL": 0, "CAUSAL": 1, "INVCAUSAL": 2, "BICAUSAL": 3}
    for m in AttnMaskType:
        assert AttnMaskType.from_int_type(m.to_int_type()) is m
    with pytest.raises(ValueError):
        AttnMaskType("diagonal")
    assert pickle.loads(pickle.dumps(AttnMaskType.BICAUSAL)) is AttnMaskType.BICAUSAL


def test_mask_type_accepted_as_enum_string_or_code() -> None:
    want = slice_area(0, 3, 0, 7, AttnMaskType.BICAUSAL)
    assert want == slice_area(0, 3, 0, 7, "bi_causal") == slice_area(0, 3, 0, 7, 3)
    assert want == slice_area(AttnRange(0, 3), AttnRange(0, 7), "bi_causal")
    s = AttnRectangle(AttnRange(0, 3), AttnRange(0, 7), "inv_causal").to_slices()
    assert s == [(AttnRange(0, 3), AttnRange(0, 7), AttnMaskType.INVCAUSAL)]
