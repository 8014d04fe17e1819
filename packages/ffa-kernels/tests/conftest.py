"""Shared fixtures: small tiles so the torch backend's blocking is exercised on tiny shapes; FA4's stand-in."""

import pytest
from magi_ffa.backends.torch_ref import TorchBackend


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 8 x 16 so every test shape spans several row blocks and column tiles."""
    monkeypatch.setattr(TorchBackend, "BLOCK_M", 8)
    monkeypatch.setattr(TorchBackend, "BLOCK_N", 16)


@pytest.fixture
def fake_fa4(monkeypatch):
    """FA4 importable (the stand-in, tests/_fake_fa4.py), the backend allowed on CPU in float64, tiny
    sparse blocks; yields the stand-in's call counters and forgets the backend's caches after."""
    import _fake_fa4
    from magi_ffa.backends import fa4 as fa4_backend
    from magi_ffa.backends.fa4 import kernel

    _fake_fa4.install_backend_on_cpu(monkeypatch)
    yield _fake_fa4.CALLS
    kernel.import_fa4.cache_clear()
    kernel._interval_mask_mod.cache_clear()
    fa4_backend.clear_mask_cache()
