"""Blocking collectives that return only once the backend let go of the tensors.

On CPU (gloo), the worker thread that ran a collective drops its tensor references after the
waiter has been woken, and that drop takes the GIL (torch keeps tensors' Python objects alive from
C++). If the script ends right after, the worker can be left waiting for the GIL during interpreter
shutdown and the process aborts ("terminate called without an active exception"). The same guard
protects magi_grpcoll's all-to-all; here it covers the runtime's own all-gather / all-reduce.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence

import torch

__all__ = ["run_and_release"]

_RELEASE_TIMEOUT_S = 1.0


def run_and_release(launch: Callable[[list[torch.Tensor]], object], tensors: Sequence[torch.Tensor]) -> None:
    """Call ``launch(tensors)`` (an ``async_op=True`` collective), wait, and on host tensors also
    wait (bounded) until the backend released them. ``launch`` gets private aliases of ``tensors``
    (same storage), whose death shows the release; it must not keep them."""
    if not tensors or tensors[0].device.type != "cpu":
        launch(list(tensors)).wait()
        return
    aliases = [t.view(t.shape) for t in tensors]
    released = [weakref.ref(a) for a in aliases]
    work = launch(aliases)
    del aliases
    work.wait()
    del work
    deadline = time.monotonic() + _RELEASE_TIMEOUT_S
    while any(r() is not None for r in released) and time.monotonic() < deadline:
        time.sleep(0)  # hands the GIL to the backend's worker thread
