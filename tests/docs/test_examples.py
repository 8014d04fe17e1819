"""The examples: a cp=2 run reproduces the losses of a cp=1 run (gloo, CPU, a few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _blocks import ROOT

SCRIPT = ROOT / "examples" / "torch_native" / "train_llama.py"
HF_SCRIPT = ROOT / "examples" / "transformers" / "train.py"


def _launch(nproc: int, out, *args: str, script=SCRIPT) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGI_ATTENTION_")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(script), "--steps", "3", "--out", str(out), *args]
    return subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _check_runs(runs: dict, tmp_path) -> None:
    for name, proc in runs.items():
        try:
            log, _ = proc.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{name} run timed out")
        assert proc.returncode == 0, f"{name} failed:\n{log[-6000:]}"

    one = json.loads((tmp_path / "cp1.json").read_text())
    two = json.loads((tmp_path / "cp2.json").read_text())
    assert (one["cp"], two["cp"]) == (1, 2)
    assert len(one["losses"]) == len(two["losses"]) == 3
    assert one["losses"][0] > 1.0  # a real cross-entropy over a 128-token vocab, not a zero
    for step, (a, b) in enumerate(zip(one["losses"], two["losses"])):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (step, one["losses"], two["losses"])


def test_torch_native_cp2_matches_cp1(tmp_path):
    # the cp=2 run prefetches each next key (prefetch_varlen_key): the same losses all the same
    _check_runs({"cp1": _launch(1, tmp_path / "cp1.json"),
                 "cp2": _launch(2, tmp_path / "cp2.json", "--cp", "2", "--prefetch-keys")}, tmp_path)


def test_transformers_cp2_matches_cp1(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("magi_attn_extensions.transformers",
                        reason="magi_attn_extensions.transformers is not installed")
    _check_runs({"cp1": _launch(1, tmp_path / "cp1.json", script=HF_SCRIPT),
                 "cp2": _launch(2, tmp_path / "cp2.json", script=HF_SCRIPT)}, tmp_path)
