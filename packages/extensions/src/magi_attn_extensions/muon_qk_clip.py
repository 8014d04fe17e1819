"""Muon QK-clip (Kimi K2): shrink the q/k projections of heads whose max attention logit exceeds tau.

After an optimizer step, a head h with ``max_logit_h > tau`` gets ``gamma_h = tau / max_logit_h``;
scaling its q and k projection rows so that the product of their factors is at most ``gamma_h``
bounds that head's logits by ``tau`` (logits are bilinear in q and k; RoPE is a per-head rotation
and commutes with a per-head scale). ``max_logits`` come from ``calc_attn(...,
return_max_logits=True)`` or ``flex_flash_attn_func(...)`` as ``meta.max_logits`` ``[hq]``.

GQA choice (a kv head is shared by the ``g = hq // hk`` q heads of its group):
    k factor of group G   s_k = sqrt(min_{h in G} gamma_h)          (the group's strongest clip)
    q factor of head h    s_q = min(1, gamma_h / s_k)
so ``s_q * s_k = min(s_k, gamma_h) <= gamma_h`` for every head: each head's bound becomes <= tau,
the most-clipped head of a group gets exactly the MHA split ``sqrt(gamma)`` / ``sqrt(gamma)``, and no
weight is ever scaled up. The other heads of a clipped group are attenuated by at most ``s_k``
(a shared k cannot do better without growing q). With ``g = 1`` this is the K2 rule
``q, k *= sqrt(gamma_h)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from magi_attn_extensions.errors import ExtensionsInputError

__all__ = ["QKClipResult", "qk_clip_scales", "apply_qk_clip_", "qk_clip_attention_module_"]


@dataclass(frozen=True)
class QKClipResult:
    """Factors applied by one clip: ``q_scale [hq]``, ``k_scale [hk]``, and the heads above tau."""

    q_scale: torch.Tensor
    k_scale: torch.Tensor
    clipped_heads: tuple[int, ...]


def qk_clip_scales(max_logits: torch.Tensor, tau: float, num_kv_heads: int) -> QKClipResult:
    """Per-head q factors ``[hq]`` and per-kv-head k factors ``[hk]`` (fp64, all in (0, 1])."""
    fn = "qk_clip_scales"
    if not isinstance(max_logits, torch.Tensor) or max_logits.dim() != 1:
        raise ExtensionsInputError(f"{fn}(): max_logits must be a 1-D tensor [num_heads_q], got {max_logits!r}.")
    if not (isinstance(tau, (int, float)) and tau > 0):
        raise ExtensionsInputError(f"{fn}(): tau must be a positive number, got {tau!r}.")
    hq = max_logits.shape[0]
    if num_kv_heads <= 0 or hq % num_kv_heads:
        raise ExtensionsInputError(
            f"{fn}(): num_heads_q={hq} (len(max_logits)) must be a multiple of num_kv_heads={num_kv_heads}."
        )
    ml = max_logits.detach().to(torch.float64)
    # heads with -inf (no visible cell) or NaN are never clipped
    ml = torch.nan_to_num(ml, nan=0.0, neginf=0.0)
    gamma = torch.where(ml > tau, tau / ml.clamp_min(tau), torch.ones_like(ml))
    k_scale = gamma.view(num_kv_heads, -1).amin(-1).sqrt()
    q_scale = torch.minimum(torch.ones_like(gamma), gamma / k_scale.repeat_interleave(hq // num_kv_heads))
    clipped = tuple(int(h) for h in torch.nonzero(ml > tau).flatten().tolist())
    return QKClipResult(q_scale=q_scale, k_scale=k_scale, clipped_heads=clipped)


@torch.no_grad()
def _scale_rows_(weight: torch.Tensor, scale: torch.Tensor, name: str, bias: torch.Tensor | None = None) -> None:
    heads = scale.shape[0]
    if weight.shape[0] % heads:
        raise ExtensionsInputError(
            f"apply_qk_clip_(): {name} has {weight.shape[0]} output rows, not a multiple of {heads} heads."
        )
    per_head = scale.to(weight.device, weight.dtype).repeat_interleave(weight.shape[0] // heads)
    weight.mul_(per_head.view(-1, *([1] * (weight.dim() - 1))))
    if bias is not None:
        bias.mul_(per_head.to(bias.dtype))


@torch.no_grad()
def apply_qk_clip_(
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    max_logits: torch.Tensor,
    tau: float,
    num_kv_heads: int,
    *,
    q_bias: torch.Tensor | None = None,
    k_bias: torch.Tensor | None = None,
) -> QKClipResult:
    """Rescale, in place, the rows of the q ``[hq*d, in]`` and k ``[hk*d, in]`` projection weights.

    Rows are grouped per head (``nn.Linear`` output features viewed as ``[heads, d]``), as in Llama.
    Heads at or below tau are untouched unless they share a kv head with a clipped head.

    Example:
        >>> out, meta = calc_attn(q, k, v, key, return_max_logits=True)   # after optimizer.step()
        >>> apply_qk_clip_(attn.q_proj.weight, attn.k_proj.weight, meta.max_logits, tau=100.0, num_kv_heads=8)
    """
    res = qk_clip_scales(max_logits, tau, num_kv_heads)
    if res.clipped_heads:
        _scale_rows_(q_weight, res.q_scale, "q_weight", q_bias)
        _scale_rows_(k_weight, res.k_scale, "k_weight", k_bias)
    return res


def qk_clip_attention_module_(module: torch.nn.Module, max_logits: torch.Tensor, tau: float) -> QKClipResult:
    """:func:`apply_qk_clip_` on a Llama-style attention module (``q_proj``, ``k_proj``, ``config``)."""
    cfg = getattr(module, "config", None)
    hk = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", None)
    if not hasattr(module, "q_proj") or not hasattr(module, "k_proj") or hk is None:
        raise ExtensionsInputError(
            "qk_clip_attention_module_(): module needs q_proj, k_proj and config.num_key_value_heads "
            f"(a transformers Llama-style attention), got {type(module).__name__}."
        )
    return apply_qk_clip_(
        module.q_proj.weight, module.k_proj.weight, max_logits, tau, hk,
        q_bias=module.q_proj.bias, k_bias=module.k_proj.bias,
    )
