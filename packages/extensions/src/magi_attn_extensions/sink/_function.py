"""The autograd Function shared by every sink wrapper: base kernel, sink correction, explicit dsink.

A *kernel adapter* hides one attention library (SDPA, FA2, FA3, FA4). It provides
``forward(q, k, v) -> (out, lse)`` and ``backward(dout, q, k, v, out, lse) -> (dq, dk, dv)`` where
``out`` has q's shape and ``lse`` is fp32 ``[*rows, hq]`` (rows = ``q.shape[:-2]``, i.e. ``[b, sq]``
or ``[total_q]``), ``-inf`` for rows without keys; backward receives the *corrected* out and lse.
The sink is ``[s, hq]`` ("sh") or ``[*rows, s, hq]`` ("ssh").
"""

from __future__ import annotations

import torch

from magi_attn_extensions.sink.correction import correct_out_lse_with_sink, sink_backward


class SinkAttnFunction(torch.autograd.Function):
    """``out, lse = adapter.forward(q, k, v)`` corrected by the sink; dsink from sink_backward only."""

    @staticmethod
    def forward(ctx, adapter, q, k, v, sink, sink_layout: str):
        out, lse = adapter.forward(q, k, v)
        hq = q.shape[-2]
        if sink is not None:
            sink_rows = sink.detach() if sink_layout == "sh" else sink.detach().reshape(-1, *sink.shape[-2:])
            out_c, lse_c = correct_out_lse_with_sink(out.reshape(-1, hq, out.shape[-1]), lse.reshape(-1, hq),
                                                     sink_rows, sink_layout)
            out, lse = out_c.reshape(out.shape).to(q.dtype), lse_c.reshape(lse.shape)
        lse = lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
        ctx.save_for_backward(q, k, v, out, lse, None if sink is None else sink.detach())
        ctx.adapter, ctx.has_sink, ctx.sink_layout = adapter, sink is not None, sink_layout
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, sink = ctx.saved_tensors
        hq = q.shape[-2]
        dout = dout.contiguous()
        dsink = None
        if ctx.has_sink and ctx.needs_input_grad[4]:
            sink_rows = sink if ctx.sink_layout == "sh" else sink.reshape(-1, *sink.shape[-2:])
            dsink = sink_backward(
                sink_rows, lse.reshape(-1, hq), out.reshape(-1, hq, out.shape[-1]),
                dout.reshape(-1, hq, dout.shape[-1]), ctx.sink_layout,
            ).reshape(sink.shape)
        dq = dk = dv = None
        if any(ctx.needs_input_grad[1:4]):
            dq, dk, dv = ctx.adapter.backward(dout, q, k, v, out, lse)
            dq, dk, dv = dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
        return None, dq, dk, dv, dsink, None
