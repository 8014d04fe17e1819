"""Backend selection: argument, then MAGI_ATTENTION_KERNEL_BACKEND, then auto (triton, torch)."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from magi_ffa import BackendUnavailableError, FFAInputError, flex_flash_attn_func, select
from magi_ffa.backends.base import FFAInputs
from magi_ffa.select import BACKEND_ENV, select_backend


def _inp(d=96, dtype=torch.float32):
    q = torch.randn(10, 4, d, dtype=dtype)
    k = torch.randn(12, 2, d, dtype=dtype)
    r = torch.tensor([[0, 10]], dtype=torch.int32)
    return FFAInputs(
        q, k, k.clone(), r, torch.tensor([[0, 12]], dtype=torch.int32), torch.zeros(1, dtype=torch.int32), 0.1
    )


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def test_auto_picks_torch_on_cpu():
    assert select_backend(_inp()).NAME == "torch"


def test_forced_backend_that_cannot_run_lists_reasons():
    with pytest.raises(BackendUnavailableError) as info:
        select_backend(_inp(), "triton")
    msg = str(info.value)
    assert msg.startswith(
        'backend="triton" cannot run q [10, 4, 96] float32 cpu, k/v [12, 2, 96], 1 slices: '
    )
    assert "device=cpu (supported: cuda" in msg or "cannot be imported" in msg


@pytest.mark.parametrize(
    "value,expect",
    [("torch", "torch"), ("sdpa", "torch"), ("ffa", "torch"), ("auto", "torch"), (" Torch ", "torch")],
)
def test_env_var_values(monkeypatch, value, expect):
    monkeypatch.setenv(BACKEND_ENV, value)
    assert select_backend(_inp()).NAME == expect


def test_env_var_forcing_triton_on_cpu_raises_and_argument_overrides(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "triton")
    q, k = torch.randn(8, 2, 16), torch.randn(8, 2, 16)
    with pytest.raises(BackendUnavailableError, match='backend="triton" cannot run'):
        flex_flash_attn_func(q, k, k, [[0, 8]], [[0, 8]])
    out, _ = flex_flash_attn_func(q, k, k, [[0, 8]], [[0, 8]], backend="torch")
    assert out.shape == q.shape


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "flash")
    with pytest.raises(FFAInputError, match=f"{BACKEND_ENV}='flash' is not a kernel backend"):
        select_backend(_inp())


def test_auto_fallback_logs_once(caplog, monkeypatch):
    monkeypatch.setattr(select, "_logged", set())
    with caplog.at_level(logging.INFO, logger="magi_ffa"):
        for _ in range(3):
            select_backend(_inp())
    records = [r for r in caplog.records if "using backend 'torch'" in r.getMessage()]
    assert len(records) == 1 and "'triton' skipped" in records[0].getMessage()


def test_missing_triton_backend_is_tolerated(monkeypatch):
    monkeypatch.setitem(sys.modules, "magi_ffa.backends.triton", None)  # import raises ImportError
    monkeypatch.setattr(select, "_cache", {})
    monkeypatch.setattr(select, "_import_errors", {})
    assert select_backend(_inp()).NAME == "torch"
    with pytest.raises(BackendUnavailableError, match="backend 'triton' cannot be imported"):
        select_backend(_inp(), "triton")


def test_info_table_matches_the_backends(capsys):
    """`python -m magi_ffa.info`: one row per backend, in selection order, with its capabilities."""
    import subprocess
    import sys

    from magi_ffa import __version__
    from magi_ffa.info import backend_table, print_info

    rows = {r["name"]: r for r in backend_table()}
    assert list(rows) == ["triton", "torch", "fa4"]
    assert rows["torch"]["available"] == "yes" and "cpu" in rows["torch"]["devices"]
    assert rows["torch"]["head_dims"] == "any" and "float64" in rows["torch"]["dtypes"]
    assert rows["fa4"]["head_dims"] == "64, 96, 128" and rows["fa4"]["deterministic"] == "False"
    print_info()
    out = capsys.readouterr().out
    assert f"magi_ffa {__version__}" in out and out.count("  name: ") == 3
    proc = subprocess.run([sys.executable, "-m", "magi_ffa.info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "name: torch, available: yes" in proc.stdout, proc.stderr
