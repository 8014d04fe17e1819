"""Replaying a native op's launches from a CUDA graph once the same addresses come back.

A native call at 16k tokens per rank moves its bytes in ~0.15 ms of GPU time, but issuing its three
launches (chunk copy, symmetric-memory barrier, fold) from Python costs as much or more on the lent
hosts (0.1-0.3 ms), so small calls were host-bound. Every argument of those launches is fixed by
the bound plan, the buffer half and the addresses of the caller's tensors. Training calls a plan
again and again, often on tensors the caching allocator hands back at the same addresses, so the
sequence is captured once into a CUDA graph and later issued with one replay. (Not always: in an
8-layer run on 2 × H200 most cast outputs came back at other addresses, likely because blocks used
on the comm stream are freed only once its events are seen complete.)

Policy (:class:`LaunchGraphs`): a key (everything the launches read: addresses, row sizes, the
buffer's generation and half) is captured once its *family* (the same key with the buffer half left
out) has been seen ``min_sightings`` times (native bindings: three, see
``native.GRAPH_MIN_SIGHTINGS``), so calls whose addresses never repeat pay no capture, and where a
step makes an odd number of native calls (each call's half then alternates from step to step) both
halves are captured one step apart, not two. A model calls each plan once per layer on
that layer's tensors, so a binding holds up to ``capacity`` graphs (``MAGI_GRPCOLL_GRAPH_CAPACITY``,
default 256), least recently used dropped; a key whose graph was dropped is never captured again
(it runs eagerly): more distinct keys than ``capacity`` would otherwise be re-captured on every
step, at more host time than launching them.
Never inside a caller's own capture (the launches are then recorded into the caller's graph), on
the Triton interpreter, or with ``MAGI_GRPCOLL_CUDA_GRAPHS=0``. A failed capture turns graphs off
for the process (with one warning) and the call runs eagerly.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

__all__ = ["LaunchGraphs", "graph_capacity", "graph_stats", "graphs_enabled"]

_disabled_reason: list[str] = []  # set once a capture fails: graphs stay off for the process
_totals = {"replays": 0, "captures": 0, "eager": 0}  # over every LaunchGraphs of the process


def graph_stats() -> dict:
    """Native ops of this process so far: replayed from a graph, captured, launched eagerly (a call
    whose addresses keep changing never replays and pays its launches' host time every time)."""
    return dict(_totals)


def graphs_enabled() -> bool:
    """Whether native ops may replay CUDA graphs (env switch, interpreter, earlier failure)."""
    return (not _disabled_reason and os.environ.get("MAGI_GRPCOLL_CUDA_GRAPHS", "1") != "0"
            and os.environ.get("TRITON_INTERPRET") != "1")


def _capture(launch: Callable[[], None]):
    """A CUDA graph of ``launch()`` captured on the current stream (recorded, not run), or None.

    Each graph gets its own (empty: the launches allocate nothing) private memory pool: a pool
    shared through ``graph_pool_handle()`` is deleted with the last graph using it, and capturing
    into it again later trips the caching allocator.
    """
    graph = torch.cuda.CUDAGraph()
    error = None
    try:
        graph.capture_begin(capture_error_mode="thread_local")
    except Exception as e:  # noqa: BLE001 - nothing was captured
        error = e
    else:
        try:
            launch()
        except Exception as e:  # noqa: BLE001 - end the capture first, then fall back
            error = e
        try:
            graph.capture_end()
        except Exception as e:  # noqa: BLE001
            error = error or e
    if error is not None:
        _disabled_reason.append(f"{type(error).__name__}: {error}")
        warnings.warn(f"magi_grpcoll: capturing a native op into a CUDA graph failed ({_disabled_reason[0]}); "
                      "native ops launch eagerly from now on (MAGI_GRPCOLL_CUDA_GRAPHS=0 silences this).",
                      RuntimeWarning, stacklevel=3)
        return None
    return graph


def graph_capacity() -> int:
    """Graphs kept per bound plan (``MAGI_GRPCOLL_GRAPH_CAPACITY``, default 256)."""
    raw = os.environ.get("MAGI_GRPCOLL_GRAPH_CAPACITY", "256")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 1:
        raise ValueError(f"MAGI_GRPCOLL_GRAPH_CAPACITY={raw!r}: expected a positive integer")
    return value


class LaunchGraphs:
    """CUDA graphs of one bound plan's launch sequences, by key (see the module docstring).

    ``capture`` builds a graph from a launch function (recorded on the current stream, not run:
    anything with a ``replay()``, or None when it failed); tests pass a stand-in. ``enabled``: whether
    graphs may be used now; ``totals``: the dict whose "replays" / "captures" / "eager" counts this
    instance adds to (default: the native ops', ``graph_stats``). ``replays`` / ``captures`` count
    this instance's. Public (interface 1.4) for callers that keep graphs of their own launch
    sequences under the same policy, such as magi_attention's whole-call graphs.
    """

    def __init__(self, capacity: int | None = None, min_sightings: int = 2, capture=_capture,
                 enabled: Callable[[], bool] = graphs_enabled, totals: dict | None = None) -> None:
        self._capacity = graph_capacity() if capacity is None else capacity
        self._graphs: OrderedDict = OrderedDict()  # key -> graph
        self._sightings: OrderedDict = OrderedDict()  # family -> times seen
        self._dropped: OrderedDict = OrderedDict()  # keys whose graph was dropped (never captured again)
        self._min_sightings, self._capture, self._enabled = min_sightings, capture, enabled
        self._totals = _totals if totals is None else totals  # where replays / captures / eager add up
        self.replays = self.captures = 0

    def __len__(self) -> int:
        """Graphs kept now."""
        return len(self._graphs)

    def run(self, key: Hashable, launch: Callable[[], None], family: Hashable | None = None) -> None:
        """Issue ``launch()``'s work on the current stream: from a graph of ``key`` when there is one.
        ``family``: the key without what alternates between otherwise equal calls (default: the key)."""
        if not self._enabled() or torch.cuda.is_current_stream_capturing():
            self._eager(launch)
            return
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            self._replay(graph)
            return
        family = key if family is None else family
        seen = self._sightings.pop(family, 0) + 1
        self._sightings[family] = seen
        self._bound(self._sightings)
        if seen < self._min_sightings or key in self._dropped:
            self._eager(launch)
            return
        graph = self._capture(launch)
        if graph is None:
            self._eager(launch)
            return
        self.captures += 1
        self._totals["captures"] += 1
        self._graphs[key] = graph
        while len(self._graphs) > self._capacity:
            self._dropped[self._graphs.popitem(last=False)[0]] = None
        self._bound(self._dropped)
        self._replay(graph)

    def _bound(self, seen: OrderedDict) -> None:
        """Keep the bookkeeping of keys and families bounded (oldest forgotten first)."""
        while len(seen) > 4 * self._capacity:
            seen.popitem(last=False)

    def _replay(self, graph) -> None:
        graph.replay()
        self.replays += 1
        self._totals["replays"] += 1

    def _eager(self, launch: Callable[[], None]) -> None:
        launch()
        self._totals["eager"] += 1
