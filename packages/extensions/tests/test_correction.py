"""The sink correction and sink backward against autograd through a literal fp64 model."""

import pytest
import torch
from magi_attn_extensions.sink.correction import correct_out_lse_with_sink, sink_backward


def _literal(scores, v, sink, layout):
    """softmax over [scores, sink] with sink columns carrying no value; fp64, differentiable."""
    t, h, _ = scores.shape
    extra = sink.t()[None].expand(t, h, sink.shape[0]) if layout == "sh" else sink.permute(0, 2, 1)
    full = torch.cat([scores, extra], -1)
    lse = torch.logsumexp(full, -1)
    p = torch.softmax(full, -1)[..., : scores.shape[-1]]
    return torch.einsum("thk,khd->thd", p, v), lse


@pytest.mark.parametrize("layout", ["sh", "ssh"])
def test_correction_and_dsink_match_literal_model(layout):
    t, h, k, d, s = 5, 3, 6, 4, 2
    scores = torch.randn(t, h, k, dtype=torch.float64)
    scores[1, :, :] = float("-inf")  # a row without keys
    v = torch.randn(k, h, d, dtype=torch.float64)
    sink = torch.randn(s, h, dtype=torch.float64) if layout == "sh" else torch.randn(t, s, h, dtype=torch.float64)
    sink.requires_grad_(True)
    lse0 = torch.logsumexp(scores, -1)
    p0 = torch.exp(scores - lse0[..., None]).nan_to_num(0.0)
    out0 = torch.einsum("thk,khd->thd", p0, v)
    out, lse = correct_out_lse_with_sink(out0, lse0, sink, layout)
    ref_out, ref_lse = _literal(scores, v, sink, layout)
    torch.testing.assert_close(out, ref_out.detach())
    torch.testing.assert_close(lse, ref_lse.detach())
    assert torch.all(out[1] == 0) and torch.isfinite(lse[1]).all()
    dout = torch.randn_like(out)
    (ref_dsink,) = torch.autograd.grad(ref_out, sink, dout)
    torch.testing.assert_close(sink_backward(sink, lse, out, dout, layout), ref_dsink)
    assert sink.grad is None and not out.requires_grad  # constant inside the correction


def test_row_without_keys_and_minus_inf_sink_gives_zero_not_nan():
    out0 = torch.zeros(2, 1, 3)
    lse0 = torch.tensor([[float("-inf")], [0.5]])
    sink = torch.full((1, 1), float("-inf"))
    out, lse = correct_out_lse_with_sink(out0, lse0, sink, "sh")
    assert not out.isnan().any() and torch.isneginf(lse[0]).all()
    dsink = sink_backward(sink, lse, out, torch.ones_like(out), "sh")
    assert not dsink.isnan().any()
