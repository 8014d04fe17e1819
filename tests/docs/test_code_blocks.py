"""Run every python block of docs/*.md: in-process per page, torchrun blocks as real 2-rank jobs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from _blocks import all_blocks, blocks, pages

LOCAL_PAGES = [p for p in pages() if any(b.mode == "local" for b in blocks(p))]
TORCHRUN = [b for b in all_blocks() if b.mode == "torchrun"]
GPU = [b for b in all_blocks() if b.mode == "gpu"]


def test_docs_have_blocks_of_each_kind():
    # the runner must actually see the quickstart's blocks (a broken parser would run nothing)
    ids = {b.page for b in all_blocks()}
    assert "docs/quickstart.md" in ids and TORCHRUN, sorted(ids)


@pytest.mark.parametrize("page", LOCAL_PAGES, ids=lambda p: p.name)
def test_local_blocks(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = dict(os.environ)
    ns: dict = {"__name__": "__docs__"}
    try:
        for b in blocks(page):
            if b.mode != "local":
                continue
            try:
                exec(compile(b.code, b.id, "exec"), ns)  # noqa: S102 - the docs are the test input
            except Exception as exc:
                raise AssertionError(f"docs block {b.id} failed: {exc!r}") from exc
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize("block", TORCHRUN, ids=lambda b: b.id)
def test_torchrun_blocks(block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(block.code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGI_ATTENTION_")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={block.nproc}", str(script)]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{block.id} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"


@pytest.mark.gpu
@pytest.mark.parametrize("block", GPU or [None], ids=lambda b: b.id if b else "none")
def test_gpu_blocks(block, tmp_path, monkeypatch):
    if block is None:
        pytest.skip("the docs have no GPU-only blocks")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: GPU-only docs block not run")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})  # noqa: S102


def test_unknown_marker_is_rejected(tmp_path, monkeypatch):
    import _blocks

    page = tmp_path / "docs" / "x.md"
    page.parent.mkdir()
    page.write_text("<!-- docs-test: torchrun two -->\n```python\nprint(1)\n```\n")
    monkeypatch.setattr(_blocks, "ROOT", tmp_path)
    with pytest.raises(ValueError, match="unknown docs-test marker"):
        _blocks.blocks(page)
