"""Every input check of the group collectives: the bad value is refused with GrpCollError naming
the function and the argument (single process; the multi-process suites check the wiring)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from magi_grpcoll import GroupCastPlan, GrpCollError
from magi_grpcoll.checks import (
    check_lse,
    check_rank,
    check_rank_list,
    check_rank_sets,
    check_split_sizes,
    check_tensor,
    strip_device_padding,
)

FN = "group_cast"


def _refused(match, fn, *args, **kw):
    with pytest.raises(GrpCollError, match=match) as e:
        fn(*args, **kw)
    assert str(e.value).startswith(f"{FN}():"), e.value
    return str(e.value)


@pytest.mark.parametrize("sizes, length, match", [
    ([1, -2], None, r"input_split_sizes\[1\]=-2 is negative"),
    ([1, 2], 4, r"sum\(input_split_sizes\)=3 does not match .* \(4\)"),
    ([1, 2.0], None, r"input_split_sizes\[1\] must be an int; got float"),
    ([True], None, r"input_split_sizes\[0\] must be an int; got bool"),
    ("12", None, r"input_split_sizes must be a list of ints; got str"),
    (torch.tensor([1.0]), None, r"input_split_sizes must be a 1-D integer tensor"),
    (torch.tensor([[1]]), None, r"input_split_sizes must be a 1-D integer tensor .* shape \[1, 1\]"),
    (torch.tensor([True]), None, r"input_split_sizes must be a 1-D integer tensor"),
])
def test_split_sizes_refused(sizes, length, match):
    _refused(match, check_split_sizes, FN, "input_split_sizes", sizes, length)


def test_split_sizes_accepted_forms():
    assert check_split_sizes(FN, "s", [0, 3], 3) == [0, 3]
    assert check_split_sizes(FN, "s", (np.int64(2), 1), None) == [2, 1]
    assert check_split_sizes(FN, "s", torch.tensor([4, 0], dtype=torch.int32), 4) == [4, 0]


@pytest.mark.parametrize("rank, match", [
    (4, r"src_index=4 is out of range; ranks must lie in \[0, 4\)"),
    (-1, r"src_index=-1 is out of range"),
    ("x", r"src_index must be an int rank; got str"),
    (None, r"src_index must be an int rank; got NoneType"),
])
def test_rank_refused(rank, match):
    _refused(match, check_rank, FN, "src_index", rank, 4)


def test_rank_accepts_int_like():
    assert check_rank(FN, "r", np.int32(3), 4) == 3
    assert check_rank(FN, "r", torch.tensor(2), 4) == 2


@pytest.mark.parametrize("sets, match", [
    ([[1], [0, 0]], r"dst_indices\[1\]=\[0, 0\] lists a rank twice"),
    ([[1]], r"len\(dst_indices\)=1 but there are 2 splits"),
    ([[1], 3], r"dst_indices\[1\] must be a list of ranks; got int"),
    ([[1], [5]], r"dst_indices\[1\]\[0\]=5 is out of range"),
    ("ab", r"dst_indices must be a list of rank lists; got str"),
    (torch.tensor([1, 2]), r"dst_indices as a tensor must be 2-D .* got shape \[2\]"),
])
def test_rank_sets_refused(sets, match):
    _refused(match, check_rank_sets, FN, "dst_indices", sets, 2, 4)


def test_rank_sets_forms_and_empty_sets():
    padded = torch.tensor([[1, 2, -1, -1], [-1, -1, -1, -1]])
    assert check_rank_sets(FN, "d", padded, 2, 4) == ((1, 2), ())
    assert check_rank_sets(FN, "d", [torch.tensor([3]), (0, 1)], 2, 4) == ((3,), (0, 1))
    _refused(r"dst_indices\[1\] is empty", check_rank_sets, FN, "dst_indices", [[1], []], 2, 4, allow_empty=False)


def test_rank_list_refused_and_accepted():
    _refused(r"len\(src_index\)=2 but there are 3 splits", check_rank_list, FN, "src_index", [0, 1], 3, 4)
    _refused(r"src_index\[2\]=9 is out of range", check_rank_list, FN, "src_index", [0, 1, 9], 3, 4)
    assert check_rank_list(FN, "s", torch.tensor([3, 0]), 2, 4) == (3, 0)


def test_device_padding_is_stripped_only_at_the_end():
    assert strip_device_padding([2, 0, 0], torch.tensor([1, 4, 4]), 4) == ([2], [1])
    assert strip_device_padding([0, 2], [4, 1], 4) == ([0, 2], [4, 1])  # padding value mid-list: kept
    assert strip_device_padding([2, 1], [1, 4], 4) == ([2, 1], [1, 4])  # a non-empty split: kept


@pytest.mark.parametrize("make, kw, match", [
    (lambda: [1, 2], {}, r"output must be a torch.Tensor; got list"),
    (lambda: torch.tensor(1.0), {}, r"output must have at least one dimension"),
    (lambda: torch.zeros(3, 2), {"dim0": 4}, r"output has 3 rows along dim 0; expected 4"),
    (lambda: torch.zeros(3, 2), {"dtype": torch.float64}, r"output must be torch.float64; got torch.float32"),
    (lambda: torch.zeros(3, 2, dtype=torch.float16), {"like": torch.zeros(1, 2)},
     r"output dtype torch.float16 differs from input dtype torch.float32"),
    (lambda: torch.zeros(3, 5), {"like": torch.zeros(1, 2)}, r"output row shape \[5\] differs from input row shape \[2\]"),
    (lambda: torch.zeros(2, 3).t(), {}, r"output must be contiguous"),
    (lambda: torch.zeros(3, 2, device="meta"), {"like": torch.zeros(1, 2)}, r"output is on meta but input is on cpu"),
])
def test_tensor_refused(make, kw, match):
    _refused(match, check_tensor, FN, "output", make(), **kw)


def test_lse_refused():
    data = torch.zeros(5, 3, 8)
    _refused(r"output_lse must be torch.float32", check_lse, FN, "output_lse", torch.zeros(5, 3, dtype=torch.float64), data)
    _refused(r"output_lse must be float32 \[seqlen, num_heads\] = \[5, 3\] .* got shape \[5, 4\]",
             check_lse, FN, "output_lse", torch.zeros(5, 4), data)
    _refused(r"output_lse must be float32 \[seqlen, num_heads\]", check_lse, FN, "output_lse", torch.zeros(5, 3), torch.zeros(5))
    _refused(r"output_lse is on meta but its data is on cpu", check_lse, FN, "output_lse",
             torch.zeros(5, 3, device="meta"), data)
    assert check_lse(FN, "output_lse", torch.zeros(5, 3), data).shape == (5, 3)


def test_plan_build_reports_the_argument():
    """The checks are wired into plan building (one example per list)."""
    with pytest.raises(GrpCollError, match=r"dst_indices\[0\]\[0\]=7 is out of range"):
        GroupCastPlan.build([1], [1], [[7]], [0], rank=0, world_size=2)
    with pytest.raises(GrpCollError, match=r"input_split_sizes\[0\]=-1 is negative"):
        GroupCastPlan.build([-1], [], [[1]], [], rank=0, world_size=2)
