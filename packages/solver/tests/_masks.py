"""Dense brute-force mask helpers shared by the dispatch, plan and dynamic-solver tests.

They apply the contract's cell predicate directly (no solver code), as numpy matrices.
"""

from __future__ import annotations

import numpy as np


def slice_cells(lq: int, lk: int, t: int) -> np.ndarray:
    """bool [lq, lk]: visible cells of one slice (contract predicate, by brute force)."""
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    causal = j <= i + lk - lq
    inv = j >= i
    return {0: np.ones((lq, lk), bool), 1: causal, 2: inv, 3: causal & inv}[t]


def dense_mask(qr, kr, ts, total: int) -> np.ndarray:
    """int [T, T]: how many slices list each cell (the slices of a valid mask give 0/1)."""
    m = np.zeros((total, total), np.int64)
    for (qs, qe), (ks, ke), t in zip(qr, kr, ts):
        if qe > qs and ke > ks:
            m[qs:qe, ks:ke] += slice_cells(qe - qs, ke - ks, t)
    return m
