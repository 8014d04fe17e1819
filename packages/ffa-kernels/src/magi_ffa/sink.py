"""Attention-sink post-processing (forward) and its gradient, used by the API and the runtime.

A sink is a set of per-head logits that join each row's softmax denominator but carry no value:
unscaled, not softcapped. Forward: lse' = log(exp(lse) + exp(lse_sink)), out' = out exp(lse - lse').
Backward: p_sink = exp(sink - lse'), delta = rowsum(out' * dout), dsink = -sum_i p_sink delta
("sh") or the same per row ("ssh").

Shape legend: Sq query tokens, h heads, d head dim, s sink tokens.
"""

from __future__ import annotations

import torch

from magi_ffa.merge import correct_attn_out_lse_with_sink

__all__ = ["apply_sink", "sink_backward"]


def apply_sink(out: torch.Tensor, lse: torch.Tensor, sink: torch.Tensor, sink_layout: str = "sh") -> None:
    """Fold `sink` into the final `out` [Sq, h, d] and `lse` [Sq, h] (fp32 buffers) in place.

    sink: [s, h] ("sh") or [Sq, s, h] ("ssh") fp32. Rows with lse = -inf end with lse_sink, out 0.
    """
    correct_attn_out_lse_with_sink(out, lse, sink, sink_layout, inplace=True)


def sink_backward(
    sink: torch.Tensor,
    lse: torch.Tensor,
    out: torch.Tensor,
    dout: torch.Tensor,
    sink_layout: str = "sh",
) -> torch.Tensor:
    """dsink in sink's dtype and shape, from the *final* (sink-corrected) `out` and `lse`.

    Args:
        sink: [s, h] ("sh") or [Sq, s, h] ("ssh").
        lse: [Sq, h] final lse (finite, since the sink is in it).
        out, dout: [Sq, h, d] final output and its gradient (any float dtype).
    """
    dt = torch.float64 if torch.float64 in (sink.dtype, lse.dtype, out.dtype) else torch.float32
    delta = (out.to(dt) * dout.to(dt)).sum(-1)  # [Sq, h]
    lse_ = lse.to(dt).unsqueeze(1)  # [Sq, 1, h]
    if sink_layout == "sh":
        p_sink = torch.exp(sink.to(dt).unsqueeze(0) - lse_)  # [Sq, s, h]
        dsink = -(p_sink * delta.unsqueeze(1)).sum(0)
    else:
        p_sink = torch.exp(sink.to(dt) - lse_)
        dsink = -(p_sink * delta.unsqueeze(1))
    return dsink.to(sink.dtype)
