"""The runtime's accumulation interface (ffa_forward / ffa_backward) and the LSE merge utilities."""

from __future__ import annotations

import magi_ffa
import pytest
import torch
from magi_ffa import (
    apply_sink,
    correct_attn_lse,
    correct_attn_out,
    correct_attn_out_lse,
    correct_attn_out_lse_with_sink,
    ffa_backward,
    ffa_forward,
    sink_backward,
)
from magi_ffa.testing import random_slices, ref_attn_dense

SCALE = 0.3


def _qkv(sq, sk, hq, hk, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(n, h, d, generator=g, dtype=torch.float64).to(dtype)
        for n, h in ((sq, hq), (sk, hk), (sk, hk))
    )


def _split_keys(qr, kr, tm, cut):
    """Split every slice's key range at global column `cut` into two calls' slice lists.

    Only FULL slices can be split without changing the mask, so the test uses FULL ones.
    """
    a, b = ([], [], []), ([], [], [])
    for (qs, qe), (ks, ke), t in zip(qr, kr, tm):
        assert t == 0
        if ks < cut:
            a[0].append([qs, qe]), a[1].append([ks, min(ke, cut)]), a[2].append(0)
        if ke > cut:
            b[0].append([qs, qe]), b[1].append([max(ks, cut), ke]), b[2].append(0)
    return a, b


def test_forward_merge_of_disjoint_key_sets_equals_union(small_tiles):
    q, k, v = _qkv(31, 40, 4, 2, 16)
    qr, kr, tm = random_slices(2, 31, 40, 8, types=(0,), allow_empty_k=False)
    full = ffa_forward(q, k, v, qr, kr, tm, softmax_scale=SCALE, return_max_logits=True, backend="torch")
    a, b = _split_keys(qr, kr, tm, 17)
    out, lse, ml = ffa_forward(q, k, v, *a, softmax_scale=SCALE, return_max_logits=True, backend="torch")
    out2, lse2, ml2 = ffa_forward(
        q, k, v, *b, softmax_scale=SCALE, out=out, lse=lse, max_logits=ml, backend="torch"
    )
    assert out2 is out and lse2 is lse and ml2 is ml  # merged in place
    torch.testing.assert_close(out, full[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, full[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ml, full[2])


def test_forward_merge_different_masks_per_call(small_tiles):
    """Two calls with disjoint cells of all four types == the dense reference of their union."""
    q, k, v = _qkv(30, 30, 2, 2, 8, seed=3, dtype=torch.float64)
    call1 = ([[0, 15], [15, 30]], [[0, 15], [15, 30]], [1, 2])
    call2 = ([[15, 30], [0, 10]], [[0, 15], [20, 30]], [3, 0])
    out, lse, _ = ffa_forward(q, k, v, *call1, softmax_scale=SCALE, backend="torch")
    untouched = out.clone()
    ffa_forward(q, k, v, *call2, softmax_scale=SCALE, out=out, lse=lse, backend="torch")
    union = [a + b for a, b in zip(call1, call2)]
    ref_out, ref_lse, _ = ref_attn_dense(q, k, v, *union, softmax_scale=SCALE)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)
    assert not torch.equal(untouched, out)


def test_forward_leaves_unreached_rows_untouched():
    q, k, v = _qkv(12, 12, 2, 1, 8)
    out = torch.randn(12, 2, 8)
    lse = torch.randn(12, 2)
    before = out.clone(), lse.clone()
    ffa_forward(q, k, v, [[0, 5]], [[0, 12]], [0], softmax_scale=SCALE, out=out, lse=lse, backend="torch")
    assert torch.equal(out[5:], before[0][5:]) and torch.equal(lse[5:], before[1][5:])
    assert not torch.equal(out[:5], before[0][:5])


def test_backward_accumulation_adds(small_tiles):
    """Backward of two calls into shared buffers == backward of one call over the union."""
    q, k, v = _qkv(29, 35, 4, 2, 16, seed=1)
    qr, kr, tm = random_slices(4, 29, 35, 8, types=(0,), allow_empty_k=False)
    out, lse, _ = ffa_forward(q, k, v, qr, kr, tm, softmax_scale=SCALE, backend="torch")
    dout = torch.randn_like(q)
    dq, dk, dv = ffa_backward(dout, q, k, v, out, lse, qr, kr, tm, softmax_scale=SCALE, backend="torch")
    a, b = _split_keys(qr, kr, tm, 13)
    delta = (out * dout).sum(-1)
    bufs = ffa_backward(dout, q, k, v, out, lse, *a, softmax_scale=SCALE, delta=delta, backend="torch")
    bufs2 = ffa_backward(
        dout, q, k, v, out, lse, *b, softmax_scale=SCALE, dq=bufs[0], dk=bufs[1], dv=bufs[2], backend="torch"
    )
    assert all(x is y for x, y in zip(bufs, bufs2))
    for name, x, y in zip(("dq", "dk", "dv"), bufs, (dq, dk, dv)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=name)


def test_runtime_style_sink_pipeline_matches_reference():
    """ffa_forward + apply_sink + ffa_backward + sink_backward == autograd of the dense ref."""
    q, k, v = _qkv(20, 24, 4, 2, 8, seed=5, dtype=torch.float64)
    qr, kr, tm = random_slices(7, 20, 24, 6)
    sink = torch.randn(2, 4, dtype=torch.float64)
    out, lse, _ = ffa_forward(q, k, v, qr, kr, tm, softmax_scale=SCALE, backend="torch")
    apply_sink(out, lse, sink, "sh")
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
    ref_out, ref_lse, _ = ref_attn_dense(*leaves[:3], qr, kr, tm, softmax_scale=SCALE, sink=leaves[3])
    torch.testing.assert_close(out, ref_out.detach())
    torch.testing.assert_close(lse, ref_lse.detach())
    dout = torch.randn_like(out)
    dq, dk, dv = ffa_backward(dout, q, k, v, out, lse, qr, kr, tm, softmax_scale=SCALE, backend="torch")
    dsink = sink_backward(sink, lse, out, dout, "sh")
    ref_grads = torch.autograd.grad(ref_out, leaves, dout)
    for x, y in zip((dq, dk, dv, dsink), ref_grads):
        torch.testing.assert_close(x, y)


# -- merge utilities -------------------------------------------------------------------------


def _partial(seed, sq=9, h=3, d=4, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(sq, h, d, generator=g)
    lse = torch.randn(sq, h, generator=g)
    for r in empty_rows:
        out[r] = 0
        lse[r] = float("-inf")
    return out, lse


def test_merge_matches_direct_logsumexp_and_is_inf_safe():
    o1, l1 = _partial(0, empty_rows=(1, 2))
    o2, l2 = _partial(1, empty_rows=(2, 3))
    out, lse = correct_attn_out_lse(o1, l1, o2, l2)
    expect_lse = torch.logaddexp(l1, l2)
    torch.testing.assert_close(lse, expect_lse)
    assert torch.isneginf(lse[2]).all() and torch.all(out[2] == 0)
    torch.testing.assert_close(out[1], o2[1]) and torch.testing.assert_close(out[3], o1[3])
    w1 = torch.exp(l1[0] - expect_lse[0]).unsqueeze(-1)
    torch.testing.assert_close(out[0], w1 * o1[0] + (1 - w1) * o2[0])
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    torch.testing.assert_close(correct_attn_lse(l1, l2), lse)
    torch.testing.assert_close(correct_attn_out(o1, l1, o2, l2, lse), out)


def test_merge_associative_and_inplace():
    parts = [_partial(s, empty_rows=(s,)) for s in range(3)]
    left = correct_attn_out_lse(*correct_attn_out_lse(*parts[0], *parts[1]), *parts[2])
    right = correct_attn_out_lse(*parts[0], *correct_attn_out_lse(*parts[1], *parts[2]))
    torch.testing.assert_close(left[0], right[0])
    torch.testing.assert_close(left[1], right[1])
    o, lse_ = parts[0][0].clone(), parts[0][1].clone()
    res = correct_attn_out_lse(o, lse_, *parts[1], inplace=True)
    assert res[0] is o and res[1] is lse_
    torch.testing.assert_close(o, correct_attn_out_lse(*parts[0], *parts[1])[0])


@pytest.mark.parametrize("layout", ["sh", "ssh"])
def test_sink_correction_equals_extra_keys(layout):
    o, lse_ = _partial(4, empty_rows=(0,))
    sink = torch.randn(2, 3) if layout == "sh" else torch.randn(9, 2, 3)
    out, lse = correct_attn_out_lse_with_sink(o, lse_, sink, layout)
    lse_sink = torch.logsumexp(sink, dim=0 if layout == "sh" else 1).expand(9, 3)
    # a sink is a partial result with lse = lse_sink and out = 0
    exp_out, exp_lse = correct_attn_out_lse(o, lse_, torch.zeros_like(o), lse_sink)
    torch.testing.assert_close(out, exp_out)
    torch.testing.assert_close(lse, exp_lse)
    torch.testing.assert_close(lse[0], lse_sink[0])
    assert magi_ffa.calc_lse_sink(sink, layout).shape == ((3,) if layout == "sh" else (9, 3))


# ------------------------------------------------------------------ interface 1.3: overwrite, q-dtype buffers
@pytest.fixture(params=["torch", "fa4"])
def writer_backend(request, monkeypatch):
    """The torch reference (accumulates into initialised fp32 buffers) and the fa4 backend on CPU
    through the FA4 stand-in (writes whole buffers, SUPPORTS_FRESH): both paths of the interface."""
    if request.param == "fa4":
        import _fake_fa4
        from magi_ffa.backends import fa4 as fa4_backend

        _fake_fa4.install_backend_on_cpu(monkeypatch)
        yield "fa4"
        fa4_backend.clear_mask_cache()
    else:
        yield "torch"


def _two_calls():
    """Two calls over disjoint key sets of every query row (rows 14.. see only the second), all
    four mask types, plus rows 28..32 that no call reaches."""
    first = ([[0, 14], [14, 28]], [[0, 14], [20, 30]], [1, 0])
    second = ([[0, 14], [14, 28], [4, 10]], [[16, 30], [0, 14], [14, 16]], [3, 2, 0])
    return first, second


def test_overwrite_and_low_precision_buffers_match_fp32_accumulators(writer_backend):
    """The runtime's pattern with two contributors: the first call writes buffers that hold NaN
    (overwrite: nothing is read), the second merges / adds into them, all in q's dtype (fp16). The
    result equals the fp32-accumulator path converted at the end (one rounding either way) and the
    float64 reference."""
    be = writer_backend
    q, k, v = _qkv(32, 30, 4, 2, 64, seed=11, dtype=torch.float16)
    dout = torch.randn(32, 4, 64, generator=torch.Generator().manual_seed(12)).half()
    first, second = _two_calls()
    # reference path: fp32 accumulators, then one cast
    out32, lse32, _ = ffa_forward(q, k, v, *first, softmax_scale=SCALE, backend=be)
    ffa_forward(q, k, v, *second, softmax_scale=SCALE, out=out32, lse=lse32, backend=be)
    # interface 1.3 path: fp16 out written by the first call, merged into by the second
    out = torch.full((32, 4, 64), float("nan"), dtype=torch.float16)
    lse = torch.full((32, 4), float("nan"))
    r = ffa_forward(q, k, v, *first, softmax_scale=SCALE, out=out, lse=lse, overwrite=True, backend=be)
    assert r[0] is out and r[1] is lse
    ffa_forward(q, k, v, *second, softmax_scale=SCALE, out=out, lse=lse, backend=be)
    torch.testing.assert_close(out, out32.half(), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(lse, lse32, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[28:], torch.zeros_like(out[28:])) and torch.isneginf(lse[28:]).all()
    union = [a + b for a, b in zip(first, second)]
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    ref_out, ref_lse, _ = ref_attn_dense(*ref, *union, softmax_scale=SCALE)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-3, rtol=2e-3)

    o, l_ = out.float(), lse  # the final forward results every backward call uses
    g32 = ffa_backward(dout, q, k, v, o, l_, *first, softmax_scale=SCALE, backend=be)
    ffa_backward(dout, q, k, v, o, l_, *second, softmax_scale=SCALE, dq=g32[0], dk=g32[1], dv=g32[2], backend=be)
    dq = torch.full(q.shape, float("nan"), dtype=torch.float16)
    dk1, dv1, dk2, dv2 = (torch.full(k.shape, float("nan"), dtype=torch.float16) for _ in range(4))
    ffa_backward(dout, q, k, v, o, l_, *first, softmax_scale=SCALE, dq=dq, dk=dk1, dv=dv1,
                 overwrite=True, backend=be)
    # the second call adds into dq and writes its own dK/dV (a stage's payload)
    ffa_backward(dout, q, k, v, o, l_, *second, softmax_scale=SCALE, dq=dq, dk=dk2, dv=dv2,
                 overwrite=("dk", "dv"), backend=be)
    torch.testing.assert_close(dq, g32[0].half(), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(dk1.float() + dk2.float(), g32[1], atol=4e-3, rtol=4e-3)
    torch.testing.assert_close(dv1.float() + dv2.float(), g32[2], atol=4e-3, rtol=4e-3)
    ref_grads = torch.autograd.grad(ref_out, ref, dout.double())
    for got, want in zip((dq, dk1.double() + dk2.double(), dv1.double() + dv2.double()), ref_grads):
        torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)


def test_overwrite_on_fp32_buffers_ignores_their_contents(writer_backend):
    """overwrite=True on fp32 buffers full of garbage gives exactly the fresh call's result."""
    be = writer_backend
    q, k, v = _qkv(32, 30, 4, 2, 64, seed=5)
    dout = torch.randn(32, 4, 64, generator=torch.Generator().manual_seed(6))
    first, _ = _two_calls()
    fresh = ffa_forward(q, k, v, *first, softmax_scale=SCALE, backend=be)
    out, lse = torch.randn(32, 4, 64), torch.full((32, 4), 3.0)
    ffa_forward(q, k, v, *first, softmax_scale=SCALE, out=out, lse=lse, overwrite=True, backend=be)
    torch.testing.assert_close(out, fresh[0], atol=0, rtol=0)
    torch.testing.assert_close(lse, fresh[1], atol=0, rtol=0)
    want = ffa_backward(dout, q, k, v, out, lse, *first, softmax_scale=SCALE, backend=be)
    got = [torch.randn(t.shape) for t in (q, k, v)]
    ffa_backward(dout, q, k, v, out, lse, *first, softmax_scale=SCALE, dq=got[0], dk=got[1], dv=got[2],
                 overwrite=True, backend=be)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_overwrite_argument_errors_name_the_argument():
    from magi_ffa.errors import FFAInputError, FFATypeError

    q, k, v = _qkv(16, 16, 2, 2, 8)
    out, lse, _ = ffa_forward(q, k, v, [[0, 16]], [[0, 16]], [1], softmax_scale=SCALE, backend="torch")
    with pytest.raises(FFAInputError, match=r"ffa_backward\(\): overwrite names \['dx'\] are not among"):
        ffa_backward(q, q, k, v, out, lse, [[0, 16]], [[0, 16]], [1], softmax_scale=SCALE,
                     overwrite=("dq", "dx"), backend="torch")
    with pytest.raises(FFATypeError, match=r"ffa_backward\(\): overwrite must be a bool or a collection"):
        ffa_backward(q, q, k, v, out, lse, [[0, 16]], [[0, 16]], [1], softmax_scale=SCALE,
                     overwrite=3, backend="torch")
    with pytest.raises(FFATypeError, match=r"ffa_backward\(\): dq must be a float32 buffer, got torch.float16"):
        ffa_backward(q, q, k, v, out, lse, [[0, 16]], [[0, 16]], [1], softmax_scale=SCALE,
                     dq=torch.zeros(16, 2, 8, dtype=torch.float16), backend="torch")
