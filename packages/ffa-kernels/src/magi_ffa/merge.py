"""LSE arithmetic: merge partial attention results and fold a sink into them.

Two partial results over disjoint key sets, (out1, lse1) and (out2, lse2), combine exactly into
lse = log(exp(lse1) + exp(lse2)) and out = exp(lse1 - lse) out1 + exp(lse2 - lse) out2. A row
with lse = -inf (no key) has weight 0, so the merge is safe for empty rows and associative.

Shape legend: Sq query tokens, h heads, d head dim, s sink tokens.
out: [Sq, h, d]; lse: [Sq, h]; sink: [s, h] ("sh") or [Sq, s, h] ("ssh").
All arithmetic runs in fp32 (fp64 when an input is fp64).
"""

from __future__ import annotations

import torch

from magi_ffa.errors import FFAInputError

__all__ = [
    "SINK_LAYOUTS",
    "calc_lse_sink",
    "correct_attn_lse",
    "correct_attn_lse_with_sink",
    "correct_attn_out",
    "correct_attn_out_lse",
    "correct_attn_out_lse_with_sink",
    "correct_attn_out_with_sink",
]

SINK_LAYOUTS = ("sh", "ssh")


def _acc_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max + log1p(exp(min - max)), with -inf (+) -inf = -inf instead of NaN."""
    hi = torch.maximum(a, b)
    lo = torch.minimum(a, b)
    hi_safe = torch.where(torch.isinf(hi) & (hi < 0), torch.zeros_like(hi), hi)
    return hi + torch.log1p(torch.exp(lo - hi_safe))


def _weight(lse_part: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """exp(lse_part - lse), 0 where lse_part is -inf (also when lse is -inf)."""
    lse_safe = torch.where(torch.isinf(lse) & (lse < 0), torch.zeros_like(lse), lse)
    return torch.exp(lse_part - lse_safe)


def _into(dst: torch.Tensor, res: torch.Tensor, inplace: bool) -> torch.Tensor:
    """`res`, or `dst` after copying `res` into it when `inplace` (the merge functions' contract)."""
    if inplace:
        dst.copy_(res)
        return dst
    return res


def correct_attn_lse(lse1: torch.Tensor, lse2: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """log(exp(lse1) + exp(lse2)) computed stably; written into lse1 when `inplace`."""
    dt = _acc_dtype(lse1, lse2)
    return _into(lse1, _logaddexp(lse1.to(dt), lse2.to(dt)), inplace)


def correct_attn_out(
    out1: torch.Tensor,
    lse1: torch.Tensor,
    out2: torch.Tensor,
    lse2: torch.Tensor,
    lse: torch.Tensor,
    inplace: bool = False,
) -> torch.Tensor:
    """exp(lse1 - lse) out1 + exp(lse2 - lse) out2, with `lse` the merged lse; into out1 if inplace."""
    dt = _acc_dtype(out1, out2, lse)
    w1 = _weight(lse1.to(dt), lse.to(dt)).unsqueeze(-1)
    w2 = _weight(lse2.to(dt), lse.to(dt)).unsqueeze(-1)
    return _into(out1, w1 * out1.to(dt) + w2 * out2.to(dt), inplace)


def correct_attn_out_lse(
    out1: torch.Tensor,
    lse1: torch.Tensor,
    out2: torch.Tensor,
    lse2: torch.Tensor,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial results; returns (out, lse), written into (out1, lse1) when `inplace`."""
    lse = correct_attn_lse(lse1, lse2)
    out = correct_attn_out(out1, lse1, out2, lse2, lse, inplace=inplace)  # out1 itself when inplace
    return out, _into(lse1, lse, inplace)


def calc_lse_sink(sink: torch.Tensor, sink_layout: str = "sh") -> torch.Tensor:
    """logsumexp of the sink logits over the sink tokens: [h] for "sh", [Sq, h] for "ssh"."""
    if sink_layout not in SINK_LAYOUTS:
        raise FFAInputError(
            f"calc_lse_sink(): sink_layout={sink_layout!r} is not supported; expected one of {SINK_LAYOUTS}."
        )
    dim = 0 if sink_layout == "sh" else 1
    return torch.logsumexp(sink.to(_acc_dtype(sink)), dim=dim)


def correct_attn_lse_with_sink(
    lse: torch.Tensor, sink: torch.Tensor, sink_layout: str = "sh", inplace: bool = False
) -> torch.Tensor:
    """lse' = log(exp(lse) + exp(lse_sink)); a row with lse = -inf gets lse_sink."""
    lse_sink = calc_lse_sink(sink, sink_layout)
    return correct_attn_lse(lse, lse_sink.expand_as(lse), inplace=inplace)


def correct_attn_out_with_sink(
    out: torch.Tensor,
    lse: torch.Tensor,
    sink: torch.Tensor,
    sink_layout: str = "sh",
    inplace: bool = False,
) -> torch.Tensor:
    """out' = out / (1 + exp(lse_sink - lse)), with `lse` the lse *before* the sink (-inf gives 0)."""
    dt = _acc_dtype(out, lse, sink)
    lse_sink = calc_lse_sink(sink, sink_layout).to(dt).expand_as(lse)
    lse_new = _logaddexp(lse.to(dt), lse_sink)
    return _into(out, out.to(dt) * _weight(lse.to(dt), lse_new).unsqueeze(-1), inplace)


def correct_attn_out_lse_with_sink(
    out: torch.Tensor,
    lse: torch.Tensor,
    sink: torch.Tensor,
    sink_layout: str = "sh",
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both corrections at once; returns (out', lse'), written into (out, lse) when `inplace`."""
    new_out = correct_attn_out_with_sink(out, lse, sink, sink_layout)
    new_lse = correct_attn_lse_with_sink(lse, sink, sink_layout)
    return _into(out, new_out, inplace), _into(lse, new_lse, inplace)
