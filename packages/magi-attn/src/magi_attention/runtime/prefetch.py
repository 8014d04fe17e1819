"""A key's runtime manager built on a background thread (``api.prefetch_flex_key`` / ``prefetch_varlen_key``).

Why: varlen training packs every batch anew, so every step brings a new key. Building its manager
(the cost-aware dispatch choice over ~50 candidate plans, then the plans) is host work that the
step's first kernel waits for: ~7 ms at 64k tokens on the lent GPU hosts, exposed even where a
model's other layers hide the host's per-layer work (BENCHMARKS.md "Stop 38"). The next batch's
mask is known before the current step ends. Built on a thread while the GPU runs the current step,
the manager is ready when the step that uses it asks. The solver's calls release the GIL.

What runs on the thread: ``runtime_mgr.init_dist_attn_runtime_mgr``, which talks to no other rank
and launches nothing on the GPU. The cache entry is made at once, on the caller's thread, as a
``Future`` of the manager, so the cp group's LRU sees the same sequence of keys on every rank, as
it does without prefetching. Whoever looks the key up first waits for the build, and the cache then holds
the manager.

One worker: builds run in the order asked, a later key never before an earlier one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["build_in_background"]

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _worker() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="magi-attn-prefetch")
        return _executor


def build_in_background(build: Callable[[], Any]) -> Future:
    """Run ``build()`` on the prefetch thread, with the caller's current CUDA device there (a
    manager records the device it runs on, and a new thread starts on device 0)."""
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def run():
        if device is not None:
            torch.cuda.set_device(device)
        return build()

    return _worker().submit(run)
