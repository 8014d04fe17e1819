"""The native ops' pending work: with ``RECORD_STREAMS`` off it holds the op's tensors until the
wait, and a work dropped before its wait marks them used on the comm stream (so the caching allocator
still waits for the op before reusing their memory). Streams, events and tensors faked on CPU."""

from __future__ import annotations

import gc

from magi_grpcoll.impl import native


class _Stream:
    def __init__(self) -> None:
        self.waited: list = []

    def wait_event(self, ev) -> None:
        self.waited.append(ev)


class _Tensor:
    def __init__(self) -> None:
        self.recorded: list = []

    def record_stream(self, stream) -> None:
        self.recorded.append(stream)


def test_a_waited_work_lets_go_of_its_tensors_unmarked(monkeypatch):
    current, comm, ev = _Stream(), object(), object()
    monkeypatch.setattr(native, "_current_stream", lambda device: current)
    ts = (_Tensor(), _Tensor())
    work = native._StreamWork(ev, "cuda:0", comm, ts)
    work.wait()
    assert current.waited == [ev]  # the waiting stream is ordered after the op
    del work
    gc.collect()
    assert all(t.recorded == [] for t in ts)  # freed after the wait: reuse is stream-ordered


def test_a_work_dropped_before_its_wait_marks_its_tensors(monkeypatch):
    comm = object()
    ts = (_Tensor(), _Tensor())
    work = native._StreamWork(object(), "cuda:0", comm, ts)
    del work
    gc.collect()
    assert all(t.recorded == [comm] for t in ts)
    # nothing held (RECORD_STREAMS on: the op marked them itself): nothing to do when dropped
    native._StreamWork(object(), "cuda:0", comm).__del__()


class _DeviceTensor(_Tensor):
    is_cuda = True
    device = "cuda:0"


def test_a_bindings_tables_and_fold_sources_are_marked_used_on_the_comm_stream(monkeypatch):
    """A binding dies with its plan, which can happen while its calls are queued (a transposed plan
    made for one call): its device tensors must already be marked, so their memory waits for them."""
    comm = object()
    monkeypatch.setattr(native, "_comm_stream", lambda device: comm)
    made: list = []

    def build_chunks(*args):
        made.append(_DeviceTensor())
        return made[-1]

    monkeypatch.setattr(native, "build_chunks", build_chunks)
    sources = (_DeviceTensor(), _DeviceTensor(), _Tensor())  # a host tensor is left alone
    b = native._Binding({"push": (None, None, None)}, (4,), "cuda:0", sources=sources)
    assert [t.recorded for t in sources] == [[comm], [comm], []]
    t = b.table("push", 64)
    assert t is made[0] and t.recorded == [comm]
    assert b.table("push", 64) is t and t.recorded == [comm]  # looked up again: marked once


class _CommStream(_Stream):
    def wait_stream(self, other) -> None:
        self.waited.append(other)


class _Event:
    def record(self, stream) -> None:
        self.stream = stream


def _issue(monkeypatch, record):
    """One op through ``_on_comm_stream`` with streams, events and tensors faked."""
    import contextlib

    import torch

    current, comm = _CommStream(), _CommStream()
    monkeypatch.setattr(native, "_current_stream", lambda device: current)
    monkeypatch.setattr(native, "_comm_stream", lambda device: comm)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: None)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    ran, ts = [], (_DeviceTensor(), _DeviceTensor())
    work = native._on_comm_stream(torch.device("cpu"), [*ts, None], lambda: ran.append(1), record)
    assert ran == [1] and comm.waited == [current]  # after the current stream's work
    return work, comm, ts


def test_a_call_may_hold_its_tensors_whatever_the_module_switch_says(monkeypatch):
    monkeypatch.setattr(native, "RECORD_STREAMS", True)
    work, comm, ts = _issue(monkeypatch, record=False)  # the call's record_streams=False wins
    assert all(t.recorded == [] for t in ts) and work._held == ts
    work.wait()
    assert work._held == ()
    work, comm, ts = _issue(monkeypatch, record=None)  # not given: the switch
    assert all(t.recorded == [comm] for t in ts) and work._held == ()
    monkeypatch.setattr(native, "RECORD_STREAMS", False)
    work, comm, ts = _issue(monkeypatch, record=True)
    assert all(t.recorded == [comm] for t in ts) and work._held == ()
