"""The ring-attention example runs on CPU with gloo and matches full attention."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "grpcoll" / "ring_attention.py"


@pytest.mark.dist
def test_ring_attention_example():
    if not EXAMPLE.exists():
        pytest.skip(f"example not found at {EXAMPLE} (running from an installed wheel)")
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--world-size", "2", "--seqlen", "32"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout
