"""Sink correction of (out, lse) after a base attention kernel, and the explicit sink backward.

Every wrapper in ``magi_attn_extensions.sink`` (except FFA, which folds the sink in its own kernel)
runs a plain kernel, then calls :func:`correct_out_lse_with_sink`, and in backward calls
:func:`sink_backward` for dsink and the kernel's backward with the corrected (out, lse).

The sink is a constant here (the anchor's fix #189): everything runs under ``torch.no_grad()`` on
``sink.detach()``, so no second autograd graph is built through the sink and no hook is ever
registered on the user's tensor; dsink comes from :func:`sink_backward` only.

Shapes (rows are flattened ``(b s)`` or varlen tokens): out ``[T, h, d]``, lse ``[T, h]``;
sink ``[s_sink, h]`` for layout ``"sh"``, ``[T, s_sink, h]`` for ``"ssh"``.
Formulas: ``lse_sink = logsumexp_s(sink)``, ``lse' = logaddexp(lse, lse_sink)``,
``out' = out * exp(lse - lse')``; ``delta = rowsum(out' * dout)``, ``p = exp(sink - lse')``,
``dsink = -sum_rows(p * delta)`` for ``"sh"`` (no sum for ``"ssh"``).
"""

from __future__ import annotations

import torch

__all__ = ["SINK_LAYOUTS", "calc_lse_sink", "correct_out_lse_with_sink", "sink_backward"]

SINK_LAYOUTS = ("sh", "ssh")


def _acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when any input is fp64 (so the float64 references stay exact)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@torch.no_grad()
def calc_lse_sink(sink: torch.Tensor, sink_layout: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``logsumexp`` over the sink tokens: ``[h]`` for ``"sh"``, ``[T, h]`` for ``"ssh"``."""
    sink = sink.detach()
    return torch.logsumexp(sink.to(dtype or _acc_dtype(sink)), dim=-2)


def _safe_exp_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``exp(a - b)`` with ``-inf - -inf`` read as 0 (rows with neither keys nor sink)."""
    return torch.exp(a - b).masked_fill(torch.isneginf(b), 0.0)


@torch.no_grad()
def correct_out_lse_with_sink(
    out: torch.Tensor, lse: torch.Tensor, sink: torch.Tensor, sink_layout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the sink into a kernel's result; returns fresh ``(out' [T,h,d], lse' [T,h])`` in fp32/fp64.

    A row without keys (``lse = -inf``) gets ``lse' = lse_sink`` and ``out' = 0``.
    """
    acc = _acc_dtype(out, lse, sink)
    lse_sink = calc_lse_sink(sink, sink_layout, acc)
    lse = lse.detach().to(acc)
    new_lse = torch.logaddexp(lse, lse_sink.expand_as(lse))
    scale = _safe_exp_diff(lse, new_lse)
    new_out = out.detach().to(acc) * scale.unsqueeze(-1)
    return new_out, new_lse


@torch.no_grad()
def sink_backward(
    sink: torch.Tensor, lse: torch.Tensor, out: torch.Tensor, dout: torch.Tensor, sink_layout: str
) -> torch.Tensor:
    """dsink from the corrected ``lse [T,h]`` and ``out [T,h,d]``; same shape and dtype as ``sink``."""
    acc = _acc_dtype(sink, lse, out)
    sink_c = sink.detach().to(acc)
    lse = lse.detach().to(acc)
    delta = (out.detach().to(acc) * dout.detach().to(acc)).sum(-1)  # [T, h]
    if sink_layout == "sh":
        # -sum_i exp(sink[s,h] - lse[i,h]) * delta[i,h]
        p = _safe_exp_diff(sink_c.unsqueeze(0), lse.unsqueeze(1))  # [T, s, h]
        dsink = -(p * delta.unsqueeze(1)).sum(0)
    else:
        p = _safe_exp_diff(sink_c, lse.unsqueeze(1))  # [T, s, h]
        dsink = -p * delta.unsqueeze(1)
    return dsink.to(sink.dtype)
