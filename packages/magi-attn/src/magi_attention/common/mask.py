"""AttnMask: a slice mask as a dense int32 [Sq, Sk] tensor on CPU (1 = visible), built from slices or
from a dense mask, with the questions one asks of a mask answered cell by cell.

Why dense: it checks masks independently of the solver's geometry (area, causal or varlen shape, the
area of any sub-block), for tests, examples and drawings. The runtime never builds one; it works on
slices. Sizes up to a few tens of thousands of tokens per side are practical.

Cell (qs + i, ks + j) of a slice [qs, qe) x [ks, ke) of lengths Lq, Lk is visible when: FULL always;
CAUSAL j <= i + Lk - Lq (bottom-right aligned); INV_CAUSAL j >= i (top-left); BI_CAUSAL both. The
mask is the union of its slices.

Example:
    >>> m = AttnMask.from_ranges([[0, 4], [4, 8]], [[0, 4], [4, 8]], ["causal", "causal"])
    >>> m.area(), m.is_varlen_causal(), m.calc_sub_area((4, 8), (0, 8))
    (20, True, 10)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from magi_attention.common.ranges import AttnMaskType, AttnRanges, checked_slices, naive_ranges
from magi_attention.errors import MagiAttentionError

__all__ = ["AttnMask", "slice_visibility"]

FULL, CAUSAL, INV_CAUSAL, BI_CAUSAL = 0, 1, 2, 3
_MASK_TYPES = (AttnMaskType.FULL, AttnMaskType.CAUSAL, AttnMaskType.INVCAUSAL, AttnMaskType.BICAUSAL)
_TEXT_CELLS = {0: "·", 1: "▒", 2: "█"}  # no visible cell, some, all (a cell of the text picture)


def slice_visibility(lq: int, lk: int, mask_type: int) -> np.ndarray:
    """bool [lq, lk]: the visible cells of one slice of type code ``mask_type`` (rules above)."""
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    vis = np.ones((lq, lk), dtype=bool)
    if mask_type in (CAUSAL, BI_CAUSAL):
        vis &= j <= i + lk - lq
    if mask_type in (INV_CAUSAL, BI_CAUSAL):
        vis &= j >= i
    return vis


def _length(value: Any, arg: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise MagiAttentionError(f"AttnMask.from_ranges(): {arg}={value!r} must be an int >= 0")
    return int(value)


def _range(r: Any, size: int, fn: str, arg: str) -> tuple[int, int]:
    (s, e), = naive_ranges([r], fn=fn, arg=arg)
    if e > size:
        raise MagiAttentionError(f"{fn}(): {arg}=({s}, {e}) ends beyond the mask's {size}")
    return s, e


class AttnMask(nn.Module):
    """A dense int32 [Sq, Sk] mask (1 = visible) on CPU, with the slices it was made from.

    Built only with ``AttnMask.from_ranges`` or ``AttnMask.from_mask``. ``forward()`` returns the
    tensor (``mask_tensor``); ``q_ranges``, ``k_ranges`` (AttnRanges) and ``attn_mask_type`` are the
    slices (for ``from_mask``: full slices, one per run of visible keys shared by consecutive rows).
    """

    _FACTORY = object()

    def __init__(self, mask_tensor: torch.Tensor, q_ranges, k_ranges, types, *, _factory: object = None):
        if _factory is not AttnMask._FACTORY:
            raise TypeError("AttnMask is built with AttnMask.from_ranges(...) or AttnMask.from_mask(...)")
        super().__init__()
        self.register_buffer("mask_tensor", mask_tensor, persistent=False)
        self.q_ranges = AttnRanges.from_ranges([list(r) for r in q_ranges])
        self.k_ranges = AttnRanges.from_ranges([list(r) for r in k_ranges])
        self.attn_mask_type = [_MASK_TYPES[t] for t in types]
        self.total_seqlen_q, self.total_seqlen_k = (int(n) for n in mask_tensor.shape)

    # -- factories ------------------------------------------------------------------------------
    @classmethod
    def from_ranges(cls, q_ranges, k_ranges, attn_mask_type, total_seqlen_q: int | None = None,
                    total_seqlen_k: int | None = None) -> AttnMask:
        """The union of the slices ``(q_ranges[i], k_ranges[i], attn_mask_type[i])`` (AttnRanges,
        (start, end) pairs or [N, 2] tensors; AttnMaskType, its name or 0..3, or one type for all).
        The totals default to the last range ends."""
        fn = "AttnMask.from_ranges"
        qr, kr, types = checked_slices(q_ranges, k_ranges, attn_mask_type, fn=fn)
        sq = _length(total_seqlen_q, "total_seqlen_q", max((e for _, e in qr), default=0))
        sk = _length(total_seqlen_k, "total_seqlen_k", max((e for _, e in kr), default=0))
        for arg, ranges, size in (("q_ranges", qr, sq), ("k_ranges", kr, sk)):
            for i, (s, e) in enumerate(ranges):
                if e > size:
                    total = "total_seqlen_q" if arg == "q_ranges" else "total_seqlen_k"
                    raise MagiAttentionError(f"{fn}(): {arg}[{i}]=({s}, {e}) ends beyond {total}={size}")
        dense = np.zeros((sq, sk), dtype=bool)
        for (qs, qe), (ks, ke), t in zip(qr, kr, types):
            if qe > qs and ke > ks:
                dense[qs:qe, ks:ke] |= slice_visibility(qe - qs, ke - ks, t)
        return cls(torch.from_numpy(dense.astype(np.int32)), qr, kr, types, _factory=cls._FACTORY)

    @classmethod
    def from_mask(cls, mask: torch.Tensor | np.ndarray | Sequence[Sequence[int]]) -> AttnMask:
        """A dense 2-D mask of 0 / 1 (or bool): its slices are full ones, one per run of visible keys
        that consecutive rows share."""
        fn = "AttnMask.from_mask"
        dense = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
        if dense.ndim != 2:
            raise MagiAttentionError(f"{fn}(): mask must be 2-D [Sq, Sk], got {dense.ndim} dimensions")
        if dense.size and not np.isin(dense, (0, 1)).all():
            raise MagiAttentionError(f"{fn}(): mask must hold only 0 / 1 (or bool) values")
        dense = dense.astype(bool)
        qr, kr = [], []
        open_runs: dict[tuple[int, int], int] = {}  # key run -> first row of the rows sharing it so far
        for r in range(dense.shape[0] + 1):
            runs = _runs(dense[r]) if r < dense.shape[0] else []
            for run in [run for run in open_runs if run not in runs]:
                qr.append((open_runs.pop(run), r))
                kr.append(run)
            for run in runs:
                open_runs.setdefault(run, r)
        order = sorted(range(len(qr)), key=lambda i: (qr[i], kr[i]))
        qr, kr = [qr[i] for i in order], [kr[i] for i in order]
        return cls(torch.from_numpy(dense.astype(np.int32)), qr, kr, [FULL] * len(qr), _factory=cls._FACTORY)

    @staticmethod
    def make_causal_mask(seqlen_q: int, seqlen_k: int, align: str = "bottom-right",
                         dtype: torch.dtype = torch.int32, device: Any = "cpu") -> torch.Tensor:
        """[seqlen_q, seqlen_k] causal mask: row i sees key j when j <= i + seqlen_k - seqlen_q
        ("bottom-right", the slices' CAUSAL) or j <= i ("top-left")."""
        if align not in ("bottom-right", "top-left"):
            raise MagiAttentionError(f"AttnMask.make_causal_mask(): align={align!r}; expected "
                                     "'bottom-right' or 'top-left'")
        shift = seqlen_k - seqlen_q if align == "bottom-right" else 0
        i = torch.arange(seqlen_q, device=device)[:, None]
        j = torch.arange(seqlen_k, device=device)[None, :]
        return (j <= i + shift).to(dtype)

    # -- the mask ---------------------------------------------------------------------------------
    def forward(self) -> torch.Tensor:
        return self.mask_tensor

    def area(self) -> int:
        """Visible cells."""
        return int(self.mask_tensor.sum())

    def calc_sub_area(self, q_range, k_range) -> int:
        """Visible cells in rows ``q_range`` and keys ``k_range`` ((start, end) or AttnRange)."""
        (qs, qe), (ks, ke) = self._block(q_range, k_range, "calc_sub_area")
        return int(self.mask_tensor[qs:qe, ks:ke].sum())

    def make_sub_mask(self, q_range, k_range) -> AttnMask:
        """The block of rows ``q_range`` and keys ``k_range`` as an AttnMask of its own."""
        (qs, qe), (ks, ke) = self._block(q_range, k_range, "make_sub_mask")
        return AttnMask.from_mask(self.mask_tensor[qs:qe, ks:ke])

    def _block(self, q_range, k_range, name: str):
        fn = f"AttnMask.{name}"
        return (_range(q_range, self.total_seqlen_q, fn, "q_range"),
                _range(k_range, self.total_seqlen_k, fn, "k_range"))

    def is_square(self) -> bool:
        return self.total_seqlen_q == self.total_seqlen_k

    def is_empty(self) -> bool:
        """No visible cell (an empty shape included)."""
        return self.area() == 0

    def is_pure_full(self) -> bool:
        """Every cell visible (and at least one)."""
        return self.mask_tensor.numel() > 0 and bool(self.mask_tensor.all())

    def is_pure_causal(self) -> bool:
        """The bottom-right aligned causal mask of its shape, with at least one visible cell."""
        causal = self.make_causal_mask(self.total_seqlen_q, self.total_seqlen_k)
        return not self.is_empty() and torch.equal(self.mask_tensor, causal)

    def is_varlen_full(self) -> bool:
        """Documents on the diagonal, each seeing itself whole: row r of document [a, b) sees [a, b)."""
        return self._documents(causal=False)

    def is_varlen_causal(self) -> bool:
        """Documents on the diagonal, each causal: row r of document [a, b) sees [a, r + 1)."""
        return self._documents(causal=True)

    def _documents(self, causal: bool) -> bool:
        m = self.mask_tensor.numpy().astype(bool)
        n = m.shape[0]
        if not self.is_square() or n == 0 or not m.any(1).all():
            return False
        lo, hi = m.argmax(1), n - m[:, ::-1].argmax(1)
        if not (m.sum(1) == hi - lo).all():  # each row one run of keys
            return False
        rows = np.arange(n)
        starts = lo == rows  # where documents begin
        doc_start = np.maximum.accumulate(np.where(starts, rows, 0))
        if not (lo == doc_start).all():
            return False
        if causal:
            return bool((hi == rows + 1).all())
        ends = np.append(rows[starts][1:], n)  # each document's end, in order
        return bool((hi == ends[np.cumsum(starts) - 1]).all())

    # -- display ----------------------------------------------------------------------------------
    def visualize(self, save_path: str | None = None, max_size: int = 64) -> str:
        """A text picture of the mask, at most ``max_size`` characters a side (each character a block
        of cells: █ all visible, ▒ some, · none); with ``save_path``, also a PNG of every cell
        (matplotlib)."""
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise MagiAttentionError(f"AttnMask.visualize(): max_size={max_size!r} must be an int >= 1")
        m = self.mask_tensor.numpy()
        sq, sk = m.shape
        bq, bk = max(1, -(-sq // max_size)), max(1, -(-sk // max_size))
        lines = []
        for a in range(0, sq, bq):
            row = ""
            for b in range(0, sk, bk):
                block = m[a:a + bq, b:b + bk]
                row += _TEXT_CELLS[2 if block.all() else int(block.any())]
            lines.append(row)
        if save_path is not None:
            from magi_attention.visualize import _figure  # matplotlib's, no pyplot state touched

            ax = _figure(1, 1).subplots()
            ax.imshow(m, cmap="Blues", interpolation="nearest", vmin=0, vmax=1, aspect="auto")
            ax.set_xlabel("key")
            ax.set_ylabel("query")
            ax.figure.savefig(save_path)
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return f"{self.total_seqlen_q} x {self.total_seqlen_k}, {len(self.attn_mask_type)} slices, area {self.area()}"


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Runs [start, end) of True in a 1-D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], row, [False])).astype(np.int8)))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2])]
