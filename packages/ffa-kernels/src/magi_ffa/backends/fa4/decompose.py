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
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["ENV", "MaskPart", "decompose", "enabled"]

ENV = "MAGI_FFA_FA4_DECOMPOSE"
_MODES = {"0": (), "off": (), "bwd": ("bwd",), "1": ("fwd", "bwd"), "all": ("fwd", "bwd")}


def enabled(direction: str) -> bool:
    """Whether ``direction`` ("fwd" / "bwd") runs decomposed masks as parts (env ``ENV``)."""
    mode = os.environ.get(ENV, "bwd").strip().lower()
    if mode not in _MODES:
        raise ValueError(f"{ENV}={mode!r}: expected one of {sorted(_MODES)}")
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
