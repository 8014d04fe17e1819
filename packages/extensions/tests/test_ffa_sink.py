"""ffa_*_with_sink (flex_flash_attn_func underneath) against the fp64 dense reference."""

import pytest
import torch
from magi_attn_extensions import _compat
from magi_attn_extensions.sink import ffa_func_with_sink, ffa_varlen_func_with_sink
from magi_attn_extensions.sink.masks import slices_to_dense, varlen_slices, window_slices
from magi_attn_extensions.testing import ref_attn_with_sink, ref_max_logits

try:
    _compat.flex_flash_attn_func()
    _REASON = None
except ImportError as exc:  # magi_attention still being written
    _REASON = f"flex_flash_attn_func unavailable: {exc}"

pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def _close(name, got, ref, tol=3e-5):
    err = (got.double() - ref.double()).abs().max().item()
    assert err <= tol, f"{name}: max error {err:.2e} > {tol}"


@pytest.mark.parametrize("layout", ["sh", "ssh"])
@pytest.mark.parametrize("causal, window", [(False, (-1, -1)), (True, (-1, -1)), (True, (2, -1)), (False, (1, 2))])
def test_batch_vs_reference(layout, causal, window):
    b, sq, sk, hq, hk, d = 2, 7, 9, 4, 2, 8
    q = torch.randn(b, sq, hq, d, requires_grad=True)
    k = torch.randn(b, sk, hk, d, requires_grad=True)
    v = torch.randn(b, sk, hk, d, requires_grad=True)
    sink = (torch.randn(2, hq) if layout == "sh" else torch.randn(b, sq, 2, hq)).requires_grad_()
    out, lse, ml = ffa_func_with_sink(q, k, v, sink, layout, causal=causal, window_size=window,
                                      return_attn_probs=True, return_max_logits=True)
    mask = slices_to_dense(window_slices(sq, sk, causal, window), sq, sk)
    ro, rl = ref_attn_with_sink(q, k, v, mask, sink, layout)
    _close("out", out, ro.detach())
    _close("lse", lse.transpose(1, 2), rl.detach())
    _close("max_logits", ml, ref_max_logits(q.detach(), k.detach(), mask))
    dout = torch.randn_like(out)
    for name, g, r in zip(["dq", "dk", "dv", "dsink"], torch.autograd.grad(out, [q, k, v, sink], dout),
                          torch.autograd.grad(ro, [q, k, v, sink], dout.double())):
        _close(name, g, r, tol=1e-4)


def test_varlen_vs_reference():
    cu = [0, 3, 3, 10]
    hq, d = 2, 8
    q = torch.randn(10, hq, d, requires_grad=True)
    k = torch.randn(10, 1, d, requires_grad=True)
    v = torch.randn(10, 1, d, requires_grad=True)
    sink = torch.randn(10, 1, hq).requires_grad_()
    out, lse = ffa_varlen_func_with_sink(q, k, v, torch.tensor(cu), torch.tensor(cu), 7, 7, sink=sink,
                                         sink_layout="ssh", causal=True, return_attn_probs=True)
    mask = slices_to_dense(varlen_slices(cu, cu, True, (-1, -1)), 10, 10)
    ro, rl = ref_attn_with_sink(q[None], k[None], v[None], mask, sink[None], "ssh")
    _close("out", out, ro[0].detach())
    _close("lse", lse.t(), rl[0].detach())
    dout = torch.randn_like(out)
    for name, g, r in zip(["dq", "dk", "dv", "dsink"], torch.autograd.grad(out, [q, k, v, sink], dout),
                          torch.autograd.grad(ro[0], [q, k, v, sink], dout.double())):
        _close(name, g, r, tol=1e-4)
