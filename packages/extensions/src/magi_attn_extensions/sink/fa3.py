"""Sink wrappers over FlashAttention 3 (``flash_attn_interface``, Hopper): batch and varlen.

Kernel: ``flash_attn_interface._flash_attn_forward`` / ``_flash_attn_backward`` (arguments matched
by name, so 3.0.0b1 and later both work); the sink via ``sink._function``. lse layouts of FA3:
batch ``[b, h, sq]``, varlen ``[h, total_q]``.
"""

from __future__ import annotations

import torch

from magi_attn_extensions.sink import _checks
from magi_attn_extensions.sink._fa_common import kwcall, lse_from_fa, lse_to_fa, require
from magi_attn_extensions.sink._function import SinkAttnFunction

__all__ = ["fa3_func_with_sink", "fa3_varlen_func_with_sink"]

_PIP = "flash_attn_3 (build hopper/ of flash-attention: cd hopper && python setup.py install)"


class _FA3Adapter:
    def __init__(self, fa, varlen, vals, window):
        self.fa, self.varlen, self.vals, self.window = fa, varlen, vals, window

    def forward(self, q, k, v):
        res = kwcall(self.fa._flash_attn_forward, dict(self.vals, q=q, k=k, v=v), self.window)
        out, lse = res[0], res[1]
        return out, lse_from_fa(lse.transpose(0, 1) if self.varlen else lse.transpose(1, 2))

    def backward(self, dout, q, k, v, out, lse):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        lse_fa = lse_to_fa(lse.transpose(0, 1) if self.varlen else lse.transpose(1, 2))
        vals = dict(self.vals, dout=dout, q=q, k=k, v=v, out=out, softmax_lse=lse_fa, dq=dq, dk=dk, dv=dv,
                    sequed_q=self.vals.get("seqused_q"), sequed_k=self.vals.get("seqused_k"))
        kwcall(self.fa._flash_attn_backward, vals, self.window)
        return dq, dk, dv


def _vals(softmax_scale, causal, q_descale, k_descale, v_descale, attention_chunk, softcap, num_splits, pack_gqa,
          deterministic, sm_margin, qv=None, cu_q=None, cu_k=None, max_q=None, max_k=None, seqused_q=None,
          seqused_k=None):
    none = dict.fromkeys(["k_new", "v_new", "out", "cu_seqlens_k_new", "page_table", "kv_batch_idx",
                          "leftpad_k", "rotary_cos", "rotary_sin", "seqlens_rotary", "scheduler_metadata"])
    return dict(none, qv=qv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
                seqused_q=seqused_q, seqused_k=seqused_k, q_descale=q_descale, k_descale=k_descale,
                v_descale=v_descale, softmax_scale=softmax_scale, causal=causal, attention_chunk=attention_chunk,
                softcap=softcap, rotary_interleaved=True, num_splits=num_splits, pack_gqa=pack_gqa,
                deterministic=deterministic, sm_margin=sm_margin)


def _common_checks(fn, q, k, v, sink, sink_layout, rows, window_size, softmax_scale, qv, attention_chunk, descales):
    hq, _ = _checks.check_qkv(fn, q, k, v, varlen=len(rows) == 1)
    _checks.check_sink(fn, sink, sink_layout, rows, hq)
    window = _checks.check_window(fn, window_size)
    scale = _checks.check_scale(fn, softmax_scale, q.shape[-1])
    if qv is not None or attention_chunk != 0 or any(d is not None for d in descales):
        raise NotImplementedError(
            f"{fn}(): qv, attention_chunk != 0 and fp8 descales are not supported with a sink "
            "(FA3's backward does not support them)."
        )
    return window, scale


def fa3_func_with_sink(q, k, v, sink=None, sink_layout="sh", softmax_scale=None, causal=False, qv=None,
                       q_descale=None, k_descale=None, v_descale=None, window_size=(-1, -1), attention_chunk=0,
                       softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0,
                       return_attn_probs=False):
    """FA3 ``flash_attn_func`` with a sink. q ``[b, sq, hq, d]``; returns out or ``(out, lse [b, hq, sq])``."""
    fn = "fa3_func_with_sink"
    fa = require("flash_attn_interface", _PIP, fn)
    window, scale = _common_checks(fn, q, k, v, sink, sink_layout, tuple(q.shape[:2]), window_size, softmax_scale,
                                   qv, attention_chunk, (q_descale, k_descale, v_descale))
    vals = _vals(scale, causal, None, None, None, 0, softcap, num_splits, pack_gqa, deterministic, sm_margin)
    out, lse = SinkAttnFunction.apply(_FA3Adapter(fa, False, vals, window), q, k, v, sink, sink_layout)
    return (out, lse.transpose(1, 2)) if return_attn_probs else out


def fa3_varlen_func_with_sink(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, sink=None,
                              sink_layout="sh", seqused_q=None, seqused_k=None, softmax_scale=None, causal=False,
                              qv=None, q_descale=None, k_descale=None, v_descale=None, window_size=(-1, -1),
                              attention_chunk=0, softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False,
                              sm_margin=0, return_attn_probs=False):
    """FA3 ``flash_attn_varlen_func`` with a sink. q ``[total_q, hq, d]``; returns out or
    ``(out, lse [hq, total_q])``."""
    fn = "fa3_varlen_func_with_sink"
    fa = require("flash_attn_interface", _PIP, fn)
    window, scale = _common_checks(fn, q, k, v, sink, sink_layout, (q.shape[0],), window_size, softmax_scale,
                                   qv, attention_chunk, (q_descale, k_descale, v_descale))
    vals = _vals(scale, causal, None, None, None, 0, softcap, num_splits, pack_gqa, deterministic, sm_margin,
                 cu_q=cu_seqlens_q, cu_k=cu_seqlens_k, max_q=max_seqlen_q, max_k=max_seqlen_k,
                 seqused_q=seqused_q, seqused_k=seqused_k)
    out, lse = SinkAttnFunction.apply(_FA3Adapter(fa, True, vals, window), q, k, v, sink, sink_layout)
    return (out, lse.transpose(0, 1)) if return_attn_probs else out
