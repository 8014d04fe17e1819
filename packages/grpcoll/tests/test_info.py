"""`python -m magi_grpcoll.info`: versions and each implementation's backends and devices."""

import subprocess
import sys

from magi_grpcoll import __version__
from magi_grpcoll.info import info


def test_info_lists_the_implementations():
    got = info()
    assert got["magi_grpcoll"] == __version__
    impls = got["impls"]
    assert set(impls) == {"a2av", "native", "hier"}
    assert "gloo" in impls["a2av"]["backends"] and "cpu" in impls["a2av"]["devices"]
    assert impls["native"] == {"backends": ["nccl"], "devices": ["cuda"]}  # peer memory: NCCL GPUs only
    proc = subprocess.run([sys.executable, "-m", "magi_grpcoll.info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "impls:" in proc.stdout and __version__ in proc.stdout, proc.stderr
