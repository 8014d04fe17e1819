"""Masks that are a sum of FA4-native masks, run as a few native calls instead of one masked call.

Why: FA4's mask function is evaluated on every cell of every partial tile, and its backward pays
for it twice (the dq and the dk/dv passes both walk the partial tiles). A shared-question mask
(one prompt seen by many answers) has partial tiles on every answer's diagonal and at every
answer's prompt edge, but it is the sum of two masks FA4 runs natively: the answers' (and the
prompt's) causal documents, a varlen mask, and the answers-times-prompt rectangle, a full one.
Two native calls plus a sum of their gradients beat one masked call.

The split is by slice type: each type's slices, cut to their bounding rows and keys, must be a
mask FA4 expresses itself (native.py), and no cell may be visible in two parts (the slices'
union is what the whole mask computes; disjoint parts make the union a sum). Anything else keeps
the single masked call. A part is a sub-problem on contiguous row and key views of the inputs, so
the calls need no copies; only the gradients of the parts after the first are added.

A second split, by rows (``row_layers``): a mask whose rows each see one key range, the same for a
run of rows, but whose runs' ranges overlap (a staircase: a context-parallel remote stage of a
document cut into chunks, where each chunk sees all the document's remote keys before it). FA4's
varlen documents need key ranges that neither overlap nor go backwards, so such a mask took the mask
function: a 32k varlen causal mask dispatched on chunks of 1024 ran its runtime forward 2x slower
than the same cells as native documents (2 x H200). Here each run joins the first layer whose keys
end where it starts or before, so every layer is native documents; the layers' rows are disjoint, so
their results need no merge beyond placing each row, and their gradients add as any parts' do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from magi_ffa.backends.fa4.native import row_runs
from magi_ffa.env import int_from_env

__all__ = ["ENV", "MAX_ROW_LAYERS_ENV", "MaskPart", "decompose", "enabled", "max_row_layers", "row_layers"]

ENV = "MAGI_FFA_FA4_DECOMPOSE"
_MODES = {"0": (), "off": (), "bwd": ("bwd",), "1": ("fwd", "bwd"), "all": ("fwd", "bwd")}


#: the environment variable naming the most native calls ``row_layers`` makes of one mask (a mask
#: needing more keeps the masked call; 0: no row layers), read when a mask is first translated
MAX_ROW_LAYERS_ENV = "MAGI_FFA_FA4_MAX_ROW_LAYERS"
DEFAULT_MAX_ROW_LAYERS = 8


def max_row_layers() -> int:
    """``MAX_ROW_LAYERS_ENV``'s value (default ``DEFAULT_MAX_ROW_LAYERS``)."""
    return int_from_env(MAX_ROW_LAYERS_ENV, DEFAULT_MAX_ROW_LAYERS, 0, "the most row layers; 0: none")


def enabled(direction: str, kind: str = "types") -> bool:
    """Whether ``direction`` ("fwd" / "bwd") runs decomposed masks of ``kind`` as parts (env ``ENV``):
    parts by slice type ("types") in the directions the mode names; row layers ("rows") in both
    unless the mode is off. Why both: a row layer's forward writes its own rows, no merge of overlapping
    results, so it beats the masked call forward too (the type parts' forward merges whole rows)."""
    mode = os.environ.get(ENV, "bwd").strip().lower()
    if mode not in _MODES:
        raise ValueError(f"{ENV}={mode!r}: expected one of {sorted(_MODES)}")
    if kind == "rows":
        return bool(_MODES[mode])
    return direction in _MODES[mode]


@dataclass(frozen=True)
class MaskPart:
    """One native call of a decomposed mask: rows [q[0], q[1]) against keys [k[0], k[1])."""

    q: tuple[int, int]
    k: tuple[int, int]
    mask: object  # SliceBlockMask of the sub-problem (native is set)

    @property
    def covers(self) -> tuple[int, int]:
        """(rows, keys) of the call."""
        return self.q[1] - self.q[0], self.k[1] - self.k[0]


def decompose(q_ranges, k_ranges, types, visible_per_row: np.ndarray, build) -> tuple[MaskPart, ...] | None:
    """The mask's native parts, one per slice type (largest first), or None when it has one type,
    a part is not native, or two parts share a cell. ``visible_per_row`` [Sq]: how many keys each
    row of the whole mask sees (the parts share no cell exactly when their counts add up to it,
    since the mask is their union). ``build(q_ranges, k_ranges, types, sq, sk)`` translates a
    sub-problem (block_sparse.build_slice_block_mask without decomposition)."""
    qr = np.asarray(q_ranges, dtype=np.int64).reshape(-1, 2)
    kr = np.asarray(k_ranges, dtype=np.int64).reshape(-1, 2)
    ty = np.asarray(types, dtype=np.int64).reshape(-1)
    live = (qr[:, 1] > qr[:, 0]) & (kr[:, 1] > kr[:, 0])
    qr, kr, ty = qr[live], kr[live], ty[live]
    kinds = sorted(set(ty.tolist()))  # not np.unique: its first call imports numpy.ma (~35 ms, once)
    if len(kinds) < 2:
        return None
    parts, counted = [], np.zeros_like(visible_per_row, dtype=np.int64)
    for t in kinds:
        sel = ty == t
        qs, qe = int(qr[sel, 0].min()), int(qr[sel, 1].max())
        ks, ke = int(kr[sel, 0].min()), int(kr[sel, 1].max())
        sub = build(qr[sel] - qs, kr[sel] - ks, ty[sel], qe - qs, ke - ks)
        if sub.native is None or sub.num_intervals != 1:
            return None
        parts.append(MaskPart((qs, qe), (ks, ke), sub))
        counted[qs:qe] += np.maximum(sub.hi_host[0].astype(np.int64) - sub.lo_host[0], 0)  # its keys per row
    if not np.array_equal(counted, visible_per_row):
        return None
    return tuple(sorted(parts, key=lambda p: -(p.covers[0] * p.covers[1])))


def row_layers(lo: np.ndarray, hi: np.ndarray, build, min_mean_rows: int = 1) -> tuple[MaskPart, ...] | None:
    """The mask of row intervals ``lo`` / ``hi`` [1, Sq] (one key range per row) as native layers of
    whole runs (see the module docstring), largest first, or None: more than one interval per row,
    runs shorter than ``min_mean_rows`` on average (ranges that change row by row, a causal or window
    edge: one call per few rows would cost more than the mask function), a single layer (then the
    mask was native or has another cause), more than ``max_row_layers()`` layers, or a layer FA4 does
    not run natively. ``build(q_ranges, k_ranges, types, sq, sk)`` translates a layer's full slices
    (one per run) in its bounding rows and keys."""
    if lo.shape[0] != 1:
        return None
    starts, ends, ks, ke, sees = row_runs(lo[0].astype(np.int64), hi[0].astype(np.int64), causal=False)
    starts, ends, ks, ke = starts[sees], ends[sees], ks[sees], ke[sees]
    limit = max_row_layers()
    if len(starts) < 2 or limit < 2 or (ends - starts).sum() < min_mean_rows * len(starts):
        return None
    layer_end: list[int] = []  # each layer's last key end, runs placed in row order (first fit)
    layer_of = np.empty(len(starts), dtype=np.int64)
    for i, (a, b) in enumerate(zip(ks.tolist(), ke.tolist())):
        slot = next((j for j, end in enumerate(layer_end) if end <= a), len(layer_end))
        if slot == limit:
            return None
        if slot == len(layer_end):
            layer_end.append(b)
        else:
            layer_end[slot] = b
        layer_of[i] = slot
    if len(layer_end) < 2:
        return None
    parts = []
    for j in range(len(layer_end)):
        sel = layer_of == j
        q = np.stack([starts[sel], ends[sel]], 1)
        k = np.stack([ks[sel], ke[sel]], 1)
        qs, qe, k0, k1 = int(q[0, 0]), int(q[-1, 1]), int(k[:, 0].min()), int(k[:, 1].max())
        sub = build(q - qs, k - k0, np.zeros(len(q), dtype=np.int64), qe - qs, k1 - k0)
        if sub.native is None:
            return None
        parts.append(MaskPart((qs, qe), (k0, k1), sub))
    return tuple(sorted(parts, key=lambda p: -(p.covers[0] * p.covers[1])))
