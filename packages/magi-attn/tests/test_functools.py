"""Mask helpers vs dense masks, padding, cu_seqlens inference."""

import itertools

import pytest
import torch
from magi_attention.api import functools as F
from magi_attention.errors import MagiAttentionError
from magi_ffa.testing import make_dense_mask


def _dense_window(lq, lk, left, right):
    i = torch.arange(lq).unsqueeze(1)
    j = torch.arange(lk).unsqueeze(0)
    c = i + lk - lq
    m = torch.ones(lq, lk, dtype=torch.bool)
    if left != -1:
        m &= j >= c - left
    if right != -1:
        m &= j <= c + right
    m &= (c >= 0)  # rows before Lq - Lk are dropped when Lq > Lk
    return m


def test_sliding_window_exhaustive():
    for lq, lk in itertools.product(range(1, 9), range(1, 9)):
        for left, right in itertools.product(range(-1, 9), range(-1, 9)):
            sl = F.sliding_window_slices((3, 3 + lq), (5, 5 + lk), (left, right))
            assert len(sl) <= 3
            mask = make_dense_mask([s[0] for s in sl], [s[1] for s in sl], [s[2] for s in sl],
                                   3 + lq, 5 + lk)
            # cell-disjoint: the count of covered cells equals the sum of slice areas
            area = sum(int(make_dense_mask([s[0]], [s[1]], [s[2]], 3 + lq, 5 + lk).sum())
                       for s in sl)
            assert area == int(mask.sum()), (lq, lk, left, right)
            assert torch.equal(mask[3:, 5:], _dense_window(lq, lk, left, right)), \
                (lq, lk, left, right, sl)
            assert not mask[:3].any() and not mask[:, :5].any()


def test_sliding_window_public_types():
    qr, kr, types = F.infer_attn_mask_from_sliding_window((0, 8), (0, 8), (2, 1))
    assert [t.to_int_type() for t in types] == [1, 3, 2]
    assert len(qr.to_naive_ranges()) == 3


def test_cu_seqlens_and_padding():
    qr, kr, types, tq, tk = F.infer_attn_mask_from_cu_seqlens([0, 3, 10], [0, 3, 10], causal=True)
    assert qr.to_naive_ranges() == [(0, 3), (3, 10)] and tq == tk == 10
    assert [t.to_int_type() for t in types] == [1, 1]
    with pytest.raises(MagiAttentionError, match="causal=True"):
        F.infer_attn_mask_from_cu_seqlens([0, 4], [0, 4], causal=True, window_size=(2, 0))
    with pytest.raises(MagiAttentionError, match="cu_seqlens_q"):
        F.infer_attn_mask_from_cu_seqlens([1, 4], [0, 4])
    qr2, kr2, t2 = F.apply_padding(qr, kr, types, 10, 6)
    assert qr2.to_naive_ranges()[-1] == (10, 16) and kr2.to_naive_ranges()[-1] == (0, 0)
    assert t2[-1].to_int_type() == 0


def test_pad_helpers():
    assert F.compute_pad_size(100, 2, 16) == 28 and F.compute_pad_size(64, 2, 16) == 0
    with pytest.raises(MagiAttentionError, match="chunk_size"):
        F.compute_pad_size(10, 2, 0)
    x = torch.randn(5, 3)
    y = F.pad_at_dim(x, 0, 3, value=7.0)
    assert y.shape == (8, 3) and torch.all(y[5:] == 7.0)
    assert torch.equal(F.unpad_at_dim(y, 0, 3), x)
    z = F.pad_at_dim(x, 1, 2, side="left")
    assert z.shape == (5, 5) and torch.equal(z[:, 2:], x)
    assert F.squash_batch_dim(torch.randn(2, 3, 4)).shape == (6, 4)
    cu_q, cu_k = F.infer_varlen_mask_from_batch(3, 5, device="cpu")
    assert cu_q.tolist() == [0, 5, 10, 15] and cu_q.dtype == torch.int32


def test_config_checks():
    from magi_attention.config import OverlapConfig

    with pytest.raises(MagiAttentionError, match="degree"):
        OverlapConfig(degree=0)
    with pytest.raises(MagiAttentionError, match="dynamic"):
        OverlapConfig(mode="dynamic", degree=2)
    assert OverlapConfig(enable=False, degree=5).degree == 1
