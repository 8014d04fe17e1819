"""Float64 dense references for tests (shipped so other packages can reuse them).

The sink is modelled literally: extra logit columns (not scaled, no value) concatenated to the
scores, so autograd through this reference gives ground-truth gradients for q, k, v and the sink.
"""

from __future__ import annotations

import torch

__all__ = ["ref_attn_with_sink", "ref_max_logits", "assert_close_to_ref"]


def ref_attn_with_sink(q, k, v, mask=None, sink=None, sink_layout="sh", softmax_scale=None):
    """Dense attention in fp64. q ``[b, sq, hq, d]``, k/v ``[b, sk, hk, d]``, mask bool ``[sq, sk]``,
    sink ``[s, hq]`` ("sh") or ``[b, sq, s, hq]`` ("ssh"). Returns ``(out [b,sq,hq,d], lse [b,sq,hq])``
    in fp64; rows without keys or sink give ``out = 0``, ``lse = -inf``.
    """
    b, sq, hq, d = q.shape
    g = hq // k.shape[2]
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    q64, k64, v64 = (t.to(torch.float64) for t in (q, k, v))
    k64 = k64.repeat_interleave(g, dim=2)
    v64 = v64.repeat_interleave(g, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q64, k64) * scale
    if mask is not None:
        s = s.masked_fill(~mask.to(s.device), float("-inf"))
    if sink is not None:
        sk64 = sink.to(torch.float64)
        if sink_layout == "sh":
            extra = sk64.t()[None, :, None, :].expand(b, hq, sq, sk64.shape[0])
        else:
            extra = sk64.permute(0, 3, 1, 2)  # [b, hq, sq, s]
        s = torch.cat([s, extra], dim=-1)
    lse = torch.logsumexp(s, dim=-1)  # [b, hq, sq]
    p = torch.softmax(s, dim=-1)
    p = torch.where(torch.isneginf(lse).unsqueeze(-1), torch.zeros_like(p), p)
    p = p[..., : k64.shape[1]]
    out = torch.einsum("bhqk,bkhd->bqhd", p, v64)
    return out, lse.transpose(1, 2)


def ref_max_logits(q, k, mask=None, softmax_scale=None):
    """Per-q-head max of ``scale * q.k`` over visible cells ``[hq]`` fp64 (-inf for a head with none)."""
    hq = q.shape[2]
    g = hq // k.shape[2]
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double().repeat_interleave(g, dim=2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.transpose(0, 1).reshape(hq, -1).amax(-1) if s.numel() else torch.full((hq,), float("-inf"))


def assert_close_to_ref(name: str, x: torch.Tensor, x_lowp_ref: torch.Tensor, ref64: torch.Tensor,
                        factor: float = 2.0, atol: float = 1e-6) -> None:
    """FlexAttention-style check: ``max|x - ref64| <= factor * max|x_lowp_ref - ref64| + atol``."""
    for label, t in (("result", x), ("low-precision reference", x_lowp_ref)):
        if torch.isnan(t).any():
            raise AssertionError(f"{name}: {label} contains NaN")
    ref = ref64.to(torch.float64)
    err = (x.to(torch.float64) - ref).abs().max().item() if x.numel() else 0.0
    ref_err = (x_lowp_ref.to(torch.float64) - ref).abs().max().item() if x.numel() else 0.0
    if not err <= factor * ref_err + atol:
        raise AssertionError(f"{name}: max error {err:.3e} > {factor} * reference error {ref_err:.3e} + {atol}")
