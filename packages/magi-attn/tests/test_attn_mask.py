"""AttnMask (common/mask.py): the dense mask of slices against an independent builder
(magi_ffa.testing.make_dense_mask), the round trip through from_mask, the predicates on masks that
are and nearly are what they name, sub-masks, and bad input."""

from __future__ import annotations

import random

import pytest
import torch
from magi_attention.common import AttnMask, AttnMaskType, AttnRanges
from magi_attention.errors import MagiAttentionError
from magi_ffa.testing import make_dense_mask, overlapping_slices, random_slices, varlen_slices


def _random_masks():
    rng = random.Random(3)
    for i in range(6):
        sq, sk = rng.randint(1, 40), rng.randint(1, 40)
        yield f"disjoint{i}", sq, sk, *random_slices(rng, sq, sk, 6)
        yield f"overlapping{i}", sq, sk, *overlapping_slices(rng, sq, sk, 5)


RANDOM = list(_random_masks())


@pytest.mark.parametrize("name,sq,sk,qr,kr,ts", RANDOM, ids=[m[0] for m in RANDOM])
def test_from_ranges_is_the_union_of_the_slices(name, sq, sk, qr, kr, ts):
    m = AttnMask.from_ranges(qr, kr, ts, sq, sk)
    want = make_dense_mask(qr, kr, ts, sq, sk)
    assert m.mask_tensor.dtype == torch.int32 and m.mask_tensor.device.type == "cpu"
    assert torch.equal(m(), want.to(torch.int32))
    assert m.area() == int(want.sum())
    assert (m.total_seqlen_q, m.total_seqlen_k) == (sq, sk)
    assert [list(r) for r in m.q_ranges.to_naive_ranges()] == qr and [list(r) for r in m.k_ranges.to_naive_ranges()] == kr
    assert [int(t.to_int_type()) for t in m.attn_mask_type] == ts


@pytest.mark.parametrize("name,sq,sk,qr,kr,ts", RANDOM, ids=[m[0] for m in RANDOM])
def test_from_mask_round_trips(name, sq, sk, qr, kr, ts):
    m = AttnMask.from_ranges(qr, kr, ts, sq, sk)
    back = AttnMask.from_mask(m.mask_tensor)
    assert all(t == AttnMaskType.FULL for t in back.attn_mask_type)
    again = AttnMask.from_ranges(back.q_ranges, back.k_ranges, back.attn_mask_type, sq, sk)
    assert torch.equal(again(), m())
    # its slices are cell-disjoint: their areas add up to the mask's
    assert sum((qe - qs) * (ke - ks) for (qs, qe), (ks, ke) in
               zip(back.q_ranges.to_naive_ranges(), back.k_ranges.to_naive_ranges())) == m.area()


def test_spellings_of_ranges_and_types_agree():
    qr, kr = [[0, 4], [4, 10]], [[0, 4], [2, 10]]
    base = AttnMask.from_ranges(qr, kr, [0, 1])
    for q, k, t in ((AttnRanges.from_ranges(qr), AttnRanges.from_ranges(kr), [AttnMaskType.FULL, AttnMaskType.CAUSAL]),
                    (torch.tensor(qr), torch.tensor(kr), ["full", "causal"]),
                    (qr, kr, torch.tensor([0, 1]))):
        assert torch.equal(AttnMask.from_ranges(q, k, t)(), base())
    assert torch.equal(AttnMask.from_ranges(qr, kr, "full")(), AttnMask.from_ranges(qr, kr, [0, 0])())


def test_a_sequence_of_documents_is_varlen_and_not_pure():
    lens = [3, 1, 5, 2]
    causal = AttnMask.from_ranges(*varlen_slices(lens, 1))
    full = AttnMask.from_ranges(*varlen_slices(lens, 0))
    assert causal.is_varlen_causal() and not causal.is_varlen_full() and not causal.is_pure_causal()
    assert full.is_varlen_full() and not full.is_varlen_causal() and not full.is_pure_full()
    assert causal.area() == sum(n * (n + 1) // 2 for n in lens) and full.area() == sum(n * n for n in lens)
    # the same documents cut into more slices (a document's rows in two pieces) are the same mask
    cut = AttnMask.from_ranges([[0, 2], [2, 3], [3, 4]], [[0, 2], [0, 3], [3, 4]], [1, 1, 1])
    assert cut.is_varlen_causal() and torch.equal(cut(), AttnMask.from_ranges(*varlen_slices([3, 1], 1))())


@pytest.mark.parametrize("sq,sk", [(6, 6), (4, 7), (7, 4)])
def test_one_causal_slice_is_pure_causal(sq, sk):
    m = AttnMask.from_ranges([[0, sq]], [[0, sk]], "causal")
    assert m.is_pure_causal() and not m.is_pure_full()
    assert torch.equal(m(), torch.ones(sq, sk, dtype=torch.int32).tril(sk - sq))
    assert m.is_varlen_causal() == (sq == sk) and m.is_square() == (sq == sk)


def test_one_full_slice_is_pure_full_and_one_document():
    m = AttnMask.from_ranges([[0, 5]], [[0, 5]], "full")
    assert m.is_pure_full() and m.is_varlen_full() and not m.is_pure_causal() and not m.is_empty()


@pytest.mark.parametrize("change", ["drop_a_cell", "empty_row", "see_the_next_document", "gap_in_a_row"])
def test_near_misses_are_not_varlen(change):
    m = AttnMask.from_ranges(*varlen_slices([4, 4], 1)).mask_tensor.clone()
    f = AttnMask.from_ranges(*varlen_slices([4, 4], 0)).mask_tensor.clone()
    if change == "drop_a_cell":
        m[6, 5] = 0
        f[6, 5] = 0
    elif change == "empty_row":
        m[5] = 0
        f[5] = 0
    elif change == "see_the_next_document":
        m[2, 4] = 1
        f[2, 4] = 1
    else:  # a row that sees two runs
        m[7, 4] = 0
        f[7, 4] = 0
        m[7, 0] = 1
        f[7, 0] = 1
    assert not AttnMask.from_mask(m).is_varlen_causal() and not AttnMask.from_mask(m).is_varlen_full()
    assert not AttnMask.from_mask(f).is_varlen_full()


def test_an_empty_mask():
    m = AttnMask.from_ranges([[0, 3]], [[2, 2]], "full", 3, 4)
    assert m.is_empty() and m.area() == 0 and not m.is_pure_full() and not m.is_pure_causal()
    assert not m.is_varlen_full() and not m.is_varlen_causal()
    none = AttnMask.from_ranges([], [], [])
    assert none.is_empty() and (none.total_seqlen_q, none.total_seqlen_k) == (0, 0)


def test_sub_masks_and_sub_areas():
    qr, kr, ts = random_slices(random.Random(7), 30, 25, 6)
    m = AttnMask.from_ranges(qr, kr, ts, 30, 25)
    rng = random.Random(8)
    for _ in range(20):
        qs, ks = rng.randint(0, 30), rng.randint(0, 25)
        q, k = (qs, rng.randint(qs, 30)), (ks, rng.randint(ks, 25))
        block = m.mask_tensor[q[0]:q[1], k[0]:k[1]]
        assert m.calc_sub_area(q, k) == int(block.sum())
        sub = m.make_sub_mask(q, k)
        assert torch.equal(sub(), block) and sub.area() == int(block.sum())


def test_make_causal_mask():
    assert torch.equal(AttnMask.make_causal_mask(3, 5), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],
                                                                   dtype=torch.int32))
    assert torch.equal(AttnMask.make_causal_mask(3, 5, align="top-left", dtype=torch.bool),
                       torch.ones(3, 5, dtype=torch.bool).tril())


def test_visualize(tmp_path):
    m = AttnMask.from_ranges([[0, 4]], [[0, 4]], "causal")
    assert m.visualize() == "█···\n██··\n███·\n████"
    # two cells a character: the diagonal blocks are partly visible
    assert m.visualize(max_size=2) == "▒·\n█▒"
    pytest.importorskip("matplotlib")
    m.visualize(save_path=str(tmp_path / "mask.png"))
    assert (tmp_path / "mask.png").stat().st_size > 0


@pytest.mark.parametrize("call,match", [
    (lambda: AttnMask(torch.zeros(2, 2, dtype=torch.int32), [], [], []), "from_ranges"),
    (lambda: AttnMask.from_ranges([[0, 2]], [[0, 2], [2, 4]], "full"), "k_ranges has 2"),
    (lambda: AttnMask.from_ranges([[0, 5]], [[0, 2]], "full", total_seqlen_q=4), r"q_ranges\[0\]=\(0, 5\) ends beyond total_seqlen_q=4"),
    (lambda: AttnMask.from_ranges([[0, 2]], [[0, 9]], "full", 4, 8), "k_ranges"),
    (lambda: AttnMask.from_ranges([[3, 2]], [[0, 2]], "full"), "q_ranges"),
    (lambda: AttnMask.from_ranges([[0, 2]], [[0, 2]], "diagonal"), "not a mask type"),
    (lambda: AttnMask.from_ranges([[0, 2]], [[0, 2]], "full", total_seqlen_k=-1), "total_seqlen_k"),
    (lambda: AttnMask.from_mask(torch.ones(2, 2, 2)), "2-D"),
    (lambda: AttnMask.from_mask(torch.full((2, 2), 2)), "0 / 1"),
    (lambda: AttnMask.make_causal_mask(2, 2, align="center"), "align"),
    (lambda: AttnMask.from_ranges([[0, 2]], [[0, 2]], "full").calc_sub_area((0, 3), (0, 1)), "q_range"),
    (lambda: AttnMask.from_ranges([[0, 2]], [[0, 2]], "full").make_sub_mask((0, 1), (1, 0)), "k_range"),
    (lambda: AttnMask.from_ranges([[0, 2]], [[0, 2]], "full").visualize(max_size=0), "max_size"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises((MagiAttentionError, TypeError), match=match):
        call()
