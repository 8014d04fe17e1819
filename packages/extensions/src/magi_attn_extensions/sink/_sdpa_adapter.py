"""Kernel adapter running torch's SDPA kernels on ``[B, S, h, d]`` with a shared boolean mask."""

from __future__ import annotations

import torch

from magi_attn_extensions.sink import _sdpa_engines as engines


def _heads_first(x: torch.Tensor, repeat: int) -> torch.Tensor:
    """``[B, S, h, d] -> [B, h*repeat, S, d]`` (repeat_interleave over heads for GQA)."""
    x = x.transpose(1, 2)
    if repeat > 1:
        x = x.repeat_interleave(repeat, dim=1)
    return x.contiguous()


class SDPAAdapter:
    """q ``[B, Sq, hq, d]``, k/v ``[B, Sk, hk, d]``; mask bool ``[Sq, Sk]`` or None (all visible)."""

    def __init__(self, mask: torch.Tensor | None, scale: float):
        self.mask, self.scale = mask, scale

    def _empty_rows(self, sq: int, sk: int, device) -> torch.Tensor:
        if sk == 0:
            return torch.ones(sq, dtype=torch.bool, device=device)
        if self.mask is None:
            return torch.zeros(sq, dtype=torch.bool, device=device)
        return ~self.mask.any(-1)

    def forward(self, q, k, v):
        g = q.shape[2] // k.shape[2]
        qt, kt, vt = _heads_first(q, 1), _heads_first(k, g), _heads_first(v, g)
        self.engine = engines.pick_engine(qt, kt)
        out, lse = engines.attn_forward(self.engine, qt, kt, vt, self.mask, self.scale)
        out, lse = out.transpose(1, 2), lse.transpose(1, 2)  # [B, Sq, hq, d], [B, Sq, hq]
        empty = self._empty_rows(q.shape[1], k.shape[1], q.device)
        lse = lse.masked_fill(empty[None, :, None], float("-inf"))
        out = out.masked_fill(empty[None, :, None, None], 0.0).contiguous()
        return out, lse

    def backward(self, dout, q, k, v, out, lse):
        b, sk, hk = k.shape[0], k.shape[1], k.shape[2]
        g = q.shape[2] // hk
        qt, kt, vt = _heads_first(q, 1), _heads_first(k, g), _heads_first(v, g)
        lse_k = lse.masked_fill(torch.isneginf(lse), 0.0).transpose(1, 2).contiguous()
        dq, dk, dv = engines.attn_backward(
            self.engine, _heads_first(dout, 1), qt, kt, vt, _heads_first(out, 1), lse_k, self.mask, self.scale
        )
        dq = dq.transpose(1, 2)
        dk = dk.reshape(b, hk, g, sk, -1).sum(2).transpose(1, 2)
        dv = dv.reshape(b, hk, g, sk, -1).sum(2).transpose(1, 2)
        return dq, dk, dv
