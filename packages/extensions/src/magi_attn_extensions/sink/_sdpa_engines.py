"""Plain attention forward/backward on ``[B, h, S, d]`` with a boolean mask, returning/using lse.

The sink wrappers need a kernel that returns ``(out, lse)`` and a backward that accepts a given
(corrected) ``(out, lse)``. torch's public SDPA returns neither, so this module calls the aten ops
behind SDPA where they exist (the CPU flash kernel) and has an explicit math engine for everything
else (CUDA and other devices, empty key sets). The CUDA memory-efficient aten kernel could replace
the math engine on GPU (it also accepts a given out/lse in backward) once validated on a GPU.
Rows whose mask is all False must be handled by the caller (their lse here is meaningless).
"""

from __future__ import annotations

import torch

__all__ = ["attn_forward", "attn_backward", "pick_engine"]

def pick_engine(q: torch.Tensor, k: torch.Tensor) -> str:
    """'cpu_flash' | 'math'."""
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        return "math"
    if q.device.type == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return "cpu_flash"
    return "math"


def _bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive bias ``[Sq, Sk]`` (0 visible, -inf masked)."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _math_scores(q, k, mask, scale):
    s = torch.matmul(q.to(_acc(q.dtype)), k.to(_acc(q.dtype)).transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s


def attn_forward(engine: str, q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """``out [B,h,Sq,d]`` (q.dtype) and ``lse [B,h,Sq]`` (fp32, fp64 for fp64 inputs)."""
    acc = _acc(q.dtype)
    if engine == "cpu_flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=_bias(mask, q.dtype), scale=scale
        )[:2]
        return out, lse.to(acc)
    s = _math_scores(q, k, mask, scale)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)
    out = torch.matmul(p, v.to(acc)).to(q.dtype)
    return out, lse


def attn_backward(engine: str, dout, q, k, v, out, lse, mask, scale):
    """``(dq, dk, dv)`` of standard attention given the final ``out``/``lse`` (finite lse rows only)."""
    if engine == "cpu_flash":
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse.to(torch.float32 if q.dtype != torch.float64 else q.dtype),
            0.0, False, attn_mask=_bias(mask, q.dtype), scale=scale,
        )
        return dq, dk, dv
    acc = _acc(q.dtype)
    s = _math_scores(q, k, mask, scale)
    p = torch.exp(s - lse.to(acc).unsqueeze(-1))
    do = dout.to(acc)
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, v.to(acc).transpose(-1, -2))
    delta = (out.to(acc) * do).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = torch.matmul(ds, k.to(acc)) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.to(acc)) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
