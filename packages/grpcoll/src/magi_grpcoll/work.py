"""The handle returned by group_cast / group_reduce: wait for the communication, then post-process.

Stream semantics: ``wait_post_process()`` makes the *current* CUDA stream wait for the collective
(``dist.Work.wait()`` on NCCL), then enqueues the post-pass kernels on the current stream; the CPU is
not blocked (unless NCCL runs in blocking mode; gloo on CPU does block). With ``async_op=False``
the wait already happened in the call, and only the post-pass remains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["GrpCollWork"]


class GrpCollWork:
    """One pending group collective. Call :meth:`wait_post_process` exactly once.

    Args:
        works: ``dist.Work`` objects (or objects with ``.wait()``) of the communication in flight.
        post_process: called as ``post_process(*outputs)`` after the wait; returns the result.
        async_op: when False, the works are waited on at construction.
        keep_alive: tensors that must outlive the communication (send/receive buffers).
    """

    def __init__(self, works: list, post_process: Callable[..., Any], async_op: bool,
                 keep_alive: tuple = ()) -> None:
        self._works = list(works)
        self._post_process = post_process
        self._keep_alive = keep_alive
        self._done = False
        self._async = async_op
        if not async_op:
            self._wait_comm()

    def _wait_comm(self) -> None:
        works, self._works = self._works, []
        for w in works:
            if w is not None:
                w.wait()

    def wrap_post_process(self, before: Callable[..., tuple], after: Callable[[Any], Any]) -> None:
        """Reshape what :meth:`wait_post_process` takes and returns: the arguments pass through
        ``before`` on their way to the post-pass, its result through ``after`` (used to hand a list
        input's outputs back as a list)."""
        inner = self._post_process
        self._post_process = lambda *outputs: after(inner(*before(*outputs)))

    @property
    def async_op(self) -> bool:
        return self._async

    def wait_post_process(self, *outputs):
        """Wait for the communication, run the post-pass and return the result tensor(s).

        Pass ``(output,)`` or ``(output, output_lse)``; with no arguments the tensors given to the call
        are used. A second call raises ``RuntimeError``.
        """
        if self._done:
            raise RuntimeError("GrpCollWork.wait_post_process(): already called once for this work; each "
                               "group_cast/group_reduce result can be waited on exactly once.")
        self._done = True
        self._wait_comm()
        result = self._post_process(*outputs)
        self._keep_alive = ()
        return result

    def __repr__(self) -> str:
        return f"GrpCollWork(async_op={self._async}, done={self._done}, pending={len(self._works)})"
