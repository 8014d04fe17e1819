"""all_to_all_single on raw bytes, so every dtype works on every backend (gloo lacks some floats)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

__all__ = ["a2a_rows"]


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    row = math.prod(t.shape[1:])
    return t.reshape(t.shape[0], row).view(torch.uint8) if row > 0 else t.reshape(t.shape[0], 0)


def a2a_rows(recv: torch.Tensor, send: torch.Tensor, recv_counts, send_counts, group):
    """Row-wise all-to-all-v; returns the async ``dist.Work``."""
    if math.prod(send.shape[1:]) == 0:
        send = send.reshape(send.shape[0], 0).to(torch.uint8)
        recv_b = torch.empty((recv.shape[0], 0), dtype=torch.uint8, device=recv.device)
    else:
        send, recv_b = _as_bytes(send), _as_bytes(recv)
    return dist.all_to_all_single(recv_b, send, list(recv_counts), list(send_counts), group=group,
                                  async_op=True)
