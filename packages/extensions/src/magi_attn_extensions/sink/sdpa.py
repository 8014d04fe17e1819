"""Attention with a learnable sink on torch SDPA kernels: batch and varlen forms.

Shape legend: b batch, sq/sk sequence lengths, total_q/total_k packed tokens, hq/hk heads
(GQA: hq % hk == 0, q head h uses kv head h // (hq // hk)), d head dim, s sink tokens.
Masks follow FlashAttention: ``causal`` and ``window_size=(left, right)`` are bottom-right aligned.
The varlen form materialises a ``[total_q, total_k]`` boolean mask (SDPA has no ranges), so it is
meant for moderate lengths; use the FFA wrappers for long packed sequences.
"""

from __future__ import annotations

import torch

from magi_attn_extensions.sink import _checks
from magi_attn_extensions.sink._function import SinkAttnFunction
from magi_attn_extensions.sink._sdpa_adapter import SDPAAdapter
from magi_attn_extensions.sink.masks import slices_to_dense, varlen_slices, window_slices

__all__ = ["sdpa_func_with_sink", "sdpa_varlen_func_with_sink"]


def sdpa_func_with_sink(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sink: torch.Tensor | None = None,
    sink_layout: str = "sh",
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    return_attn_probs: bool = False,
):
    """Batched attention whose softmax denominator also holds per-head sink logits.

    Args:
        q: ``[b, sq, hq, d]``; k, v: ``[b, sk, hk, d]``, same floating dtype.
        sink: ``[s, hq]`` (``"sh"``) or ``[b, sq, s, hq]`` (``"ssh"``); fp32 advised. Sink logits are
            not multiplied by ``softmax_scale``. Gets a gradient like any input.
        causal, window_size: FlashAttention-style (bottom-right aligned) masks.
        return_attn_probs: also return lse ``[b, hq, sq]`` fp32 (FlashAttention layout), which
            includes the sink. Gradients flowing into lse are ignored.

    Returns:
        out ``[b, sq, hq, d]`` in q.dtype, or ``(out, lse)``.

    Example:
        >>> out = sdpa_func_with_sink(q, k, v, sink=torch.zeros(1, q.shape[2]), causal=True)
    """
    fn = "sdpa_func_with_sink"
    hq, _ = _checks.check_qkv(fn, q, k, v, varlen=False)
    b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
    _checks.check_sink(fn, sink, sink_layout, (b, sq), hq)
    window = _checks.check_window(fn, window_size)
    scale = _checks.check_scale(fn, softmax_scale, q.shape[-1])
    mask = None
    if causal or window != (-1, -1):
        mask = slices_to_dense(window_slices(sq, sk, causal, window), sq, sk, device=q.device)
    out, lse = SinkAttnFunction.apply(SDPAAdapter(mask, scale), q, k, v, sink, sink_layout)
    if return_attn_probs:
        return out, lse.transpose(1, 2)
    return out


def sdpa_varlen_func_with_sink(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    sink: torch.Tensor | None = None,
    sink_layout: str = "sh",
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    return_attn_probs: bool = False,
):
    """Packed (varlen) attention with a sink; sequence i is rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``.

    Args:
        q: ``[total_q, hq, d]``; k, v: ``[total_k, hk, d]``.
        cu_seqlens_q, cu_seqlens_k: ``[n+1]`` int32/int64 (or lists), from 0 to the totals.
        max_seqlen_q, max_seqlen_k: accepted for FlashAttention compatibility, not needed.
        sink: ``[s, hq]`` (``"sh"``) or ``[total_q, s, hq]`` (``"ssh"``).

    Returns:
        out ``[total_q, hq, d]``, or ``(out, lse [hq, total_q])`` with ``return_attn_probs``.
    """
    fn = "sdpa_varlen_func_with_sink"
    hq, _ = _checks.check_qkv(fn, q, k, v, varlen=True)
    cu_q, cu_k = _checks.check_cu_seqlens_pair(fn, cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0])
    _checks.check_sink(fn, sink, sink_layout, (q.shape[0],), hq)
    window = _checks.check_window(fn, window_size)
    scale = _checks.check_scale(fn, softmax_scale, q.shape[-1])
    mask = slices_to_dense(varlen_slices(cu_q, cu_k, causal, window), q.shape[0], k.shape[0], device=q.device)
    ssh = sink is not None and sink_layout == "ssh"
    out, lse = SinkAttnFunction.apply(
        SDPAAdapter(mask, scale), q[None], k[None], v[None], sink[None] if ssh else sink, sink_layout
    )
    out = out[0]
    if return_attn_probs:
        return out, lse[0].transpose(0, 1)
    return out
