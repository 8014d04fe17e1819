"""CUDA graphs of a runtime's whole forward and backward on one layer's tensors (MAGI_ATTENTION_CUDA_GRAPHS).

Why: issuing one layer's calc_attn from Python (the stage kernels, the casts and reduces, the merges)
took 0.4-0.9 ms of host time per forward and 1-1.7 ms per backward on the lent 2 x H200 hosts,
against ~0.5 / ~1.2 ms of kernels for a 32k-token varlen causal step, so such steps ran at the
host's pace (BENCHMARKS.md). Once captured, a call is one graph launch.

What a graph bakes in, and so what its key holds: the address, shape, strides and dtype of every
tensor the call reads or writes that is not the runtime's own (the inputs, and the outputs, which
are allocated before the call, outside the graph; under MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE the kept
tail too, the last stage's K/V receive buffer, which the forward writes and the backward reads), the
scalars, and, with the native collectives, the parity of the group's native call count and its
buffer's generation (a native call writes the buffer half its count's parity names; a replay writes
the halves it was captured with). The rest lives as long as the runtime: its slice tensors and
FFACalls (which hold the translated masks), the collectives' plans and the graphs' one memory pool.
That pool is shared by all of the runtime's graphs: a call frees every temporary by its end, and the
graphs replay one after another on one stream.

When: a key is captured on its second sighting, so every cache a call fills (compiled kernels, masks,
plans, copy tables) was filled by an eager call first, and replayed from its third
(``magi_grpcoll.LaunchGraphs``' policy). That needs the caching allocator to hand a layer's tensors
back at the same addresses step after step. It did not while the native collectives marked their
tensors used on the comm stream (``record_stream``): a freed block then waits for that stream's
events, so on GPU-bound steps the addresses wandered, keys came back twice and never again, and
64k-token varlen steps on 2 x H200 made 7 captures for 3 replays in 64 calls, 20% slower than eager.
So the runtime's native calls hold their tensors until the wait instead (``record_streams=False``,
magi_grpcoll interface 1.5; runtime/dist_attn.py), and a runtime keeps few captures that have not
replayed yet (``_CaptureGuard``): at most ``IDLE_FLOOR``, or twice as many as its graphs that have,
which lets a model whose addresses recur capture all its layers within a few steps while one whose
addresses wander soon stops capturing.

Where: on CUDA, with the native collectives or no remote stage (their launches are capturable; NCCL's
a2a-v is not tried), for calls whose other tensors do not outlive them (no sink, no max_logits); by
default (``auto``) only with the kernels whose graphs were checked against float64 on GPUs
(FA4 and Triton). A failed capture turns graphs off for the runtime, with one warning; its call runs eagerly.

Memory: each runtime's graphs keep one pool, about one call's temporaries (its stages' K/V receive
buffers and the kernels' scratch). A runtime lives as long as its key stays in the runtime dict
(``MAGI_ATTENTION_DIST_ATTN_RUNTIME_DICT_SIZE``, 1000 by default), so masks that recur, each with its
own runtime, could pile pools up. Only the ``RUNTIMES_WITH_GRAPHS`` runtimes that used their graphs
most recently keep them; an older one drops its graphs (and so its pool) and runs eagerly from then
on, rather than capturing again, which would cost more host time than it saves when several masks
take turns.
"""

from __future__ import annotations

import os
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch

from magi_attention import _compat

__all__ = ["RuntimeGraphs", "checked_on_gpus", "graphs_supported", "make_runtime_graphs", "stats", "tensor_key",
           "unusable_reason"]

CAPACITY = 512  # graphs per runtime: a forward and a backward per layer, each at two parities
IDLE_FLOOR = 4  # captures a runtime may hold that have not replayed yet, at least
PROBE_EVERY = 16  # a guard that refuses lets every so many refused captures through (addresses may settle)
RUNTIMES_WITH_GRAPHS = 4  # runtimes of the process that keep graphs (each its own pool), most recently used
_holders: OrderedDict = OrderedDict()  # id(RuntimeGraphs) -> weakref, the most recently used last
#: over every runtime of the process; "replays" counts a capture's own first run too
_totals = {"replays": 0, "captures": 0, "eager": 0, "refused": 0, "capture us": 0}


def stats() -> dict:
    """Whole-call graph use so far in this process: replayed, captured, run eagerly, captures refused
    by the guard, and the host time the captures took (microseconds)."""
    return dict(_totals)


def graphs_supported() -> bool:
    """Whether the loaded magi_grpcoll offers what runtime graphs need (interface 1.4)."""
    return _compat.offers(_compat.grpcoll, ">=1.4")


def unusable_reason(flags, device: torch.device, num_stages: int) -> str | None:
    """Why a runtime with these flags cannot replay its calls from graphs (None: it can)."""
    if device.type != "cuda":
        return f"the runtime runs on {device.type}, not CUDA"
    if num_stages and not flags.native_grpcoll:
        return "remote stages need MAGI_ATTENTION_NATIVE_GRPCOLL=1 (a2a-v's NCCL calls are not captured)"
    if not graphs_supported():
        return "the installed magi_grpcoll is older than interface 1.4"
    return None


def checked_on_gpus(flags) -> bool:
    """Whether this configuration's kernels are the ones whose graphs were checked against float64 on
    GPUs (test_gpu_dist.py: ``fa4_native_cuda_graphs``, ``native_cuda_graphs``): FA4 or the Triton
    kernels, not the torch reference backend (a debugging path, whose host-side steps a capture may
    not take). What MAGI_ATTENTION_CUDA_GRAPHS=auto asks for."""
    if flags.sdpa_backend:
        return False
    if flags.fa4_backend:
        return True
    chosen = os.environ.get("MAGI_ATTENTION_KERNEL_BACKEND", "").strip().lower()  # magi_ffa's choice on CUDA
    return chosen in ("", "auto", "ffa", "triton")


_warned: set = set()


def make_runtime_graphs(flags, group, device: torch.device, num_stages: int):
    """A runtime's RuntimeGraphs when MAGI_ATTENTION_CUDA_GRAPHS asks for them and they can run, else
    None (with one warning per reason where ``1`` asked for them and they cannot; ``auto`` stays quiet)."""
    mode = flags.cuda_graphs
    if mode == "0" or (mode == "auto" and not checked_on_gpus(flags)):
        return None
    reason = unusable_reason(flags, device, num_stages)
    if reason is None:
        return RuntimeGraphs(group, device, native=flags.native_grpcoll)
    if mode == "1" and reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"magi_attention: MAGI_ATTENTION_CUDA_GRAPHS=1 is ignored here: {reason}.", RuntimeWarning,
                      stacklevel=3)
    return None


def tensor_key(t: torch.Tensor) -> tuple:
    """What a captured launch sequence assumes about a tensor it was captured with."""
    return t.data_ptr(), t.shape, t.stride(), t.dtype


class _Captured:
    """A graph and the native calls it holds: a replay moves the group's native call count on."""

    def __init__(self, graph, group, native_calls: int) -> None:
        self._graph, self._group, self._native_calls = graph, group, native_calls
        self.replays = 0  # the first is the capture's own run

    def replay(self) -> None:
        self._graph.replay()
        self.replays += 1
        if self._native_calls:
            calls, _ = _compat.grpcoll.native_call_state(self._group)
            _compat.grpcoll.set_native_call_count(self._group, calls + self._native_calls)


class _CaptureGuard:
    """Whether a runtime may capture one more graph (see the module docstring): no while it holds
    ``max(IDLE_FLOOR, 2 * replayed)`` graphs that have not replayed since their capture, but every
    ``PROBE_EVERY``-th refusal is let through."""

    def __init__(self) -> None:
        self._graphs: weakref.WeakSet = weakref.WeakSet()  # a graph dropped by LaunchGraphs leaves
        self._refused = 0

    def allows(self) -> bool:
        idle = sum(1 for g in self._graphs if g.replays < 2)
        if idle < max(IDLE_FLOOR, 2 * (len(self._graphs) - idle)):
            return True
        self._refused += 1
        return self._refused % PROBE_EVERY == 0

    def add(self, graph: _Captured) -> None:
        self._graphs.add(graph)


class RuntimeGraphs:
    """One runtime's graphs (see the module docstring). ``capture`` stands in for the CUDA capture in
    tests (a function of the launch returning something with ``replay()``, or None)."""

    def __init__(self, group, device: torch.device, native: bool, capture: Callable | None = None) -> None:
        self._group, self._device, self._native = group, device, native
        self._pool = None
        self._stream = None
        self._failed: str | None = None
        self._guard = _CaptureGuard()
        self._graphs = _compat.grpcoll.LaunchGraphs(capacity=CAPACITY, min_sightings=2, capture=capture or self._capture,
                                                    enabled=lambda: self._failed is None, totals=_totals)

    def run(self, key: tuple, launch: Callable[[], None]) -> None:
        """``launch()`` (which writes only tensors described in ``key``), eagerly or from a graph."""
        state = self._native_state()
        where = None if state is None else (state[0] % 2, state[1])
        self._graphs.run((key, where), launch, family=key)
        if len(self._graphs):  # used now: the last runtime to lose its graphs
            ref = _holders.get(id(self))
            if ref is not None and ref() is self:
                _holders.move_to_end(id(self))
            else:  # its first graph: room for its pool
                self._hold()

    def _hold(self) -> None:
        """Count this runtime among those keeping graphs; the least recently used beyond
        ``RUNTIMES_WITH_GRAPHS`` drop theirs."""
        _holders.pop(id(self), None)  # a dead runtime's entry under a reused id
        _holders[id(self)] = weakref.ref(self)
        while len(_holders) > RUNTIMES_WITH_GRAPHS:
            _, ref = _holders.popitem(last=False)
            older = ref()
            if older is not None and older is not self:
                older._drop(f"{RUNTIMES_WITH_GRAPHS} other runtimes used their graphs more recently")

    def _drop(self, why: str) -> None:
        """Free this runtime's graphs and their pool; its calls run eagerly from now on."""
        self._failed = why  # keeps the new LaunchGraphs below switched off, as a failed capture does
        self._graphs = _compat.grpcoll.LaunchGraphs(capacity=CAPACITY, enabled=lambda: self._failed is None,
                                                    totals=_totals)  # the old one's graphs die with it
        self._pool = None

    def _native_state(self) -> tuple[int, int] | None:
        """The group's (native call count, buffer generation), or None (no native calls)."""
        return _compat.grpcoll.native_call_state(self._group) if self._native else None

    def _native_calls(self) -> int:
        state = self._native_state()
        return 0 if state is None else state[0]

    def _capture(self, launch: Callable[[], None]):
        """A graph of ``launch()`` (recorded on a side stream into the runtime's pool, not run), or None
        (the call then runs eagerly)."""
        if not self._guard.allows():
            _totals["refused"] += 1
            return None
        started = time.perf_counter()
        before = self._native_calls()
        if self._pool is None or not len(self._graphs):  # a pool dies with its last graph
            self._pool = torch.cuda.graph_pool_handle()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self._device)
        current = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        error = None
        try:
            with torch.cuda.stream(self._stream):
                graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                try:
                    launch()
                finally:
                    graph.capture_end()
        except Exception as e:  # noqa: BLE001 - the call then runs eagerly
            error = e
        current.wait_stream(self._stream)
        held = self._native_calls() - before
        if self._native and held:
            _compat.grpcoll.set_native_call_count(self._group, before)  # the captured calls ran nothing
        if error is not None:
            self._failed = f"{type(error).__name__}: {error}"
            warnings.warn(f"magi_attention: capturing a calc_attn call into a CUDA graph failed ({self._failed}); "
                          "this runtime's calls run eagerly from now on (MAGI_ATTENTION_CUDA_GRAPHS=0 silences "
                          "this).", RuntimeWarning, stacklevel=4)
            return None
        captured = _Captured(graph, self._group, held)
        self._guard.add(captured)
        _totals["capture us"] += round((time.perf_counter() - started) * 1e6)
        return captured
