"""Shared fixtures: small tiles so the torch backend's blocking is exercised on tiny shapes."""

import pytest
from magi_ffa.backends.torch_ref import TorchBackend


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 8 x 16 so every test shape spans several row blocks and column tiles."""
    monkeypatch.setattr(TorchBackend, "BLOCK_M", 8)
    monkeypatch.setattr(TorchBackend, "BLOCK_N", 16)
