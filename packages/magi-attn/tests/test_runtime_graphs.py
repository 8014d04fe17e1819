"""Whole calc_attn calls from CUDA graphs (runtime/graphs.py, MAGI_ATTENTION_CUDA_GRAPHS), on CPU.

The captures themselves run on GPUs (test_gpu_dist.py, case ``fa4_native_cuda_graphs``). Here: the
runtime's graph path (outputs allocated before the call, results left in them) gives exactly what
the plain path gives, on 2 gloo ranks; and the bookkeeping of captures and replays (keys, the native
collectives' call count, a failed capture) with CUDA stood in for.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from magi_attention.testing.dist import run_distributed


class _EagerGraphs:
    """RuntimeGraphs' place in the runtime, running every call eagerly and noting its key."""

    def __init__(self):
        self.kinds, self.keys = [], []

    def run(self, key, launch):
        self.kinds.append(key[0])
        self.keys.append(key)
        launch()


def _graph_path_vs_plain(rank, world, mask, hide_tail):
    import os

    os.environ["MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE"] = "1" if hide_tail else "0"  # the key snapshots it
    from magi_attention.api import DistAttnConfig, OverlapConfig, calc_attn, dispatch, magi_attn_flex_key
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr

    T, h, d = 96, 2, 16
    cu = [0, 17, 58, 96]
    qr = [[a, b] for a, b in zip(cu, cu[1:])]
    kr, types = ([[0, T]] * 3, [0] * 3) if mask == "full" else (qr, [1] * 3)  # else varlen causal
    overlap = OverlapConfig(degree=3 if mask == "full" else 1, min_chunk_size=8, max_num_chunks=64)
    key = magi_attn_flex_key(qr, kr, types, T, T, h, h, d, 0, 8, torch.distributed.group.WORLD,
                             DistAttnConfig(overlap_config=overlap))
    runtime = dist_attn_runtime_dict_mgr.get_mgr(key).runtime
    assert runtime.save_tail == hide_tail
    torch.manual_seed(0)
    # bf16: with three or more calls reaching a row, out / dq accumulate in fp32 and are copied
    # into the given outputs at the end; with fewer, they are the given outputs
    q, k, v, do = (torch.randn(T, h, d).to(torch.bfloat16) for _ in range(4))
    lq, lk, lv, ldo = (dispatch(x, key) for x in (q, k, v, do))

    def step():
        xs = [t.detach().clone().requires_grad_() for t in (lq, lk, lv)]
        out, meta = calc_attn(*xs, key)
        out.backward(ldo)
        return [out.detach(), meta.lse, *(x.grad for x in xs)]

    plain = step()
    graphs = runtime.graphs = _EagerGraphs()
    for _ in range(2):
        for got, want in zip(step(), plain):
            assert got.dtype == want.dtype and torch.equal(got, want)
    assert graphs.kinds == ["fwd", "bwd"] * 2, graphs.kinds
    # a kept tail is made outside the graph and named by both keys: the forward writes it, the
    # backward reads it (a key without it would replay into, or read, another step's buffer)
    fwd_key, bwd_key = graphs.keys[-2:]
    assert len(fwd_key) == 3 + 5 + hide_tail and len(bwd_key) == 3 + 8 + hide_tail, (fwd_key, bwd_key)
    if hide_tail:
        assert fwd_key[-1] == bwd_key[-3]  # the same buffer: written by the forward, read by the backward
    return runtime.contributors


@pytest.mark.parametrize("mask,hide_tail", [("full", False), ("varlen_causal", False), ("full", True),
                                            ("varlen_causal", True)])
def test_the_graph_path_gives_what_the_plain_path_gives(mask, hide_tail):
    contributors = run_distributed(_graph_path_vs_plain, 2, mask, hide_tail, timeout=180)
    # full, three stages: more than two calls reach some rows (accumulated in fp32, then copied into
    # the given outputs); varlen causal, one stage: at most two (the given outputs written directly)
    assert (max(contributors) >= 3) == (mask == "full"), contributors


# ------------------------------------------------------------------------ bookkeeping, CUDA faked
class _FakeGraph:
    """torch.cuda.CUDAGraph's part in a capture: the launch runs (recorded), a replay runs nothing."""

    made: list = []
    capturing = False

    def __init__(self):
        self.replays = 0
        type(self).made.append(self)

    def capture_begin(self, pool=None, capture_error_mode=None):
        type(self).capturing = True

    def capture_end(self):
        type(self).capturing = False

    def replay(self):
        self.replays += 1


class _Stream:
    def wait_stream(self, other):
        pass


@pytest.fixture
def cuda_faked(monkeypatch):
    import magi_grpcoll
    from magi_attention import _compat

    _FakeGraph.made, _FakeGraph.capturing = [], False
    for name, value in (("CUDAGraph", _FakeGraph), ("Stream", lambda device=None: _Stream()),
                        ("current_stream", lambda device=None: _Stream()),
                        ("stream", lambda s: contextlib.nullcontext()), ("graph_pool_handle", object),
                        ("is_current_stream_capturing", lambda: _FakeGraph.capturing)):
        monkeypatch.setattr(torch.cuda, name, value)
    state = {"calls": None, "gen": 5}  # the native collectives' state of the group
    monkeypatch.setattr(magi_grpcoll, "native_call_state",
                        lambda group: None if state["calls"] is None else (state["calls"], state["gen"]))
    monkeypatch.setattr(magi_grpcoll, "set_native_call_count", lambda group, n: state.update(calls=n))
    monkeypatch.setattr(_compat, "grpcoll", magi_grpcoll)
    from collections import OrderedDict

    from magi_attention.runtime import graphs

    monkeypatch.setattr(graphs, "_holders", OrderedDict())  # no other test's runtimes among those keeping graphs
    return state


def test_captured_on_the_second_sighting_replayed_after_with_the_native_count_moved_on(cuda_faked):
    from magi_attention.runtime import graphs

    state, ran = cuda_faked, []

    def launch():  # a layer's call: two native calls
        ran.append(1)
        state["calls"] = (state["calls"] or 0) + 2

    before = graphs.stats()
    rg = graphs.RuntimeGraphs(group=None, device=torch.device("cpu"), native=True)
    rg.run(("fwd", 1), launch)  # first sighting: eager
    assert len(ran) == 1 and state["calls"] == 2 and not _FakeGraph.made
    rg.run(("fwd", 1), launch)  # second: captured (the launch runs into the capture), then replayed
    assert len(ran) == 2 and len(_FakeGraph.made) == 1 and _FakeGraph.made[0].replays == 1
    assert state["calls"] == 4  # set back after the capture, moved on by the replay
    rg.run(("fwd", 1), launch)  # third: replayed only
    assert len(ran) == 2 and _FakeGraph.made[0].replays == 2 and state["calls"] == 6
    state["calls"] = 7  # another call's parity: another key of the family, captured at once
    rg.run(("fwd", 1), launch)
    assert len(_FakeGraph.made) == 2 and state["calls"] == 9
    state["gen"] = 6  # the shared buffer was replaced: the old graphs' halves are gone
    rg.run(("fwd", 1), launch)
    assert len(_FakeGraph.made) == 3
    after = graphs.stats()
    assert after["captures"] - before["captures"] == 3 and after["eager"] - before["eager"] == 1


def test_a_failed_capture_runs_the_call_eagerly_and_turns_graphs_off(cuda_faked):
    from magi_attention.runtime import graphs

    state, ran = cuda_faked, []

    def launch():
        ran.append(1)
        state["calls"] = (state["calls"] or 0) + 1
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("not capturable")

    rg = graphs.RuntimeGraphs(group=None, device=torch.device("cpu"), native=True)
    rg.run(("bwd",), launch)
    with pytest.warns(RuntimeWarning, match="capturing a calc_attn call"):
        rg.run(("bwd",), launch)
    # the capture failed after one native call: the count is set back, then the eager call adds its own
    assert state["calls"] == 2 and len(ran) == 3
    rg.run(("bwd",), launch)
    assert len(ran) == 4 and state["calls"] == 3 and len(_FakeGraph.made) == 1


def test_graphs_asked_for_where_they_cannot_run_say_why_once(monkeypatch):
    from types import SimpleNamespace

    from magi_attention.runtime import graphs

    monkeypatch.setattr(graphs, "_warned", set())
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    native = SimpleNamespace(cuda_graphs="1", native_grpcoll=True, fa4_backend=False, sdpa_backend=False)
    a2av = SimpleNamespace(cuda_graphs="1", native_grpcoll=False, fa4_backend=False, sdpa_backend=False)
    assert graphs.unusable_reason(native, cuda, 2) is None
    assert graphs.unusable_reason(a2av, cuda, 0) is None  # no remote stage: nothing to capture but kernels
    assert "CUDA" in graphs.unusable_reason(native, cpu, 2)
    assert "NATIVE_GRPCOLL" in graphs.unusable_reason(a2av, cuda, 2)
    monkeypatch.setattr(graphs, "graphs_supported", lambda: False)
    assert "interface 1.4" in graphs.unusable_reason(native, cuda, 2)
    assert graphs.make_runtime_graphs(SimpleNamespace(cuda_graphs="0"), None, cpu, 2) is None
    with pytest.warns(RuntimeWarning, match="MAGI_ATTENTION_CUDA_GRAPHS=1 is ignored here: the runtime runs on cpu"):
        assert graphs.make_runtime_graphs(native, None, cpu, 2) is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason again: no second warning
        assert graphs.make_runtime_graphs(native, None, cpu, 2) is None


def test_auto_uses_graphs_only_where_checked_on_gpus_and_says_nothing(monkeypatch):
    import warnings
    from types import SimpleNamespace

    from magi_attention.runtime import graphs

    monkeypatch.setattr(graphs, "_warned", set())
    monkeypatch.setattr(graphs, "RuntimeGraphs", lambda group, device, native: ("graphs", native))
    monkeypatch.setattr(graphs, "graphs_supported", lambda: True)
    monkeypatch.delenv("MAGI_ATTENTION_KERNEL_BACKEND", raising=False)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")

    def flags(mode, fa4, native, sdpa=False):
        return SimpleNamespace(cuda_graphs=mode, fa4_backend=fa4, native_grpcoll=native, sdpa_backend=sdpa)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert graphs.make_runtime_graphs(flags("auto", True, True), None, cuda, 2) == ("graphs", True)
        assert graphs.make_runtime_graphs(flags("auto", True, False), None, cuda, 0) == ("graphs", False)
        assert graphs.make_runtime_graphs(flags("auto", False, True), None, cuda, 2) == ("graphs", True)
        assert graphs.make_runtime_graphs(flags("auto", True, False), None, cuda, 2) is None  # a2av
        assert graphs.make_runtime_graphs(flags("auto", True, True), None, cpu, 2) is None
        assert graphs.make_runtime_graphs(flags("auto", False, True, sdpa=True), None, cuda, 2) is None
        monkeypatch.setenv("MAGI_ATTENTION_KERNEL_BACKEND", "torch")  # the reference kernels: not checked
        assert graphs.make_runtime_graphs(flags("auto", False, True), None, cuda, 2) is None
        assert graphs.make_runtime_graphs(flags("auto", True, True), None, cuda, 2) == ("graphs", True)
    # 1 asks for them with any kernels and says why where they cannot run
    assert graphs.make_runtime_graphs(flags("1", False, True), None, cuda, 2) == ("graphs", True)
    with pytest.warns(RuntimeWarning, match="NATIVE_GRPCOLL"):
        assert graphs.make_runtime_graphs(flags("1", True, False), None, cuda, 2) is None


def _layer_launch(state, ran):
    def launch():  # a layer's call: one native call
        ran.append(1)
        state["calls"] = (state["calls"] or 0) + 1
    return launch


def test_keys_that_recur_are_all_captured_within_a_few_steps(cuda_faked):
    from magi_attention.runtime import graphs

    state, ran = cuda_faked, []
    rg = graphs.RuntimeGraphs(group=None, device=torch.device("cpu"), native=False)
    layers = 3 * graphs.IDLE_FLOOR
    launch = _layer_launch(state, ran)
    per_step = []
    for _ in range(5):
        made = len(_FakeGraph.made)
        for layer in range(layers):
            rg.run(("fwd", layer), launch)
        per_step.append(len(_FakeGraph.made) - made)
    # step 1 eager; step 2 up to the floor; step 3 the rest (twice the replayed ones); then replays only
    assert per_step == [0, graphs.IDLE_FLOOR, layers - graphs.IDLE_FLOOR, 0, 0], per_step
    ran.clear()
    for layer in range(layers):
        rg.run(("fwd", layer), launch)
    assert not ran  # every layer replayed


def test_keys_seen_twice_and_never_again_stop_the_captures(cuda_faked):
    from magi_attention.runtime import graphs

    state, ran = cuda_faked, []
    rg = graphs.RuntimeGraphs(group=None, device=torch.device("cpu"), native=False)
    launch = _layer_launch(state, ran)
    before = graphs.stats()
    wandering = 20 * graphs.PROBE_EVERY
    for address in range(wandering):  # every key comes back once (its second sighting), then never
        rg.run(("fwd", address), launch)
        rg.run(("fwd", address), launch)
    after = graphs.stats()
    captures, refused = (after[k] - before[k] for k in ("captures", "refused"))
    # the floor, then one probe per PROBE_EVERY refusals: a wandering runtime pays few captures
    assert captures == graphs.IDLE_FLOOR + refused // (graphs.PROBE_EVERY - 1), (captures, refused)
    assert captures + refused == wandering and captures < wandering // 10
    assert len(ran) == 2 * wandering  # every call ran (eagerly or as its capture's first replay)
    assert after["capture us"] >= before["capture us"]


def test_only_the_most_recently_used_runtimes_keep_their_graphs(cuda_faked, monkeypatch):
    from magi_attention.runtime import graphs

    monkeypatch.setattr(graphs, "RUNTIMES_WITH_GRAPHS", 2)
    state, ran = cuda_faked, []
    launch = _layer_launch(state, ran)
    a, b, c = (graphs.RuntimeGraphs(group=None, device=torch.device("cpu"), native=False) for _ in range(3))
    for rg in (a, b):  # each captures its call on the second sighting
        rg.run(("fwd",), launch)
        rg.run(("fwd",), launch)
    assert len(_FakeGraph.made) == 2
    a.run(("fwd",), launch)  # a replays: now b is the least recently used
    ran.clear()
    c.run(("fwd",), launch)
    c.run(("fwd",), launch)  # c's first graph: b drops its graphs
    assert len(_FakeGraph.made) == 3 and len(b._graphs) == 0 and len(a._graphs) == 1
    ran.clear()
    for _ in range(3):
        for rg in (a, b, c):
            rg.run(("fwd",), launch)
    assert len(ran) == 3  # only b ran its launches, eagerly, and never captured again
    assert len(_FakeGraph.made) == 3 and len(b._graphs) == 0
