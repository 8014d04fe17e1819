"""The native implementation's symmetric buffers: two alternating halves, grown collectively, and a
replaced buffer released at once because every rank waited for its device before the rendezvous
(symmetric memory and the device sync faked on CPU)."""

from __future__ import annotations

import gc
import weakref

import torch
from magi_grpcoll.impl import native


class _Handle:
    buffer_ptrs_dev = 0


def _fake_symmetric_memory(monkeypatch, calls: list):
    import torch.distributed._symmetric_memory as symm_mem

    def empty(n, dtype, device):
        calls.append("empty")
        return torch.empty(n, dtype=dtype)

    def rendezvous(buf, group):
        calls.append("rendezvous")
        return _Handle()

    monkeypatch.setattr(symm_mem, "empty", empty)
    monkeypatch.setattr(symm_mem, "rendezvous", rendezvous)
    monkeypatch.setattr(symm_mem, "enable_symm_mem_for_group", lambda name: None, raising=False)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))


def test_halves_alternate_and_growth_syncs_before_the_rendezvous(monkeypatch):
    calls: list = []
    _fake_symmetric_memory(monkeypatch, calls)
    group = type("G", (), {"group_name": "g"})()
    bufs = native._Buffers()
    first, _, _, off0, gen0 = bufs.half(group, 100, "cuda:0")
    _, _, _, off1, gen1 = bufs.half(group, 100, "cuda:0")
    assert off0 == 0 and off1 == 1 << 20  # two halves of 1 MiB, used alternately
    assert gen0 == gen1  # the same buffer: graphs keyed by it stay valid
    assert calls == ["empty", "rendezvous"]  # the first buffer replaces nothing: no sync
    old = weakref.ref(first)
    del first
    calls.clear()
    bigger, _, _, off2, gen2 = bufs.half(group, 3 << 20, "cuda:0")  # grows
    assert calls == ["sync", "empty", "rendezvous"]  # queued work done before any rank maps anew
    assert bigger.numel() == 2 * (3 << 20) and off2 == 0
    assert gen2 != gen0  # graphs of the old buffer can never be replayed on the new one
    gc.collect()
    assert old() is None  # released at once: no rank can still touch it
    calls.clear()
    bufs.half(group, 100, "cuda:0")  # fits: no growth, no sync
    assert calls == []


def test_growth_on_cpu_tensors_needs_no_device_sync(monkeypatch):
    calls: list = []
    _fake_symmetric_memory(monkeypatch, calls)
    bufs = native._Buffers()
    group = type("G", (), {"group_name": "g"})()
    bufs.half(group, 100, "cpu")
    bufs.half(group, 3 << 20, "cpu")
    assert "sync" not in calls and calls.count("rendezvous") == 2


def test_a_held_group_refuses_its_next_call_until_released(monkeypatch):
    """A reduce folding at its wait holds its half: another call on the group would hand the same
    half out again two calls later, under rows still to be folded."""
    import pytest

    _fake_symmetric_memory(monkeypatch, [])
    bufs = native._Buffers()
    group, other = (type("G", (), {"group_name": n})() for n in ("g", "h"))
    _, _, _, off0, _ = bufs.half(group, 100, "cpu")
    bufs.hold(group)
    with pytest.raises(RuntimeError, match="fold_at_wait=True.*not been waited"):
        bufs.half(group, 100, "cpu")
    bufs.half(other, 100, "cpu")  # another group's buffer is not held
    bufs.release(group)
    _, _, _, off1, _ = bufs.half(group, 100, "cpu")
    assert off1 != off0  # the refused call took no half: the next one alternates as usual


def test_copy_engine_pushes_land_in_each_peers_region_and_the_local_rows_in_out():
    """The copy-engine push shared by casts and fold-at-wait reduces, on CPU tensors: each run goes to
    its peer's region (rows of the source's byte size, at the region's byte offset), or to ``out``."""
    src = torch.arange(5 * 3, dtype=torch.float32).view(5, 3)  # 12-byte rows
    peer_bufs = {1: torch.zeros(64, dtype=torch.uint8), 2: torch.zeros(64, dtype=torch.uint8)}

    class Handle:
        def get_buffer(self, peer, shape, dtype, offset):
            n = shape[0] * shape[1]
            return peer_bufs[peer][offset:offset + n].view(dtype).view(shape)

    out = torch.zeros(2, 12, dtype=torch.uint8)
    runs = [(0, 1, 2, 1), (2, 0, 1, 2), (3, 0, 2, -1)]  # (src row, dst row, rows, peer or -1: local)
    native._push_by_copy_engines(Handle(), src, runs, out, region_rows=3, region_off=16)
    as_rows = lambda b: b.view(torch.float32).view(-1, 3)  # noqa: E731
    assert torch.equal(as_rows(peer_bufs[1][16 + 12:16 + 36]), src[0:2])
    assert torch.equal(as_rows(peer_bufs[2][16:16 + 12]), src[2:3])
    assert torch.equal(as_rows(out.flatten()), src[3:5])
    assert not peer_bufs[1][:16 + 12].any() and not peer_bufs[2][16 + 12:].any()  # nothing else written
