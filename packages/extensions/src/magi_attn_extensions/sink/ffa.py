"""Attention with a sink on flex_flash_attn_func (FFA), in FlashAttention-style batch/varlen forms.

FFA folds the sink into its own kernel (same semantics as ``sink.correction``, with its own dsink),
so these wrappers only translate the layout: ``[b, s, h, d]`` becomes FFA's ``[(b s), h, d]`` with one
set of slices per sequence, the ``"ssh"`` sink ``[b, sq, s, h]`` becomes ``[(b sq), s, h]``, and
``causal``/``window_size`` become CAUSAL/BI_CAUSAL/INV_CAUSAL/FULL slices (``sink.masks``).
Shape legend as in ``sink.sdpa``.
"""

from __future__ import annotations

import torch

from magi_attn_extensions import _compat
from magi_attn_extensions.sink import _checks
from magi_attn_extensions.sink.masks import slices_to_tensors, varlen_slices

__all__ = ["ffa_func_with_sink", "ffa_varlen_func_with_sink"]


def _run_ffa(fn, q, k, v, slices, sink, sink_layout, softmax_scale, softcap, deterministic, return_max_logits):
    ffa = _compat.flex_flash_attn_func()
    q_ranges, k_ranges, types = slices_to_tensors(slices, q.device)
    return ffa(
        q, k, v, q_ranges, k_ranges, types, sink=sink, sink_layout=sink_layout,
        softmax_scale=softmax_scale, softcap=softcap, deterministic=deterministic,
        return_max_logits=return_max_logits,
    )


def _results(out, lse_fa_layout, meta, return_attn_probs: bool, return_max_logits: bool):
    """out alone, or a tuple with lse (FlashAttention layout, from ``lse_fa_layout()``) and/or
    max_logits appended in that order."""
    res = [out]
    if return_attn_probs:
        res.append(lse_fa_layout())
    if return_max_logits:
        res.append(meta.max_logits)
    return res[0] if len(res) == 1 else tuple(res)


def ffa_func_with_sink(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sink: torch.Tensor | None = None,
    sink_layout: str = "sh",
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    return_max_logits: bool = False,
):
    """Batched ``[b, s, h, d]`` attention with a sink through FFA.

    Returns out ``[b, sq, hq, d]``; with ``return_attn_probs`` also lse ``[b, hq, sq]`` fp32; with
    ``return_max_logits`` also max_logits ``[hq]`` fp32 (sink excluded), appended last.
    """
    fn = "ffa_func_with_sink"
    hq, _ = _checks.check_qkv(fn, q, k, v, varlen=False)
    b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
    _checks.check_sink(fn, sink, sink_layout, (b, sq), hq)
    window = _checks.check_window(fn, window_size)
    cu_q = [i * sq for i in range(b + 1)]
    cu_k = [i * sk for i in range(b + 1)]
    sink_rows = sink.reshape(b * sq, *sink.shape[2:]) if sink is not None and sink_layout == "ssh" else sink
    out, meta = _run_ffa(
        fn, q.reshape(b * sq, hq, -1), k.reshape(b * sk, *k.shape[2:]), v.reshape(b * sk, *v.shape[2:]),
        varlen_slices(cu_q, cu_k, causal, window), sink_rows, sink_layout, softmax_scale, softcap,
        deterministic, return_max_logits,
    )
    return _results(out.reshape(b, sq, hq, -1), lambda: meta.lse.reshape(b, sq, hq).transpose(1, 2),
                    meta, return_attn_probs, return_max_logits)


def ffa_varlen_func_with_sink(
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
    softcap: float = 0.0,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    return_max_logits: bool = False,
):
    """Packed ``[total, h, d]`` attention with a sink through FFA.

    Returns out ``[total_q, hq, d]``; with ``return_attn_probs`` also lse ``[hq, total_q]``; with
    ``return_max_logits`` also max_logits ``[hq]``, appended last.
    """
    fn = "ffa_varlen_func_with_sink"
    hq, _ = _checks.check_qkv(fn, q, k, v, varlen=True)
    cu_q, cu_k = _checks.check_cu_seqlens_pair(fn, cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0])
    _checks.check_sink(fn, sink, sink_layout, (q.shape[0],), hq)
    window = _checks.check_window(fn, window_size)
    out, meta = _run_ffa(
        fn, q, k, v, varlen_slices(cu_q, cu_k, causal, window), sink, sink_layout, softmax_scale,
        softcap, deterministic, return_max_logits,
    )
    return _results(out, lambda: meta.lse.transpose(0, 1), meta, return_attn_probs, return_max_logits)
