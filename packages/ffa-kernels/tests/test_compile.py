"""The custom ops: opcheck (fake kernels, autograd registration) and torch.compile(fullgraph=True)."""

from __future__ import annotations

import torch
from magi_ffa import flex_flash_attn_func
from magi_ffa.ops import ffa_bwd_op, ffa_fwd_op


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
