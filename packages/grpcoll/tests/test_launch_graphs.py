"""When a native op replays a CUDA graph instead of launching eagerly (graphs faked on CPU; the GPU
test ``test_native_graph_replays_match_eager`` checks real captures against eager results)."""

from __future__ import annotations

import pytest
import torch
from magi_grpcoll.impl import _graphs
from magi_grpcoll.impl._graphs import LaunchGraphs


class _Graph:
    """A captured launch function: replay runs it again (as a real graph re-issues the kernels)."""

    def __init__(self, launch):
        self.launch = launch

    def replay(self):
        self.launch()


@pytest.fixture
def cuda_faked(monkeypatch):
    """Not inside a caller's capture; graphs enabled."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.delenv("MAGI_GRPCOLL_CUDA_GRAPHS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(_graphs, "_disabled_reason", [])


def _recording(calls, tag):
    return lambda: calls.append(tag)


def test_a_key_is_captured_on_its_second_sighting_and_replayed_after(cuda_faked):
    captured = []

    def capture(launch):
        captured.append(launch)
        return _Graph(launch)

    graphs, calls = LaunchGraphs(capture=capture), []
    before = _graphs.graph_stats()
    graphs.run("a", _recording(calls, "a1"))  # first sighting: eager, nothing captured
    assert calls == ["a1"] and graphs.captures == 0 and graphs.replays == 0
    graphs.run("b", _recording(calls, "b1"))  # another key does not count for "a"
    graphs.run("a", _recording(calls, "a2"))  # second: captured, then replayed once (the call's work)
    assert calls == ["a1", "b1", "a2"] and len(captured) == 1 and graphs.captures == 1 and graphs.replays == 1
    graphs.run("a", _recording(calls, "never"))  # later: the graph, not the new launch function
    assert calls[-1] == "a2" and graphs.replays == 2 and graphs.captures == 1
    after = _graphs.graph_stats()  # the process-wide counts the benchmarks print
    assert {k: after[k] - before[k] for k in after} == {"replays": 2, "captures": 1, "eager": 2}


def test_a_native_binding_does_not_capture_what_one_step_sees_twice(cuda_faked):
    """A plan used for one step only (a new mask every step) casts K/V in the forward and again in the
    backward, often at the same addresses: two sightings must not pay a capture that replays once.
    A plan that comes back (the next step's) is captured then."""
    from magi_grpcoll.impl.native import _Binding

    binding, calls = _Binding({}, (0,), torch.device("cpu")), []
    binding.graphs._capture = _Graph
    for tag in ("forward", "backward"):
        binding.graphs.run("cast", _recording(calls, tag))
    assert calls == ["forward", "backward"] and binding.graphs.captures == 0
    binding.graphs.run("cast", _recording(calls, "next step"))
    assert calls[-1] == "next step" and binding.graphs.captures == 1 and binding.graphs.replays == 1


def test_least_recently_used_graphs_are_dropped_and_not_captured_again(cuda_faked):
    graphs = LaunchGraphs(capacity=2, min_sightings=1, capture=_Graph)
    calls = []
    for key in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        graphs.run(key, _recording(calls, key))
    assert list(graphs._graphs) == ["a", "c"] and graphs.captures == 3
    graphs.run("b", _recording(calls, "b-again"))  # dropped once: eager from now on, no re-capture
    graphs.run("b", _recording(calls, "b-third"))
    assert calls[-2:] == ["b-again", "b-third"] and graphs.captures == 3 and list(graphs._graphs) == ["a", "c"]


def test_more_layers_than_capacity_never_capture_on_every_step(cuda_faked):
    """A model whose per-layer keys outnumber the graphs kept: after warm-up, every step replays the
    graphs it kept and launches the rest eagerly; no step captures again (a capture costs more host
    time than the launches it saves)."""
    graphs, layers = LaunchGraphs(capacity=4, capture=_Graph), [f"layer{i}" for i in range(6)]
    for _ in range(3):  # warm-up: seen, captured, evicted in turn
        for key in layers:
            graphs.run(key, lambda: None)
    before = (graphs.captures, graphs.replays)
    for _ in range(4):
        for key in layers:
            graphs.run(key, lambda: None)
    assert graphs.captures == before[0], "steady state re-captured graphs"
    assert graphs.replays > before[1]


def test_both_halves_of_a_family_are_captured_once_the_family_was_seen_twice(cuda_faked):
    """An odd number of native calls per step alternates each call's buffer half between steps: the
    family (the key without the half) counts the sightings, so step 2 captures one half, step 3 the
    other, and step 4 replays."""
    graphs, calls = LaunchGraphs(capture=_Graph), []
    for step, half in enumerate((0, 1, 0, 1, 0), start=1):
        graphs.run(("cast", half), _recording(calls, step), family="cast")
    assert calls == [1, 2, 3, 2, 3] and graphs.captures == 2 and graphs.replays == 4


@pytest.mark.parametrize("raw", ["0", "-3", "many"])
def test_a_bad_graph_capacity_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("MAGI_GRPCOLL_GRAPH_CAPACITY", raw)
    with pytest.raises(ValueError, match="MAGI_GRPCOLL_GRAPH_CAPACITY"):
        LaunchGraphs()
    monkeypatch.setenv("MAGI_GRPCOLL_GRAPH_CAPACITY", "3")
    assert LaunchGraphs()._capacity == 3


def test_no_graphs_when_switched_off_inside_a_capture_or_after_a_failed_capture(cuda_faked, monkeypatch):
    def never(launch):
        raise AssertionError("must not capture")

    calls = []
    monkeypatch.setenv("MAGI_GRPCOLL_CUDA_GRAPHS", "0")
    graphs = LaunchGraphs(min_sightings=1, capture=never)
    graphs.run("a", _recording(calls, 1))
    monkeypatch.setenv("MAGI_GRPCOLL_CUDA_GRAPHS", "1")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)  # the caller captures
    graphs.run("a", _recording(calls, 2))
    assert calls == [1, 2]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(_graphs, "_disabled_reason", ["an earlier capture failed"])
    graphs.run("a", _recording(calls, 3))
    assert calls == [1, 2, 3] and graphs.captures == 0


class _CaptureRecorder:
    """Stands in for torch.cuda.CUDAGraph: records that the capture was ended; ``end_error``, when
    set, is what ending it raises."""

    ended: list = []
    end_error: Exception | None = None

    def capture_begin(self, pool=None, capture_error_mode=None):
        pass

    def capture_end(self):
        type(self).ended.append(True)  # always ended, so the stream leaves capture mode
        if self.end_error is not None:
            raise self.end_error


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setattr(_CaptureRecorder, "ended", [])
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _CaptureRecorder)
    return _CaptureRecorder


def test_a_failed_capture_runs_the_call_eagerly_and_turns_graphs_off(cuda_faked, recorder, monkeypatch):
    monkeypatch.setattr(recorder, "end_error", RuntimeError("operation not permitted when stream is capturing"))
    graphs, calls = LaunchGraphs(min_sightings=1), []
    with pytest.warns(RuntimeWarning, match="launch eagerly"):
        graphs.run("a", _recording(calls, "x"))
    # the launch ran once into the (failed) capture, then once for real
    assert calls == ["x", "x"] and recorder.ended == [True] and graphs.captures == 0
    assert not _graphs.graphs_enabled()


def test_a_launch_failing_inside_the_capture_still_ends_it(cuda_faked, recorder):
    def launch():
        raise RuntimeError("a launch failed")

    with pytest.warns(RuntimeWarning, match="a launch failed"):
        assert _graphs._capture(launch) is None
    assert recorder.ended == [True] and not _graphs.graphs_enabled()


def test_a_caller_gives_its_own_switch_and_totals(cuda_faked, monkeypatch):
    """LaunchGraphs for a caller's own launches (interface 1.4): its switch, not the native ops'
    environment variable, decides, and its counts go to its totals, not to graph_stats()."""
    import magi_grpcoll

    assert magi_grpcoll.LaunchGraphs is LaunchGraphs
    monkeypatch.setenv("MAGI_GRPCOLL_CUDA_GRAPHS", "0")  # the native ops' switch: not this caller's
    on, totals, calls = [True], {"replays": 0, "captures": 0, "eager": 0}, []
    before = _graphs.graph_stats()
    graphs = LaunchGraphs(capture=_Graph, enabled=lambda: on[0], totals=totals)
    for step in range(1, 4):
        graphs.run("layer", _recording(calls, step))
    assert calls == [1, 2, 2] and totals == {"replays": 2, "captures": 1, "eager": 1}
    on[0] = False
    graphs.run("layer", _recording(calls, 4))
    assert calls == [1, 2, 2, 4] and totals["eager"] == 2
    assert _graphs.graph_stats() == before


def test_native_call_state_counts_and_is_set_back(monkeypatch):
    """The native calls' count per group (their buffer halves alternate by it) and the buffer's
    generation, read and set for callers that capture native calls into their own graphs."""
    from magi_grpcoll import native_call_state, set_native_call_count
    from magi_grpcoll.impl import native

    buffers = native._Buffers()
    monkeypatch.setattr(native._NATIVE, "_buffers", buffers)
    group = object()
    assert native_call_state(group) is None
    with pytest.raises(RuntimeError, match="no native call"):
        set_native_call_count(group, 3)
    buffers._by_group[native._group_key(group)] = {"buf": None, "hdl": None, "half": 1 << 20, "calls": 0,
                                                   "peer_bufs": None, "gen": 7}
    for parity in (0, 1, 0):
        assert buffers.half(group, 16, "cpu")[3] == parity * (1 << 20)
    assert native_call_state(group) == (3, 7)
    set_native_call_count(group, 1)  # back to before a capture of two calls
    assert native_call_state(group) == (1, 7) and buffers.half(group, 16, "cpu")[3] == 1 << 20
