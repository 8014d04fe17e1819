"""Draw a slice mask, its per-rank partition and its communication stages as a PNG.

Why: a mask given as (q_range, k_range, type) slices, a chunk partition and a stage plan are hard to
check by reading numbers; a picture shows at once which rank computes which cells and which cells
need remote keys in which stage. Everything here is computed by the same solver calls the runtime
uses (through ``_compat``), so the picture is what a run would do, not a re-derivation.

Shape legend: T total (padded) sequence length, cp number of context-parallel ranks.

Example:
    >>> from magi_attention.visualize import render_mask
    >>> fig = render_mask([(0, 64), (64, 128)], [(0, 64), (0, 128)], ["causal", "full"], 128,
    ...                   cp_size=2, chunk_size=16, path="mask.png")
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from magi_attention import _compat
from magi_attention.common.mask import FULL, slice_visibility
from magi_attention.common.ranges import checked_slices
from magi_attention.errors import MagiAttentionError

__all__ = ["dense_mask", "plan_mask", "stage_map", "rank_map", "render_mask", "render_key",
           "parse_slices", "main"]

TYPE_NAMES = ("full", "causal", "inv_causal", "bi_causal")
MAX_SEQLEN = 16384  # a dense T x T picture above this is too large to be useful
_TYPE_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def _check_total(total_seqlen: int, ranges, fn: str) -> int:
    if isinstance(total_seqlen, bool) or not isinstance(total_seqlen, int) or total_seqlen < 1:
        raise MagiAttentionError(f"{fn}(): total_seqlen={total_seqlen!r} must be a positive int")
    if total_seqlen > MAX_SEQLEN:
        raise MagiAttentionError(f"{fn}(): total_seqlen={total_seqlen} is above {MAX_SEQLEN}; "
                                 "draw a shorter (scaled-down) version of the mask")
    for i, (s, e) in enumerate(ranges):
        if e > total_seqlen:
            raise MagiAttentionError(f"{fn}(): range {i} ({s}, {e}) ends beyond "
                                     f"total_seqlen={total_seqlen}")
    return total_seqlen


def dense_mask(q_ranges, k_ranges, mask_types, total_seqlen: int) -> np.ndarray:
    """Type code + 1 of each visible cell (0 = masked), int8 [T, T].

    A cell covered by two slices keeps the later slice's type; ``slice_count`` semantics (a cell
    listed twice counts twice) do not matter for a picture.
    """
    qr, kr, types = checked_slices(q_ranges, k_ranges, mask_types, fn="dense_mask")
    total = _check_total(total_seqlen, qr + kr, "dense_mask")
    out = np.zeros((total, total), dtype=np.int8)
    for (qs, qe), (ks, ke), t in zip(qr, kr, types):
        if qe > qs and ke > ks:
            block = out[qs:qe, ks:ke]
            block[slice_visibility(qe - qs, ke - ks, t)] = t + 1
    return out


def plan_mask(q_ranges, k_ranges, mask_types, total_seqlen: int, cp_size: int, chunk_size: int,
              *, alg: str = "min_heap", degree: int = 1, min_chunk_size: int = 512):
    """Pad the mask as the runtime does, then solve dispatch and plan every rank's stages.

    Returns:
        (q_ranges, k_ranges, types, padded_total, dispatch_meta, dist_attn_plan); the padding slice
        ``[T, T+pad) x [0, 0)`` full is appended when ``T`` is not a multiple of
        ``chunk_size * cp_size``.
    """
    fn = "plan_mask"
    qr, kr, types = checked_slices(q_ranges, k_ranges, mask_types, fn=fn)
    total = _check_total(total_seqlen, qr + kr, fn)
    for name, v in (("cp_size", cp_size), ("chunk_size", chunk_size), ("degree", degree),
                    ("min_chunk_size", min_chunk_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise MagiAttentionError(f"{fn}(): {name}={v!r} must be a positive int")
    pad = (-total) % (chunk_size * cp_size)
    if pad:
        qr, kr, types = qr + [(total, total + pad)], kr + [(0, 0)], types + [FULL]
    padded = total + pad
    _check_total(padded, [], fn)
    solver = _compat.solver
    meta = solver.make_dispatch_meta(qr, kr, types, padded, chunk_size, cp_size, alg)
    plan = solver.make_dist_attn_plan(qr, kr, types, meta, solver.OverlapParams(degree=degree,
                                                                     min_chunk_size=min_chunk_size))
    return qr, kr, types, padded, meta, plan


def _local_to_global(ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    """Global token id of each position of a buffer holding ``ranges`` back to back."""
    parts = [np.arange(s, e) for s, e in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def stage_map(rank_plan, total_seqlen: int) -> np.ndarray:
    """Which stage computes each cell for one rank: int16 [T, T], -1 none, 0 host, i remote i.

    Host-stage calc args are local to the rank's buffer (``host_q_ranges`` back to back); a remote
    stage's keys are local to its receive buffer (``remote_k_ranges`` back to back).
    """
    out = np.full((total_seqlen, total_seqlen), -1, dtype=np.int16)
    q_glob = _local_to_global(rank_plan.host_q_ranges)
    calcs = [(rank_plan.host_calc, _local_to_global(rank_plan.host_k_ranges))]
    calcs += [(st.calc, _local_to_global(st.remote_k_ranges)) for st in rank_plan.stages]
    for stage, (calc, k_glob) in enumerate(calcs):
        for (qs, qe), (ks, ke), t in zip(calc.q_ranges, calc.k_ranges, calc.mask_types):
            if qe <= qs or ke <= ks:
                continue
            rows, cols = np.nonzero(slice_visibility(qe - qs, ke - ks, int(t)))
            out[q_glob[qs + rows], k_glob[ks + cols]] = stage
    return out


def rank_map(dispatch_meta) -> np.ndarray:
    """Owning rank of each token: int16 [T] (from the dispatch partitions)."""
    owner = np.zeros(int(dispatch_meta.total_seqlen), dtype=np.int16)
    c = int(dispatch_meta.chunk_size)
    for r, chunks in enumerate(dispatch_meta.partitions):
        for ch in chunks:
            owner[ch * c:(ch + 1) * c] = r
    return owner


def _figure(ncols: int, nrows: int):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("magi_attention.visualize needs matplotlib; fix: pip install "
                          "'matplotlib>=3.8'") from exc
    fig = Figure(figsize=(3.2 * ncols, 3.2 * nrows + 0.4), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _cmap(colors):
    from matplotlib.colors import ListedColormap

    return ListedColormap(colors)


def _show(ax, img, cmap, n: int, title: str, chunk: int | None):
    ax.imshow(img, cmap=cmap, vmin=0, vmax=n - 1, interpolation="nearest", origin="upper")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key", fontsize=8)
    ax.set_ylabel("query", fontsize=8)
    ax.tick_params(labelsize=7)
    if chunk:
        total = img.shape[0]
        for x in range(chunk, total, chunk):
            ax.axhline(x - 0.5, color="#999999", lw=0.3)
            ax.axvline(x - 0.5, color="#999999", lw=0.3)


def _legend(ax, colors, labels):
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=lab) for c, lab in zip(colors, labels)],
              fontsize=6, loc="upper right", framealpha=0.8)


def render_mask(q_ranges, k_ranges, mask_types, total_seqlen: int, *, cp_size: int = 1,
                chunk_size: int | None = None, alg: str = "min_heap", degree: int = 1,
                min_chunk_size: int = 512, path: Any = None, title: str | None = None, _solved=None):
    """Render the mask and, for ``cp_size > 1``, its partition and every rank's stages.

    Panels: the mask coloured by slice type; then (cp_size > 1) each visible cell coloured by the
    rank that computes it (the owner of its query row); then one panel per rank colouring the
    cells of that rank by stage (host stage 0, remote stages 1..degree).

    Args:
        q_ranges, k_ranges: (start, end) pairs or AttnRanges of the unpadded mask.
        mask_types: one type for all slices or one per slice (str, AttnMaskType or 0..3).
        total_seqlen: unpadded sequence length T (at most ``MAX_SEQLEN``).
        cp_size, chunk_size, alg, degree, min_chunk_size: dispatch and overlap settings (as in
            DistAttnConfig; remote keys are cut into overlap chunks of at least min_chunk_size
            tokens, so short sequences need a small value to fill ``degree`` stages).
        path: where to save a PNG (None: do not save).
    Returns:
        The matplotlib Figure (no pyplot state is touched).
    """
    fn = "render_mask"
    qr, kr, types = checked_slices(q_ranges, k_ranges, mask_types, fn=fn)
    total = _check_total(total_seqlen, qr + kr, fn)
    if cp_size > 1 or _solved is not None:
        if chunk_size is None and _solved is None:
            raise MagiAttentionError(f"{fn}(): cp_size={cp_size} needs chunk_size")
        qr, kr, types, total, meta, plan = _solved or plan_mask(
            qr, kr, types, total, cp_size, chunk_size, alg=alg, degree=degree,
            min_chunk_size=min_chunk_size)
        cp_size = int(meta.cp_size)
    mask = dense_mask(qr, kr, types, total)
    panels = 1 if cp_size == 1 else 2 + cp_size
    ncols = min(panels, 4)
    nrows = -(-panels // ncols)
    fig = _figure(ncols, nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_axis_off()
    bg = "#f4f4f4"
    _show(axes[0], mask, _cmap([bg, *_TYPE_COLORS]), 5, "mask (slice types)",
          chunk_size if cp_size > 1 else None)
    _legend(axes[0], _TYPE_COLORS, TYPE_NAMES)
    if cp_size > 1:
        from matplotlib import colormaps

        owner = rank_map(meta)
        rank_colors = [colormaps["tab10"](r % 10) for r in range(cp_size)]
        part = np.where(mask > 0, owner[:, None] + 1, 0)
        _show(axes[1], part, _cmap([bg, *rank_colors]), cp_size + 1,
              f"partition over {cp_size} ranks (chunk {meta.chunk_size})", int(meta.chunk_size))
        _legend(axes[1], rank_colors, [f"rank {r}" for r in range(cp_size)])
        nst = int(plan.num_stages)
        stage_colors = ["#222222"] + [colormaps["viridis"](0.25 + 0.7 * i / max(nst, 1))
                                      for i in range(nst)]
        for r in range(cp_size):
            st = stage_map(plan.rank_plan(r), total) + 1
            _show(axes[2 + r], st, _cmap([bg, *stage_colors]), nst + 2,
                  f"rank {r}: stages", int(meta.chunk_size))
        _legend(axes[2], stage_colors, ["host"] + [f"remote {i + 1}" for i in range(nst)])
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        fig.savefig(path)
    return fig


def render_key(key, path: Any = None, title: str | None = None):
    """Render a live DistAttnRuntimeKey: its mask, its dispatch partition and all ranks' stages.

    Uses the key's own dispatch meta (from the cp group's cache) and plans every rank with the
    key's overlap config; call it on any rank after the key was created (no communication).
    """
    from magi_attention.meta.key import DistAttnRuntimeKey
    from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr
    from magi_attention.runtime.runtime_mgr import _overlap_params

    if not isinstance(key, DistAttnRuntimeKey):
        raise MagiAttentionError(f"render_key(): key must be a DistAttnRuntimeKey, got "
                                 f"{type(key).__name__}")
    meta = dist_attn_runtime_dict_mgr.get_mgr(key).dispatch_meta
    qr, kr, types = list(key.q_ranges), list(key.k_ranges), list(key.attn_mask_type)
    plan = _compat.solver.make_dist_attn_plan(qr, kr, types, meta,
                                              _overlap_params(key.dist_attn_config))
    total = int(key.total_seqlen_q)
    if int(meta.cp_size) == 1:
        return render_mask(qr, kr, types, total, path=path, title=title)
    return render_mask(qr, kr, types, total, path=path, title=title,
                       _solved=(qr, kr, types, total, meta, plan))


def parse_slices(text: str):
    """'0:64/0:64/causal,64:128/0:128/full' -> (q_ranges, k_ranges, types)."""
    qr, kr, ts = [], [], []
    for i, item in enumerate(p for p in text.split(",") if p.strip()):
        parts = item.strip().split("/")
        try:
            q, k = ([int(x) for x in part.split(":")] for part in parts[:2])
            if len(parts) != 3 or len(q) != 2 or len(k) != 2:
                raise ValueError
        except ValueError:
            raise MagiAttentionError(f"parse_slices(): slice {i} {item.strip()!r} is not "
                                     "QS:QE/KS:KE/TYPE (e.g. 0:64/0:64/causal)") from None
        qr.append(tuple(q))
        kr.append(tuple(k))
        ts.append(parts[2].strip())
    if not qr:
        raise MagiAttentionError("parse_slices(): no slice given")
    return qr, kr, ts


def main(argv: list[str] | None = None) -> int:
    """`magi-attn show-mask`: render a named demo mask (or --slices) to a PNG."""
    from magi_attention.cli import MASKS, build_mask

    p = argparse.ArgumentParser(prog="magi-attn show-mask", description=main.__doc__)
    p.add_argument("--mask", choices=MASKS, default="causal")
    p.add_argument("--slices", default=None,
                   help="custom mask QS:QE/KS:KE/TYPE,... (overrides --mask)")
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=None,
                   help="dispatch chunk (default: seqlen / (8 * world-size), at least 1)")
    p.add_argument("--degree", type=int, default=2)
    p.add_argument("--min-chunk-size", type=int, default=None,
                   help="overlap chunk floor (default: the chunk size)")
    p.add_argument("--alg", default="min_heap")
    p.add_argument("-o", "--output", default="mask.png")
    a = p.parse_args(argv)
    try:
        if a.slices:
            qr, kr, ts = parse_slices(a.slices)
        else:
            qr, kr, ts = build_mask(a.mask, a.seqlen)
        chunk = a.chunk_size or max(1, a.seqlen // (8 * a.world_size))
        render_mask(qr, kr, ts, a.seqlen, cp_size=a.world_size, chunk_size=chunk, alg=a.alg,
                    degree=a.degree, min_chunk_size=a.min_chunk_size or chunk, path=a.output,
                    title=f"{a.slices and 'custom' or a.mask}, T={a.seqlen}, cp={a.world_size}")
    except (ValueError, TypeError) as exc:
        print(f"magi-attn show-mask: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {a.output}")
    return 0
