"""Plain-Python reference cell sets for the geometry tests (rules of contracts.md, no solver code)."""

from __future__ import annotations

CODES = {"full": 0, "causal": 1, "inv_causal": 2, "bi_causal": 3}


def slice_cells(qs: int, qe: int, ks: int, ke: int, code: int) -> set[tuple[int, int]]:
    """Visible cells of one slice, straight from the mask predicate on local (i, j)."""
    lq, lk = qe - qs, ke - ks
    cells = set()
    for i in range(lq):
        for j in range(lk):
            causal_ok = j <= i + lk - lq
            inv_ok = j >= i
            visible = {0: True, 1: causal_ok, 2: inv_ok, 3: causal_ok and inv_ok}[code]
            if visible:
                cells.add((qs + i, ks + j))
    return cells


def band_cells(qs: int, qe: int, ks: int, ke: int, d_lo: int, d_hi: int) -> set[tuple[int, int]]:
    """Cells of a box cut by the closed diagonal band d_lo <= k - q <= d_hi."""
    return {(q, k) for q in range(qs, qe) for k in range(ks, ke) if d_lo <= k - q <= d_hi}


def rect_cells(rect) -> set[tuple[int, int]]:
    """Cells of an AttnRectangle read back through its public bounds."""
    q, k = rect.q_range, rect.k_range
    return band_cells(q.start, q.end, k.start, k.end, rect.d_lo, rect.d_hi)


def tokens(pairs) -> set[int]:
    """Token set of a list of (start, end) pairs."""
    out: set[int] = set()
    for s, e in pairs:
        out.update(range(s, e))
    return out


def runs(token_set: set[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive tokens, ascending: the merged form of a token set."""
    out: list[tuple[int, int]] = []
    for t in sorted(token_set):
        if out and out[-1][1] == t:
            out[-1] = (out[-1][0], t + 1)
        else:
            out.append((t, t + 1))
    return out
