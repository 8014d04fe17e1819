"""Sink wrappers over FlashAttention 2 (``flash_attn``, 2.8.x): batch and varlen.

Signatures follow the anchor's ``fa2_func_with_sink`` / ``fa2_varlen_func_with_sink``. The kernel
runs through ``flash_attn.flash_attn_interface._wrapped_flash_attn_{,varlen_}{forward,backward}``;
the sink correction and dsink come from ``sink.correction`` (see ``sink._function``).
lse layouts of FA2: batch ``[b, h, sq]``, varlen ``[h, total_q]``.
"""

from __future__ import annotations

import torch

from magi_attn_extensions.sink import _checks
from magi_attn_extensions.sink._fa_common import kwcall, lse_from_fa, lse_to_fa, require
from magi_attn_extensions.sink._function import SinkAttnFunction

__all__ = ["fa2_func_with_sink", "fa2_varlen_func_with_sink"]

_PIP = "flash-attn==2.8.3 --no-build-isolation"


def _pad8(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    return x if d % 8 == 0 else torch.nn.functional.pad(x, [0, 8 - d % 8])


class _FA2Adapter:
    def __init__(self, fa, varlen, cu_q, cu_k, max_q, max_k, dropout_p, scale, causal, window, softcap,
                 alibi_slopes, deterministic):
        self.fa, self.varlen = fa, varlen
        self.vals = dict(
            cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k, dropout_p=dropout_p,
            softmax_scale=scale, causal=causal, softcap=softcap, alibi_slopes=alibi_slopes,
            deterministic=deterministic, return_softmax=False,
        )
        self.window = window

    def forward(self, q, k, v):
        fwd = self.fa._wrapped_flash_attn_varlen_forward if self.varlen else self.fa._wrapped_flash_attn_forward
        out, lse, _s, self.rng_state = kwcall(fwd, dict(self.vals, q=_pad8(q), k=_pad8(k), v=_pad8(v)), self.window)
        out = out[..., : q.shape[-1]]
        # FA2 lse: [b, h, sq] -> [b, sq, h]; varlen [h, total] -> [total, h]
        return out, lse_from_fa(lse.transpose(0, 1) if self.varlen else lse.transpose(1, 2))

    def backward(self, dout, q, k, v, out, lse):
        qp, kp, vp = _pad8(q), _pad8(k), _pad8(v)
        dq, dk, dv = torch.empty_like(qp), torch.empty_like(kp), torch.empty_like(vp)
        lse_fa = lse_to_fa(lse.transpose(0, 1) if self.varlen else lse.transpose(1, 2))
        bwd = self.fa._wrapped_flash_attn_varlen_backward if self.varlen else self.fa._wrapped_flash_attn_backward
        vals = dict(self.vals, dout=_pad8(dout), q=qp, k=kp, v=vp, out=_pad8(out), softmax_lse=lse_fa,
                    dq=dq, dk=dk, dv=dv, rng_state=self.rng_state)
        kwcall(bwd, vals, self.window)
        d = q.shape[-1]
        return dq[..., :d], dk[..., :d], dv[..., :d]


def fa2_func_with_sink(q, k, v, sink=None, sink_layout="sh", dropout_p=0.0, softmax_scale=None, causal=False,
                       window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                       return_attn_probs=False):
    """FA2 ``flash_attn_func`` with a sink. q ``[b, sq, hq, d]``, k/v ``[b, sk, hk, d]``, sink ``[s, hq]``
    ("sh") or ``[b, sq, s, hq]`` ("ssh"). Returns out, or ``(out, lse [b, hq, sq], None)``."""
    fn = "fa2_func_with_sink"
    fa = require("flash_attn.flash_attn_interface", _PIP, fn)
    hq, _ = _checks.check_qkv(fn, q, k, v, varlen=False)
    _checks.check_sink(fn, sink, sink_layout, tuple(q.shape[:2]), hq)
    window = _checks.check_window(fn, window_size)
    scale = _checks.check_scale(fn, softmax_scale, q.shape[-1])
    adapter = _FA2Adapter(fa, False, None, None, None, None, dropout_p, scale, causal, window, softcap,
                          alibi_slopes, deterministic)
    out, lse = SinkAttnFunction.apply(adapter, q, k, v, sink, sink_layout)
    return (out, lse.transpose(1, 2), None) if return_attn_probs else out


def fa2_varlen_func_with_sink(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, sink=None,
                              sink_layout="sh", dropout_p=0.0, softmax_scale=None, causal=False,
                              window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                              return_attn_probs=False, block_table=None):
    """FA2 ``flash_attn_varlen_func`` with a sink. q ``[total_q, hq, d]``, sink ``[s, hq]`` or
    ``[total_q, s, hq]``. Returns out, or ``(out, lse [hq, total_q], None)``."""
    fn = "fa2_varlen_func_with_sink"
    fa = require("flash_attn.flash_attn_interface", _PIP, fn)
    if block_table is not None:
        raise NotImplementedError(f"{fn}(): block_table (paged KV) is not supported with a sink.")
    hq, _ = _checks.check_qkv(fn, q, k, v, varlen=True)
    _checks.check_sink(fn, sink, sink_layout, (q.shape[0],), hq)
    window = _checks.check_window(fn, window_size)
    scale = _checks.check_scale(fn, softmax_scale, q.shape[-1])
    adapter = _FA2Adapter(fa, True, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, scale,
                          causal, window, softcap, alibi_slopes, deterministic)
    out, lse = SinkAttnFunction.apply(adapter, q, k, v, sink, sink_layout)
    return (out, lse.transpose(0, 1), None) if return_attn_probs else out
