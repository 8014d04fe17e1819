import itertools

import torch
from magi_attn_extensions.sink.masks import slices_to_dense, varlen_slices, window_slices


def _band(lq, lk, causal, left, right):
    right = 0 if causal else right
    i = torch.arange(lq)[:, None]
    j = torch.arange(lk)[None, :]
    m = torch.ones(lq, lk, dtype=torch.bool)
    if left >= 0:
        m &= j >= i + lk - lq - left
    if right >= 0:
        m &= j <= i + lk - lq + right
    return m


def test_window_slices_cover_band_exactly_once():
    for lq, lk, left, right, causal in itertools.product(range(6), range(6), range(-1, 6), range(-1, 6), (0, 1)):
        slices = window_slices(lq, lk, bool(causal), (left, right))
        count = torch.zeros(lq, lk, dtype=torch.int64)
        for s in slices:
            assert s[0] < s[1] and 0 <= s[2] <= s[3] <= lk, s
            count += slices_to_dense([s], lq, lk).long()
        assert torch.equal(count, _band(lq, lk, causal, left, right).long()), (lq, lk, left, right, causal)


def test_varlen_slices_block_diagonal_with_offsets():
    cu_q, cu_k = [0, 3, 3, 8], [0, 4, 6, 9]
    dense = slices_to_dense(varlen_slices(cu_q, cu_k, True, (1, -1)), 8, 9)
    ref = torch.zeros(8, 9, dtype=torch.bool)
    for i in range(3):
        ref[cu_q[i]:cu_q[i + 1], cu_k[i]:cu_k[i + 1]] = _band(cu_q[i + 1] - cu_q[i], cu_k[i + 1] - cu_k[i], True, 1, -1)
    assert torch.equal(dense, ref)
