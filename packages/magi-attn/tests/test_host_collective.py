"""run_and_release waits for a backend that drops its buffers after signalling completion (gloo)."""

from __future__ import annotations

import threading
import weakref

import torch
from magi_attention.common.host_collective import run_and_release


class _LateReleaseWork:
    """Like gloo's worker thread: wakes the waiter first, drops its tensor references a bit later."""

    def __init__(self, tensors, delay_s=0.05):
        self.tensors = list(tensors)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(delay_s,), daemon=True)
        self._thread.start()

    def _run(self, delay_s):
        for t in self.tensors:
            t.mul_(2)  # the "collective" writes in place
        self._done.set()
        threading.Event().wait(delay_s)
        self.tensors = None

    def wait(self):
        self._done.wait()
        return True


def test_returns_only_after_the_backend_released_the_host_buffers():
    seen = []

    def launch(ts):
        seen.extend(weakref.ref(t) for t in ts)
        return _LateReleaseWork(ts)

    x, y = torch.arange(4.0), torch.ones(2, 3)
    run_and_release(launch, [x, y])
    assert len(seen) == 2 and all(r() is None for r in seen), "returned while the buffers were held"
    assert torch.equal(x, torch.arange(4.0) * 2) and torch.equal(y, torch.full((2, 3), 2.0))


def test_launch_gets_private_aliases_of_host_tensors():
    got = []

    def launch(ts):
        got.extend(ts)
        return _LateReleaseWork([], delay_s=0)

    x = torch.randn(3, 2)
    run_and_release(launch, [x])
    assert got[0] is not x and got[0].data_ptr() == x.data_ptr() and got[0].shape == x.shape


def test_device_tensors_are_passed_through():
    got = []

    def launch(ts):
        got.extend(ts)
        return _LateReleaseWork([], delay_s=0)

    x = torch.empty(3, device="meta")
    run_and_release(launch, [x])
    assert got[0] is x
