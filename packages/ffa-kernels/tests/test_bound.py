"""FFACall (interface 1.4): one mask's ffa_forward / ffa_backward, checked once per call layout.

It must give what the accumulating interface gives, check a layout the first time it sees it (and a
call's buffers every time), name the argument when something is wrong, and keep its own ranges."""

from __future__ import annotations

import random

import pytest
import torch
from magi_ffa import FFACall, api, ffa_backward, ffa_forward
from magi_ffa.errors import FFAInputError, FFATypeError
from magi_ffa.testing import random_slices, ref_attn_dense

SCALE = 0.3


def _tensors(sq, sk, hq, hk, d, seed):
    g = torch.Generator().manual_seed(seed)
    q, dout = (torch.randn(sq, hq, d, generator=g, dtype=torch.float64) for _ in range(2))
    k, v, k2, v2 = (torch.randn(sk, hk, d, generator=g, dtype=torch.float64) for _ in range(4))
    return q, k, v, k2, v2, dout


@pytest.mark.parametrize("hq,hk,softcap", [(2, 2, 0.0), (4, 2, 3.0)], ids=["mha", "gqa-softcap"])
def test_two_stages_through_bound_calls_match_the_interface_and_float64(small_tiles, hq, hk, softcap):
    """A host stage and a remote stage (its own keys), accumulated as the runtime does: the bound
    calls give exactly what ffa_forward / ffa_backward give, and both match the float64 reference."""
    rng = random.Random(4)
    sq = sk = 37
    q, k, v, k2, v2, dout = _tensors(sq, sk, hq, hk, 16, seed=5)
    host = random_slices(rng, sq, sk, 5, allow_empty_k=False)  # all four mask types, empty rows
    remote = random_slices(rng, sq, sk, 4, allow_empty_k=False)  # rows shared with the host stage
    kw = dict(softmax_scale=SCALE, softcap=softcap)
    calls = FFACall(*host, backend="torch"), FFACall(*remote, backend="torch")

    def run(fwd, bwd):
        out, lse, _ = fwd(0, q, k, v, overwrite=True)
        fwd(1, q, k2, v2, out=out, lse=lse)
        dq, dk, dv = bwd(0, dout, q, k, v, out, lse)
        _, dk2, dv2 = bwd(1, dout, q, k2, v2, out, lse, dq=dq)
        return out, lse, dq, dk, dv, dk2, dv2

    def interface_fwd(i, q_, k_, v_, out=None, lse=None, overwrite=False):
        return ffa_forward(q_, k_, v_, *(host, remote)[i], out=out, lse=lse, backend="torch", **kw)

    def interface_bwd(i, dout_, q_, k_, v_, out, lse, dq=None):
        return ffa_backward(dout_, q_, k_, v_, out, lse, *(host, remote)[i], dq=dq, backend="torch", **kw)

    bound = run(lambda i, *a, **o: calls[i].forward(*a, **o, **kw),
                lambda i, *a, **o: calls[i].backward(*a, **o, **kw))
    for got, want in zip(bound, run(interface_fwd, interface_bwd)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)

    qa, ka, va = q.clone().requires_grad_(), torch.cat([k, k2]).requires_grad_(), torch.cat([v, v2]).requires_grad_()
    shifted = [[a + sk, b + sk] for a, b in remote[1]]
    ref_out, ref_lse, _ = ref_attn_dense(qa, ka, va, host[0] + remote[0], host[1] + shifted, host[2] + remote[2],
                                         softmax_scale=SCALE, softcap=softcap)
    out, lse, dq, dk, dv, dk2, dv2 = bound
    torch.testing.assert_close(out, ref_out, atol=1e-9, rtol=1e-9)
    seen = ref_lse > float("-inf")
    torch.testing.assert_close(lse[seen], ref_lse[seen], atol=1e-9, rtol=1e-9)
    rq, rk, rv = torch.autograd.grad(ref_out, (qa, ka, va), dout)
    for got, want in ((dq, rq), (dk, rk[:sk]), (dv, rv[:sk]), (dk2, rk[sk:]), (dv2, rv[sk:])):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_a_layout_is_checked_once_and_buffers_every_call(monkeypatch):
    checked = []
    real = api._prepare_checked
    monkeypatch.setattr(api, "_prepare_checked", lambda *a: checked.append(a[0]) or real(*a))
    q, k, v, *_ = _tensors(20, 20, 2, 2, 8, seed=1)
    call = FFACall([[0, 20]], [[0, 20]], [1], backend="torch")
    for _ in range(3):
        call.forward(q, k, v, softmax_scale=SCALE)
    assert checked == ["FFACall.forward"]
    call.forward(q, k, v, softmax_scale=0.5)  # another scale: another layout
    call.forward(q.float(), k.float(), v.float(), softmax_scale=SCALE)  # another dtype
    assert len(checked) == 3
    out, lse, _ = call.forward(q, k, v, softmax_scale=SCALE)
    with pytest.raises(FFAInputError, match=r"FFACall\.forward\(\): out must have shape"):
        call.forward(q, k, v, softmax_scale=SCALE, out=out[:10], lse=lse)
    with pytest.raises(FFATypeError, match=r"FFACall\.backward\(\): dq must be"):
        call.backward(q, q, k, v, out, lse, softmax_scale=SCALE, dq=torch.empty(20, 2, 8, dtype=torch.int32))
    # a shorter q is a new layout, checked: the bound ranges no longer fit it
    with pytest.raises(FFAInputError, match="q_ranges"):
        call.forward(q[:10], k, v, softmax_scale=SCALE)


def test_bad_arguments_name_themselves():
    with pytest.raises(FFATypeError, match="deterministic"):
        FFACall([[0, 4]], [[0, 4]], deterministic=1)
    with pytest.raises(FFATypeError, match="backend"):
        FFACall([[0, 4]], [[0, 4]], backend=3)
    q, k, v, *_ = _tensors(4, 4, 1, 1, 8, seed=2)
    with pytest.raises(FFAInputError, match="k_ranges"):
        FFACall([[0, 4]], [[0, 9]], backend="torch").forward(q, k, v, softmax_scale=SCALE)


def test_the_bound_ranges_are_its_own_copy():
    q, k, v, *_ = _tensors(16, 16, 2, 2, 8, seed=3)
    qr, kr = torch.tensor([[0, 16]], dtype=torch.int32), torch.tensor([[0, 16]], dtype=torch.int32)
    tm = torch.tensor([1], dtype=torch.int32)
    call = FFACall(qr, kr, tm, backend="torch")
    first, _, _ = call.forward(q, k, v, softmax_scale=SCALE)
    qr[0, 1], tm[0] = 8, 0  # the caller reuses its tensors for another mask
    again, _, _ = call.forward(q, k, v, softmax_scale=SCALE)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    ref, _, _ = ref_attn_dense(q, k, v, [[0, 16]], [[0, 16]], [1], softmax_scale=SCALE)
    torch.testing.assert_close(again, ref, atol=1e-9, rtol=1e-9)


def test_fa4_stages_convert_the_merged_lse_once(fake_fa4, monkeypatch):
    """Every stage's FA4 backward takes the same merged lse, converted to FA4's layout once; a
    changed lse (its version) is converted again."""
    made = []
    real = torch.nan_to_num
    monkeypatch.setattr(torch, "nan_to_num", lambda *a, **kw: made.append(1) or real(*a, **kw))
    q, k, v, k2, v2, dout = _tensors(24, 24, 2, 1, 64, seed=6)
    host, remote = FFACall([[0, 24]], [[0, 24]], [1], backend="fa4"), FFACall([[2, 20]], [[0, 18]], [0], backend="fa4")
    out, lse, _ = host.forward(q, k, v, softmax_scale=0.125)
    remote.forward(q, k2, v2, softmax_scale=0.125, out=out, lse=lse)
    dq, dk, dv = host.backward(dout, q, k, v, out, lse, softmax_scale=0.125)
    _, dk2, dv2 = remote.backward(dout, q, k2, v2, out, lse, softmax_scale=0.125, dq=dq)
    assert len(made) == 1
    qa, ka, va = q.clone().requires_grad_(), torch.cat([k, k2]).requires_grad_(), torch.cat([v, v2]).requires_grad_()
    ref_out, _, _ = ref_attn_dense(qa, ka, va, [[0, 24], [2, 20]], [[0, 24], [24, 42]], [1, 0], softmax_scale=0.125)
    rq, rk, rv = torch.autograd.grad(ref_out, (qa, ka, va), dout)
    for got, want in ((dq, rq), (dk, rk[:24]), (dv, rv[:24]), (dk2, rk[24:]), (dv2, rv[24:])):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    lse.add_(0.0)  # same object, new version: converted again
    host.backward(dout, q, k, v, out, lse, softmax_scale=0.125)
    assert len(made) == 2
