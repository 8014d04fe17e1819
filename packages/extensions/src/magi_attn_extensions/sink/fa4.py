"""Sink wrappers over FlashAttention 4 (``flash_attn.cute``, CuTe DSL, Hopper/Blackwell).

Kernel: ``flash_attn.cute.interface._flash_attn_fwd`` (with ``return_lse=True``) and
``_flash_attn_bwd`` (returns dq, dk, dv), arguments matched by name; windows use None for
unbounded. lse layouts: batch ``[b, h, sq]``, varlen ``[h, total_q]``. Signatures as the
post-1.1.0 anchor's ``fa4_*_func_with_sink``.
"""

from __future__ import annotations

from magi_attn_extensions.sink import _checks
from magi_attn_extensions.sink._fa_common import kwcall, lse_from_fa, lse_to_fa, require
from magi_attn_extensions.sink._function import SinkAttnFunction

__all__ = ["fa4_func_with_sink", "fa4_varlen_func_with_sink"]

_PIP = "flash-attn-cute (pip install 'flash-attn-4' or the flash_attn/cute package of flash-attention)"


class _FA4Adapter:
    def __init__(self, fa, varlen, vals, window):
        self.fa, self.varlen, self.vals, self.window = fa, varlen, vals, window

    def forward(self, q, k, v):
        res = kwcall(self.fa._flash_attn_fwd, dict(self.vals, q=q, k=k, v=v, return_lse=True), self.window, True)
        out, lse = res[0], res[1]
        return out, lse_from_fa(lse.transpose(0, 1) if self.varlen else lse.transpose(1, 2))

    def backward(self, dout, q, k, v, out, lse):
        lse_fa = lse_to_fa(lse.transpose(0, 1) if self.varlen else lse.transpose(1, 2))
        res = kwcall(self.fa._flash_attn_bwd, dict(self.vals, dout=dout, q=q, k=k, v=v, out=out, lse=lse_fa),
                     self.window, True)
        return res[0], res[1], res[2]


def _run(fn, varlen, q, k, v, rows, sink, sink_layout, softmax_scale, causal, window_size, softcap, num_splits,
         deterministic, extra):
    fa = require("flash_attn.cute.interface", _PIP, fn)
    hq, _ = _checks.check_qkv(fn, q, k, v, varlen=varlen)
    _checks.check_sink(fn, sink, sink_layout, rows, hq)
    window = _checks.check_window(fn, window_size)
    scale = _checks.check_scale(fn, softmax_scale, q.shape[-1])
    vals = dict(extra, softmax_scale=scale, causal=causal, softcap=softcap or None, num_splits=num_splits,
                deterministic=deterministic)
    return SinkAttnFunction.apply(_FA4Adapter(fa, varlen, vals, window), q, k, v, sink, sink_layout)


def fa4_func_with_sink(q, k, v, sink=None, sink_layout="sh", softmax_scale=None, causal=False,
                       window_size=(-1, -1), softcap=0.0, num_splits=1, deterministic=False,
                       return_attn_probs=False):
    """FA4 attention with a sink. q ``[b, sq, hq, d]``; returns out or ``(out, lse [b, hq, sq])``."""
    out, lse = _run("fa4_func_with_sink", False, q, k, v, tuple(q.shape[:2]), sink, sink_layout, softmax_scale,
                    causal, window_size, softcap, num_splits, deterministic, {})
    return (out, lse.transpose(1, 2)) if return_attn_probs else out


def fa4_varlen_func_with_sink(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                              sink=None, sink_layout="sh", softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, num_splits=1, deterministic=False, return_attn_probs=False):
    """FA4 varlen attention with a sink. q ``[total_q, hq, d]``; returns out or ``(out, lse [hq, total_q])``."""
    extra = dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                 max_seqlen_k=max_seqlen_k)
    out, lse = _run("fa4_varlen_func_with_sink", True, q, k, v, (q.shape[0],), sink, sink_layout, softmax_scale,
                    causal, window_size, softcap, num_splits, deterministic, extra)
    return (out, lse.transpose(0, 1)) if return_attn_probs else out
