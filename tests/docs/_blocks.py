"""Find the fenced python blocks of the docs pages and the test marker written above each one.

A block runs in-process by default, in order with the other default blocks of its page (they share
one namespace, like a reader pasting them into one session). A marker comment on the line before a
block changes that:
    <!-- docs-test: torchrun N -->   a standalone script, run with torchrun on N processes (gloo on CPU)
    <!-- docs-test: gpu -->          needs CUDA; skipped (with that reason) on CPU-only machines
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_MARK = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str
    mode: str  # "local", "gpu" or "torchrun"
    nproc: int = 1

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "design" not in p.relative_to(DOCS).parts)


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    rel = str(page.relative_to(ROOT))
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        mode, nproc = "local", 1
        if mark:
            words = mark.group(1).split()
            if words[:1] == ["gpu"] and len(words) == 1:
                mode = "gpu"
            elif words[:1] == ["torchrun"] and len(words) == 2 and words[1].isdigit():
                mode, nproc = "torchrun", int(words[1])
            else:
                raise ValueError(f"{rel}:{line}: unknown docs-test marker {mark.group(0)!r}")
        out.append(Block(rel, line, m.group(1), mode, nproc))
    return out


def all_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks(p)]
