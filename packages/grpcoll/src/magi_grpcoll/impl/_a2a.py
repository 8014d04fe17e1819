"""all_to_all_single on raw bytes, so every dtype works on every backend (gloo lacks some floats)."""

from __future__ import annotations

import math
import time
import weakref

import torch
import torch.distributed as dist

__all__ = ["a2a_rows"]

# How long wait() lets gloo's worker thread release a finished collective's buffers (normally µs).
_RELEASE_TIMEOUT_S = 1.0


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    row = math.prod(t.shape[1:])
    return t.reshape(t.shape[0], row).view(torch.uint8) if row > 0 else t.reshape(t.shape[0], 0)


class _HostA2AWork:
    """The ``dist.Work`` of one host (gloo) all-to-all whose ``wait()`` returns only once gloo let go.

    Why: gloo drops its references to a finished collective's tensors in its own worker thread, and
    with torch's Python-object preservation that drop takes the GIL. When the main thread finishes
    the script right after the last wait, the worker may still be queued for the GIL while the
    interpreter finalizes; it then exits inside a C++ destructor and the process aborts with
    "terminate called without an active exception" (seen in ~40% of 2-rank CPU runs of a training
    step). Waiting here until the buffers are released (weak references to private aliases die)
    closes that window. CUDA tensors never take this path.
    """

    def __init__(self, work, buffers: tuple[torch.Tensor, ...]) -> None:
        self._work = work
        self._released = [weakref.ref(b) for b in buffers]

    def wait(self) -> bool:
        work, self._work = self._work, None
        if work is not None:
            work.wait()
            del work  # our reference goes first; gloo's worker thread holds the other one
        deadline = time.monotonic() + _RELEASE_TIMEOUT_S
        while any(r() is not None for r in self._released) and time.monotonic() < deadline:
            time.sleep(0)  # hands the GIL to gloo's worker thread
        return True

    def buffers_released(self) -> bool:
        """True once no collective holds the buffers any more (what ``wait()`` waits for)."""
        return all(r() is None for r in self._released)


def a2a_rows(recv: torch.Tensor, send: torch.Tensor, recv_counts, send_counts, group):
    """Row-wise all-to-all-v; returns the async work (``.wait()``)."""
    if math.prod(send.shape[1:]) == 0:
        send = send.reshape(send.shape[0], 0).to(torch.uint8)
        recv_b = torch.empty((recv.shape[0], 0), dtype=torch.uint8, device=recv.device)
    else:
        send, recv_b = _as_bytes(send), _as_bytes(recv)
    on_host = send.device.type == "cpu"
    if on_host:  # private aliases: only the collective references them, so their release is visible
        send, recv_b = send.view(send.shape), recv_b.view(recv_b.shape)
    work = dist.all_to_all_single(recv_b, send, list(recv_counts), list(send_counts), group=group,
                                  async_op=True)
    return _HostA2AWork(work, (send, recv_b)) if on_host else work
