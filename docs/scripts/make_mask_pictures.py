"""Render the mask-model pictures of docs/masks.md into docs/img/masks/ (commit the PNGs).

Usage: python docs/scripts/make_mask_pictures.py [OUT_DIR]
Each picture comes from magi_attention.visualize.render_mask, the function behind
``magi-attn show-mask``; tests/docs/test_visualize.py re-runs this script into a temp folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "img" / "masks"

# One slice with Lq=24 < Lk=40 per type: shows where causal (bottom-right) and inv-causal
# (top-left) are anchored.
TYPES = ("full", "causal", "inv_causal", "bi_causal")
# Composite masks of the demo CLI, with their partition over 4 ranks and 2 remote stages.
COMPOSITES = ("varlen-causal", "sliding-window", "block-causal", "shared-question")


def make(out: Path = OUT) -> list[Path]:
    from magi_attention.cli import build_mask
    from magi_attention.visualize import render_mask

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in TYPES:
        p = out / f"type_{t}.png"
        render_mask([(8, 32)], [(0, 40)], t, 40, path=p, title=f"{t}: q [8, 32) x k [0, 40)")
        written.append(p)
    for name in COMPOSITES:
        qr, kr, ts = build_mask(name, 256)
        p = out / f"{name}.png"
        render_mask(qr, kr, ts, 256, cp_size=4, chunk_size=16, degree=2, min_chunk_size=16,
                    path=p,
                    title=f"{name}, T=256, cp=4, chunk 16, degree 2")
        written.append(p)
    return written


if __name__ == "__main__":
    for p in make(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(f"wrote {p}")
