"""The persistent varlen forward's plumbing on CPU (backends/fa4/persistent.py): the source edits of
FA4's Hopper forward, when the persistent kernel is used, and the swap of FA4's kernel class and
compile cache around a call, through the FA4 stand-in. The kernel itself is tested on the GPU
(test_gpu_fa4.py: bit for bit FA4's own kernel, and float64)."""

from __future__ import annotations

import types

import _fake_fa4
import pytest
import torch
from magi_ffa import flex_flash_attn_func
from magi_ffa.backends.fa4 import persistent, replay
from magi_ffa.backends.fa4.native import NativeMask
from magi_ffa.testing import ref_attn_dense

# a stand-in for FA4's flash_fwd_sm90.py: every anchor once, between unrelated lines
SOURCE = "".join(f"line {i}\n{anchor}" for i, (_, anchor, _) in enumerate(persistent.EDITS)) + "tail\n"


def test_patch_source_applies_every_edit_once():
    patched = persistent.patch_source(SOURCE)
    for what, anchor, replacement in persistent.EDITS:
        assert anchor not in patched, what
        assert patched.count(replacement) == 1, what
    assert patched.startswith("line 0\n") and patched.endswith("tail\n")


@pytest.mark.parametrize("index", range(len(persistent.EDITS)))
@pytest.mark.parametrize("times", [0, 2])
def test_patch_source_refuses_an_anchor_missing_or_repeated(index, times):
    what, anchor, _ = persistent.EDITS[index]
    text = SOURCE.replace(anchor, anchor * times)
    with pytest.raises(persistent.PatchError, match=f"'{what}' occurs {times} times"):
        persistent.patch_source(text)


VARLEN = NativeMask(causal=True, cu_seqlens_q=torch.tensor([0, 5, 9], dtype=torch.int32))


@pytest.mark.parametrize("env,native,head_dim,arch,expected", [
    ("1", VARLEN, 128, 90, True),
    ("1", VARLEN, 64, 90, True),
    ("0", VARLEN, 128, 90, False),  # off
    (None, VARLEN, 128, 90, False),  # off by default
    ("1", NativeMask(causal=True), 128, 90, False),  # one sequence: FA4's batch path
    ("1", None, 128, 90, False),  # block lists
    ("1", VARLEN, 256, 90, False),  # no room for a separate sO
    ("1", VARLEN, 128, 100, False),  # Blackwell runs another kernel
])
def test_applies(monkeypatch, env, native, head_dim, arch, expected):
    if env is None:
        monkeypatch.delenv(persistent.ENV, raising=False)
    else:
        monkeypatch.setenv(persistent.ENV, env)
    assert persistent.applies(native, head_dim, arch) is expected


def test_a_bad_switch_value_is_named(monkeypatch):
    monkeypatch.setenv(persistent.ENV, "yes")
    with pytest.raises(ValueError, match=persistent.ENV):
        persistent.enabled()


class _Kernel:
    """Stands for the patched module's FlashAttentionForwardSm90."""


def _fake_iface():
    def _flash_attn_fwd():
        pass

    _flash_attn_fwd.compile_cache = "fa4's cache"
    return types.SimpleNamespace(FlashAttentionForwardSm90="fa4's kernel", _flash_attn_fwd=_flash_attn_fwd)


@pytest.fixture
def patched(monkeypatch):
    """persistent.py's patched module and compile cache replaced by stand-ins; its counts restored."""
    cache = _fake_fa4._JITCache()
    monkeypatch.setattr(persistent, "_patched_module", lambda: (types.SimpleNamespace(FlashAttentionForwardSm90=_Kernel), "d"))
    monkeypatch.setattr(persistent, "_compile_cache", lambda digest: cache)
    monkeypatch.setattr(persistent, "_counts", {"calls": 0, "fallbacks": 0})
    return cache


def test_forward_kernel_swaps_and_puts_back(patched):
    iface = _fake_iface()
    with persistent.forward_kernel(iface, watched=lambda c: ("watched", c)):
        assert iface.FlashAttentionForwardSm90 is _Kernel
        assert iface._flash_attn_fwd.compile_cache == ("watched", patched)
    assert (iface.FlashAttentionForwardSm90, iface._flash_attn_fwd.compile_cache) == ("fa4's kernel", "fa4's cache")
    with pytest.raises(KeyError), persistent.forward_kernel(iface):
        raise KeyError("a failing FA4 call")
    assert (iface.FlashAttentionForwardSm90, iface._flash_attn_fwd.compile_cache) == ("fa4's kernel", "fa4's cache")
    assert persistent.stats() == {"calls": 2, "fallbacks": 0}


def test_a_patch_that_does_not_apply_keeps_fa4s_kernel(monkeypatch):
    def refuse():
        raise persistent.PatchError("the anchor of 'x' occurs 0 times")

    monkeypatch.setattr(persistent, "_patched_module", refuse)
    monkeypatch.setattr(persistent, "_counts", {"calls": 0, "fallbacks": 0})
    persistent._warn_once.cache_clear()
    iface = _fake_iface()
    with pytest.warns(RuntimeWarning, match="occurs 0 times"), persistent.forward_kernel(iface):
        assert iface.FlashAttentionForwardSm90 == "fa4's kernel"
    assert persistent.stats() == {"calls": 0, "fallbacks": 1}


def _docs_call(seed, total=40, hq=4, hk=2):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(total, hq, 64, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(total, hk, 64, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    qr = [[0, 9], [9, 30], [30, 40]]
    return q, k, v, qr, qr, [1, 1, 1]


def test_varlen_forwards_run_the_swapped_kernel_and_replay(monkeypatch, patched):
    """Through flex_flash_attn_func with the switch on: the varlen forward compiles into the persistent
    compile cache (FA4's own gets no forward), matches float64, and its launches are recorded and
    replayed through that cache."""
    _fake_fa4.install_backend_on_cpu(monkeypatch)
    monkeypatch.setenv(persistent.ENV, "1")
    monkeypatch.delenv(replay.ENV, raising=False)
    monkeypatch.setenv(replay.RECORD_AT_ENV, "2")
    fa4_cache = _fake_fa4._flash_attn_fwd.compile_cache
    try:
        for seed in range(4):
            q, k, v, qr, kr, ts = _docs_call(seed)
            out, meta = flex_flash_attn_func(q, k, v, qr, kr, ts, backend="fa4")
            ref_out, ref_lse, _ = ref_attn_dense(q, k, v, qr, kr, ts)
            torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
            torch.testing.assert_close(meta.lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
        s = replay.stats()
    finally:
        from magi_ffa.backends import fa4 as fa4_backend

        fa4_backend.clear_mask_cache()  # and the replay's tapes
    assert len(patched.cache) == 1 and not fa4_cache.cache
    assert persistent.stats()["calls"] == 2  # compiled, recorded; then replayed
    assert s["refused"] == 0 and s["recorded"] == 1 and s["replayed"] == 2, s
