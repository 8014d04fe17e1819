"""The custom ops: opcheck (fake kernels, autograd registration) and torch.compile(fullgraph=True);
the eager path that skips them (same bodies, same results)."""

from __future__ import annotations

import pytest
import torch
from magi_ffa import flex_flash_attn_func, ops
from magi_ffa.ops import ffa_bwd_op, ffa_fwd_op
from torch._subclasses.fake_tensor import FakeTensorMode


def _args():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(20, 4, 8, generator=g, requires_grad=True)
    k = torch.randn(24, 2, 8, generator=g, requires_grad=True)
    v = torch.randn(24, 2, 8, generator=g, requires_grad=True)
    qr = torch.tensor([[0, 10], [10, 20], [4, 15]], dtype=torch.int32)
    kr = torch.tensor([[0, 12], [5, 24], [20, 24]], dtype=torch.int32)
    tm = torch.tensor([1, 3, 2], dtype=torch.int32)
    return q, k, v, qr, kr, tm


def test_opcheck_forward_and_backward():
    q, k, v, qr, kr, tm = _args()
    sink = torch.randn(2, 4, requires_grad=True)
    torch.library.opcheck(ffa_fwd_op, (q, k, v, qr, kr, tm, sink, "sh", 0.35, 0.0, False, True, "torch"))
    out, lse, _ = ffa_fwd_op(q, k, v, qr, kr, tm, sink, "sh", 0.35, 0.0, False, False, "torch")
    args = (
        torch.randn_like(out),
        q.detach(),
        k.detach(),
        v.detach(),
        out.detach(),
        lse,
        qr,
        kr,
        tm,
        sink.detach(),
        "sh",
        0.35,
        0.0,
        False,
        "torch",
    )
    torch.library.opcheck(ffa_bwd_op, args, test_utils=("test_schema", "test_faketensor"))


class _Attn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sink = torch.nn.Parameter(torch.randn(2, 4))

    def forward(self, q, k, v, qr, kr, tm):
        out, meta = flex_flash_attn_func(
            q * 2, k, v, qr, kr, tm, sink=self.sink, softcap=1.5, return_max_logits=True, backend="torch"
        )
        return out.sum(-1) + meta.lse, meta.max_logits


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = _Attn()
    q, k, v, qr, kr, tm = _args()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    res_c, ml_c = compiled(q, k, v, qr, kr, tm)
    res_c.sum().backward()
    grads_c = [t.grad.clone() for t in (q, k, v, model.sink)]
    for t in (q, k, v, model.sink):
        t.grad = None
    res_e, ml_e = model(q, k, v, qr, kr, tm)
    res_e.sum().backward()
    assert torch.equal(res_c, res_e) and torch.equal(ml_c, ml_e)
    for gc, t in zip(grads_c, (q, k, v, model.sink)):
        assert torch.equal(gc, t.grad)


def _boom(*args, **kwargs):
    raise AssertionError("must not be called here")


def _grads_of(fn, q, k, v, sink, dout):
    for t in (q, k, v, sink):
        t.grad = None
    out, lse, max_logits = fn(q, k, v, *_args()[3:], sink, "sh", 0.35, 1.5, False, True, "torch")
    out.backward(dout)
    return [out, lse, max_logits] + [t.grad.clone() for t in (q, k, v, sink)]


def test_eager_path_skips_the_custom_ops_and_matches_them_bitwise(monkeypatch):
    q, k, v, *_ = _args()
    sink = torch.nn.Parameter(torch.randn(2, 4))  # a sink is usually a module's parameter
    dout = torch.randn(20, 4, 8, generator=torch.Generator().manual_seed(1))
    via_op = _grads_of(ffa_fwd_op, q, k, v, sink, dout)
    monkeypatch.setattr(ops, "ffa_fwd_op", _boom)
    monkeypatch.setattr(ops, "ffa_bwd_op", _boom)
    eager = _grads_of(ops.ffa_attention, q, k, v, sink, dout)
    for a, b in zip(via_op, eager):
        assert torch.equal(a, b)
    assert eager[-1].abs().sum() > 0  # the sink received a gradient


def test_traced_calls_take_the_custom_op(monkeypatch):
    monkeypatch.setattr(ops, "_fwd_body", _boom)  # a real kernel run would fail: only the fake may run
    with FakeTensorMode():
        q, k, v, qr, kr, tm = (torch.empty(t.shape, dtype=t.dtype) for t in _args())
        out, lse, _ = ops.ffa_attention(q, k, v, qr, kr, tm, None, "sh", 0.35, 0.0, False, False, "torch")
    assert out.shape == (20, 4, 8) and lse.shape == (20, 4)
    with pytest.raises(AssertionError, match="must not be called"):  # eagerly the body runs
        ops.ffa_attention(*_args(), None, "sh", 0.35, 0.0, False, False, "torch")


def test_a_loss_on_lse_alone_gives_zero_gradients_on_both_paths():
    """lse and max_logits take no gradient (as in the anchor), whichever path runs the call."""
    q, k, v, qr, kr, tm = _args()
    for fn in (ffa_fwd_op, ops.ffa_attention):
        for t in (q, k, v):
            t.grad = None
        _, lse, _ = fn(q, k, v, qr, kr, tm, None, "sh", 0.35, 0.0, False, False, "torch")
        lse[torch.isfinite(lse)].sum().backward()
        for t in (q, k, v):
            assert t.grad is not None and not t.grad.any()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_gives_the_same_gradients(use_reentrant):
    from torch.utils.checkpoint import checkpoint

    q, k, v, qr, kr, tm = _args()
    dout = torch.randn(20, 4, 8, generator=torch.Generator().manual_seed(2))

    def attn(q, k, v):
        return flex_flash_attn_func(q * 1.5, k, v, qr, kr, tm, softcap=2.0, backend="torch")[0]

    plain = torch.autograd.grad(attn(q, k, v), (q, k, v), dout)
    checkpoint(attn, q, k, v, use_reentrant=use_reentrant).backward(dout)  # reentrant: no .grad()
    for a, t in zip(plain, (q, k, v)):
        assert torch.equal(a, t.grad)
