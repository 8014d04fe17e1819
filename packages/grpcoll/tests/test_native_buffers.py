"""The native implementation's symmetric buffers: grown collectively, replaced ones released only
once the call that replaced them has completed (symmetric memory and CUDA events faked on CPU)."""

from __future__ import annotations

import torch
from magi_grpcoll.impl import native


class _Handle:
    buffer_ptrs_dev = 0


class _FakeSymmMem:
    def empty(self, n, dtype, device):
        return torch.empty(n, dtype=dtype)

    def rendezvous(self, buf, group):
        return _Handle()


class _Event:
    def __init__(self):
        self.done = False

    def query(self):
        return self.done


def test_replaced_buffers_are_released_after_the_replacing_call_completes(monkeypatch):
    import torch.distributed._symmetric_memory as symm_mem

    fake = _FakeSymmMem()
    monkeypatch.setattr(symm_mem, "empty", fake.empty)
    monkeypatch.setattr(symm_mem, "rendezvous", fake.rendezvous)
    monkeypatch.setattr(symm_mem, "enable_symm_mem_for_group", lambda name: None, raising=False)
    group = type("G", (), {"group_name": "g"})()
    bufs = native._Buffers()
    first, _, _, off0, gen0 = bufs.half(group, 100, "cpu")
    _, _, _, off1, gen1 = bufs.half(group, 100, "cpu")
    assert off0 == 0 and off1 == 1 << 20  # two halves of 1 MiB, used alternately
    assert gen0 == gen1  # the same buffer: graphs keyed by it stay valid
    bufs.settle(_Event())  # no buffer replaced by this call: nothing to hold
    assert bufs._retired == []
    bigger, _, _, _, gen2 = bufs.half(group, 3 << 20, "cpu")  # grows: the old buffer is retired
    assert bigger.numel() == 2 * (3 << 20) and len(bufs._retired) == 1
    assert gen2 != gen0  # graphs of the old buffer can never be replayed on the new one
    replacing = _Event()
    bufs.settle(replacing)
    later = _Event()
    bufs.half(group, 100, "cpu")  # the replacing call is still running: keep the old buffer
    bufs.settle(later)
    assert len(bufs._retired) == 1 and bufs._retired[0][0]["buf"] is first and bufs._retired[0][1] is replacing
    replacing.done = True
    bufs.half(group, 100, "cpu")
    assert bufs._retired == []
