"""torch backend through flex_flash_attn_func vs the float64 dense reference (fwd and bwd)."""

from __future__ import annotations

import pytest
import torch
from magi_ffa import flex_flash_attn_func
from magi_ffa.testing import assert_close_to_ref, random_slices, ref_attn_dense

# Hand-written masks covering each feature explicitly (Sq=29, Sk=37).
HAND_MASKS = {
    # causal with Lq > Lk (first rows empty), inv-causal with Lq > Lk, full; overlapping q rows
    "causal_lq_gt_lk": ([[0, 20], [0, 20], [20, 29]], [[0, 7], [7, 30], [30, 37]], [1, 2, 0]),
    # bi-causal Lq < Lk and Lq > Lk (empty), overlapping k columns across different q rows
    "bicausal": ([[0, 10], [10, 29], [3, 9]], [[0, 17], [0, 12], [20, 37]], [3, 3, 1]),
    # rows 25..29 uncovered, empty k padding slice, all four types
    "empty_rows": (
        [[0, 25], [0, 12], [12, 25], [5, 20], [25, 29]],
        [[0, 9], [9, 21], [9, 21], [21, 37], [0, 0]],
        [0, 1, 2, 3, 0],
    ),
    "varlen_causal": ([[0, 11], [11, 29]], [[0, 11], [11, 29]], [1, 1]),
}


def _inputs(sq, sk, hq, hk, d, dtype, seed=0, sink_shape=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, hq, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    k = torch.randn(sk, hk, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    v = torch.randn(sk, hk, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    sink = None
    if sink_shape is not None:
        sink = torch.randn(*sink_shape, generator=g, dtype=torch.float64).float().requires_grad_()
    return q, k, v, sink


def _check_all(q, k, v, sink, qr, kr, tm, *, softcap=0.0, sink_layout="sh", slack=2.0, max_logits=True):
    """Three-way check of out, lse, max_logits and all gradients."""
    kw = dict(softcap=softcap, sink=sink, sink_layout=sink_layout)
    out, meta = flex_flash_attn_func(q, k, v, qr, kr, tm, return_max_logits=max_logits, backend="torch", **kw)
    assert out.dtype == q.dtype and meta.lse.dtype == (
        torch.float64 if q.dtype == torch.float64 else torch.float32
    )
    ref = ref_attn_dense(q, k, v, qr, kr, tm, **kw)
    low = ref_attn_dense(q, k, v, qr, kr, tm, compute_dtype=q.dtype, **kw)
    assert_close_to_ref("out", out, low[0], ref[0], slack=slack)
    assert_close_to_ref("lse", meta.lse, low[1], ref[1], slack=slack)
    if max_logits:
        assert_close_to_ref("max_logits", meta.max_logits, low[2], ref[2], slack=slack)
    else:
        assert meta.max_logits is None
    dout = torch.randn_like(ref[0]).to(q.dtype)
    leaves = [t for t in (q, k, v, sink) if t is not None]
    grads = torch.autograd.grad(out, leaves, dout)
    grads_ref = torch.autograd.grad(ref[0], leaves, dout.double())
    grads_low = torch.autograd.grad(low[0], leaves, dout)
    for name, gx, gl, gr in zip(("dq", "dk", "dv", "dsink"), grads, grads_low, grads_ref):
        assert gx.dtype == gl.dtype
        assert_close_to_ref(name, gx, gl, gr, slack=slack)


@pytest.mark.parametrize("name", sorted(HAND_MASKS))
def test_hand_masks_fp64(name, small_tiles):
    qr, kr, tm = HAND_MASKS[name]
    q, k, v, _ = _inputs(29, 37, 4, 2, 16, torch.float64)
    _check_all(q, k, v, None, qr, kr, tm)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("hq,hk", [(4, 4), (4, 2), (3, 1)])
def test_random_masks_fp64(seed, hq, hk, small_tiles):
    sq, sk = 33 + seed, 41 - seed  # odd lengths, Sq < Sk and Sq > Sk
    qr, kr, tm = random_slices(seed, sq, sk, 7)
    q, k, v, _ = _inputs(sq, sk, hq, hk, 8, torch.float64, seed)
    _check_all(q, k, v, None, qr, kr, tm)


@pytest.mark.parametrize("seed", range(3))
def test_random_masks_fp32_softcap(seed, small_tiles):
    qr, kr, tm = random_slices(seed + 10, 47, 39, 8)
    q, k, v, _ = _inputs(47, 39, 4, 2, 16, torch.float32, seed)
    _check_all(q, k, v, None, qr, kr, tm, softcap=2.5, slack=4.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype, small_tiles):
    qr, kr, tm = HAND_MASKS["empty_rows"]
    q, k, v, _ = _inputs(29, 37, 4, 1, 16, dtype)
    _check_all(q, k, v, None, qr, kr, tm)


@pytest.mark.parametrize("layout", ["sh", "ssh"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sink(layout, dtype, small_tiles):
    qr, kr, tm = HAND_MASKS["empty_rows"]  # empty rows get lse = logsumexp(sink), out 0
    shape = (3, 4) if layout == "sh" else (29, 3, 4)
    q, k, v, sink = _inputs(29, 37, 4, 2, 16, dtype, sink_shape=shape)
    _check_all(q, k, v, sink, qr, kr, tm, sink_layout=layout, softcap=4.0, slack=4.0)
    out, meta = flex_flash_attn_func(q, k, v, qr, kr, tm, sink=sink, sink_layout=layout, backend="torch")
    lse_sink = torch.logsumexp(sink.detach(), dim=0 if layout == "sh" else 1).expand(29, 4)
    torch.testing.assert_close(meta.lse[25:], lse_sink[25:].to(meta.lse.dtype))
    assert torch.all(out[25:] == 0)


def test_empty_rows_and_heads_without_cells():
    q, k, v, _ = _inputs(10, 12, 2, 2, 8, torch.float32)
    qr, kr, tm = [[0, 4], [6, 8]], [[0, 5], [3, 3]], [0, 0]
    out, meta = flex_flash_attn_func(q, k, v, qr, kr, tm, return_max_logits=True, backend="torch")
    assert torch.all(out[4:] == 0) and torch.all(torch.isneginf(meta.lse[4:]))
    assert torch.isfinite(meta.lse[:4]).all()
    # causal with Lq > Lk leaves every row empty only when Lk = 0; bi-causal Lq > Lk is empty
    out, meta = flex_flash_attn_func(
        q, k, v, [[0, 10]], [[0, 5]], [3], return_max_logits=True, backend="torch"
    )
    assert torch.all(out == 0) and torch.isneginf(meta.max_logits).all()
    (dq, dk, dv) = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert not dq.any() and not dk.any() and not dv.any()


def test_default_tiles_larger_than_shape():
    qr, kr, tm = random_slices(3, 70, 90, 9)
    q, k, v, _ = _inputs(70, 90, 4, 2, 32, torch.float64)
    _check_all(q, k, v, None, qr, kr, tm, max_logits=False)


def test_deterministic_bitwise(small_tiles):
    qr, kr, tm = random_slices(5, 40, 40, 8)
    q, k, v, sink = _inputs(40, 40, 4, 2, 16, torch.bfloat16, sink_shape=(2, 4))
    runs = []
    for _ in range(2):
        out, meta = flex_flash_attn_func(q, k, v, qr, kr, tm, sink=sink, deterministic=True, backend="torch")
        grads = torch.autograd.grad(out, (q, k, v, sink), torch.ones_like(out))
        runs.append((out, meta.lse, *grads))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_tensor_ranges_and_ignored_knobs_match():
    qr, kr, tm = HAND_MASKS["bicausal"]
    q, k, v, _ = _inputs(29, 37, 4, 2, 16, torch.float32)
    out1, m1 = flex_flash_attn_func(q, k, v, qr, kr, tm, backend="torch")
    out2, m2 = flex_flash_attn_func(
        q,
        k,
        v,
        torch.tensor(qr, dtype=torch.int32),
        torch.tensor(kr, dtype=torch.int32),
        torch.tensor(tm, dtype=torch.int32),
        backend="torch",
        sm_margin=4,
        ref_block_size=(128, 64),
        max_seqlen_q=29,
        swap_bwd_qk_loop=True,
        cat_gqa=True,
    )
    assert torch.equal(out1, out2) and torch.equal(m1.lse, m2.lse)
