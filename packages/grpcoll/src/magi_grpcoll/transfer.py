"""Plan tensors uploaded without a host sync, and their host copies kept for the binding.

A plan is built from host lists. ``t.to("cuda")`` of a pageable tensor synchronises the stream (the
host waits for every kernel queued before it), and binding a plan to the native implementation read
its index tensors back (another sync each). Varlen training builds new plans every step (its
documents are packed anew), so each such copy drained the GPU's queue mid-step. Here an upload goes
through pinned memory with ``non_blocking=True`` (queued like a kernel; the caching host allocator
keeps the pinned block until the copy has run), and the host copy it came from is remembered so that
:func:`host_of` never reads the device.
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["host_of", "upload"]

_host_copies: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # id(device tensor) -> (its ref, host copy)


def _forget(key: int) -> None:
    _host_copies.pop(key, None)


def upload(t: torch.Tensor, device) -> torch.Tensor:
    """The CPU tensor ``t`` on ``device``; on CUDA queued without a host sync, its host copy kept
    for :func:`host_of` (``t`` must not be changed afterwards)."""
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return t.to(device)
    out = t.pin_memory().to(device, non_blocking=True)
    key = id(out)
    _host_copies[key] = (weakref.ref(out, lambda _, key=key: _forget(key)), t)
    return out


def host_of(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the host: the copy it was uploaded from where there is one, else a device read."""
    if t.device.type == "cpu":
        return t
    entry = _host_copies.get(id(t))
    if entry is not None and entry[0]() is t:
        return entry[1]
    return t.cpu()
