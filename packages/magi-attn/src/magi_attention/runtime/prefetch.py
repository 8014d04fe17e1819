"""A key's runtime manager built on a background thread (``api.prefetch_flex_key`` / ``prefetch_varlen_key``).

Why: varlen training packs every batch anew, so every step brings a new key. Building its manager
(the cost-aware dispatch choice over ~50 candidate plans, then the plans) is host work that the
step's first kernel waits for: ~7 ms at 64k tokens on the lent GPU hosts, exposed even where a
model's other layers hide the host's per-layer work (BENCHMARKS.md "Stop 38"). The next batch's
mask is known before the current step ends. Built on a thread while the GPU runs the current step,
the manager is ready when the step that uses it asks. The solver's calls release the GIL.

What runs on the thread: ``runtime_mgr.init_dist_attn_runtime_mgr``, which talks to no other rank,
then the runtime's first-call host work (``DistAttnRuntime.prepare_ahead``: the stages' comm plans,
their native bindings and copy tables, the kernel calls' mask translations). The cache entry is
made at once, on the caller's thread, as the build's ``Future`` (of the manager and its uploads'
event), so the cp group's LRU sees the same sequence of keys on every rank, as it does without
prefetching. Whoever looks the key up first waits for the build (``ready``), and the cache then
holds the manager.

On CUDA that work uploads small index tables. It does so on a stream of the thread's own, which
first waits (on the GPU, not the host) for the work the caller had queued when it asked: memory an
evicted runtime gave back is then reused only after the calls that read it. The first use makes
the caller's stream wait for the uploads (an event). A caller capturing a CUDA graph in the
"global" error mode while a prefetch runs may see the capture refused (uploads from another
thread); the library's own captures use "thread_local".

One worker: builds run in the order asked, a later key never before an earlier one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["build_in_background", "ready"]

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
    manager records the device it runs on, and a new thread starts on device 0) and, on CUDA, on a
    side stream ordered after the caller's queued work; pass the Future to :func:`ready`."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    device = torch.cuda.current_device() if cuda else None
    after = None
    if cuda:  # the caller's queued work, which the side stream's uploads wait for
        after = torch.cuda.Event()
        after.record(torch.cuda.current_stream(device))

    def run():
        if device is None:
            return build(), None
        torch.cuda.set_device(device)
        stream = _side_stream(device)
        stream.wait_event(after)
        with torch.cuda.stream(stream):
            value = build()
        uploaded = torch.cuda.Event()
        uploaded.record(stream)
        return value, uploaded

    return _worker().submit(run)


def ready(future: Future) -> Any:
    """The built value (the build's exception raised here), with the caller's current stream
    ordered after the build's uploads."""
    value, uploaded = future.result()
    if uploaded is not None:
        torch.cuda.current_stream().wait_event(uploaded)
    return value


_streams: dict[int, torch.cuda.Stream] = {}


def _side_stream(device: int) -> torch.cuda.Stream:
    """The prefetch thread's stream on ``device`` (only that thread uses it)."""
    stream = _streams.get(device)
    if stream is None:
        stream = _streams[device] = torch.cuda.Stream(device=device)
    return stream
