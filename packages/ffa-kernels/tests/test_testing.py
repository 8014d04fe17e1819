"""The shipped reference helpers: mask rules, generators, the dense reference, the 3-way check."""

from __future__ import annotations

import math

import pytest
import torch
from magi_ffa.testing import (
    assert_close_to_ref,
    make_dense_mask,
    random_slices,
    ref_attn_dense,
    varlen_slices,
)


def _rows(mask):
    return ["".join("1" if x else "0" for x in row) for row in mask.tolist()]


@pytest.mark.parametrize(
    "t,rows",
    [(0, ["11111", "11111"]), (1, ["11110", "11111"]), (2, ["11111", "01111"]), (3, ["11110", "01111"])],
)
def test_mask_rules_lq2_lk5(t, rows):
    assert _rows(make_dense_mask([[0, 2]], [[0, 5]], [t], 2, 5)) == rows


def test_mask_rules_lq_gt_lk():
    assert _rows(make_dense_mask([[0, 4]], [[0, 2]], [1], 4, 2)) == ["00", "00", "10", "11"]
    assert _rows(make_dense_mask([[0, 4]], [[0, 2]], [2], 4, 2)) == ["11", "01", "00", "00"]
    assert not make_dense_mask([[0, 4]], [[0, 2]], [3], 4, 2).any()
    assert not make_dense_mask([[1, 3]], [[2, 2]], None, 4, 4).any()  # empty k range


def test_random_slices_are_cell_disjoint_and_varied():
    seen = dict(
        q_partial_overlap=False,
        k_overlap=False,
        empty_row=False,
        causal_lq_gt_lk=False,
        bicausal=False,
        empty_k=False,
    )
    for seed in range(12):
        qr, kr, tm = random_slices(seed, 40, 30, 8)
        assert random_slices(seed, 40, 30, 8) == (qr, kr, tm)  # reproducible
        count = torch.zeros(40, 30, dtype=torch.int32)
        for (qs, qe), (ks, ke), t in zip(qr, kr, tm):
            assert 0 <= qs < qe <= 40 and 0 <= ks <= ke <= 30 and t in (0, 1, 2, 3)
            count[qs:qe, ks:ke] += 1
            seen["causal_lq_gt_lk"] |= t == 1 and qe - qs > ke - ks > 0
            seen["bicausal"] |= t == 3
            seen["empty_k"] |= ke == ks
        assert count.max() <= 1
        mask = make_dense_mask(qr, kr, tm, 40, 30)
        seen["empty_row"] |= bool((~mask.any(1)).any())
        for a in range(len(qr)):
            for b in range(len(qr)):
                if a != b and kr[a][1] > kr[a][0] and kr[b][1] > kr[b][0]:
                    seen["q_partial_overlap"] |= qr[a][0] < qr[b][0] < qr[a][1] < qr[b][1]
                    seen["k_overlap"] |= kr[a][0] < kr[b][1] and kr[b][0] < kr[a][1]
    assert all(seen.values()), seen


def test_varlen_slices():
    assert varlen_slices([3, 2], 1) == ([[0, 3], [3, 5]], [[0, 3], [3, 5]], [1, 1])


def _loop_reference(q, k, v, mask, scale, softcap, sink):
    """Row-by-row softmax in plain Python floats: the reference of the reference."""
    sq, hq, d = q.shape
    g = hq // k.shape[1]
    out = torch.zeros(sq, hq, d, dtype=torch.float64)
    lse = torch.full((sq, hq), -math.inf, dtype=torch.float64)
    for h in range(hq):
        for i in range(sq):
            logits = []
            for j in range(k.shape[0]):
                if mask[i, j]:
                    x = scale * float(q[i, h] @ k[j, h // g])
                    logits.append((softcap * math.tanh(x / softcap) if softcap else x, j))
            terms = [x for x, _ in logits] + ([float(s) for s in sink[:, h]] if sink is not None else [])
            if not terms:
                continue
            m = max(terms)
            z = sum(math.exp(x - m) for x in terms)
            lse[i, h] = m + math.log(z)
            for x, j in logits:
                out[i, h] += math.exp(x - lse[i, h]) * v[j, h // g]
    return out, lse


@pytest.mark.parametrize("softcap,with_sink", [(0.0, False), (2.0, True)])
def test_dense_reference_matches_loop(softcap, with_sink):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, h, 4, generator=g, dtype=torch.float64) for n, h in ((9, 4), (11, 2), (11, 2)))
    sink = torch.randn(2, 4, generator=g, dtype=torch.float64) if with_sink else None
    qr, kr, tm = [[0, 5], [3, 9], [0, 3]], [[0, 6], [6, 11], [7, 9]], [1, 2, 3]
    mask = make_dense_mask(qr, kr, tm, 9, 11)
    out, lse, ml = ref_attn_dense(q, k, v, qr, kr, tm, softmax_scale=0.4, softcap=softcap, sink=sink)
    exp_out, exp_lse = _loop_reference(q, k, v, mask, 0.4, softcap, sink)
    torch.testing.assert_close(out, exp_out)
    torch.testing.assert_close(lse, exp_lse)
    s = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(2, 1)) * 0.4
    s = softcap * torch.tanh(s / softcap) if softcap else s
    torch.testing.assert_close(ml, s.masked_fill(~mask, -math.inf).amax((1, 2)))


def test_assert_close_to_ref():
    ref = torch.randn(5, 3, dtype=torch.float64)
    low = ref + 1e-3
    assert_close_to_ref("out", ref + 1.5e-3, low, ref)
    with pytest.raises(AssertionError, match="dq: max abs error"):
        assert_close_to_ref("dq", ref + 3e-3, low, ref)
    bad = ref.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(AssertionError, match="lse: contains NaN"):
        assert_close_to_ref("lse", bad, low, ref)
    ref_inf = ref.clone()
    ref_inf[0, 0] = -math.inf
    with pytest.raises(AssertionError, match="lse: infinite entries differ"):
        assert_close_to_ref("lse", ref, ref_inf, ref_inf)
    with pytest.raises(AssertionError, match="out: shape mismatch"):
        assert_close_to_ref("out", ref[:2], low, ref)
