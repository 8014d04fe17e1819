"""Masks FA4 runs with its own masking, without block lists or a mask function.

FA4's mask function costs: it is evaluated per cell of every partial tile and reads the row's
interval from global memory each time, so on an H100 it doubled the kernel time of a 1k sliding
window (16k tokens) and added 12% to causal. FA4's built-in causal, local-window and varlen
masking costs almost nothing. The common masks are exactly those, so they are recognised here,
on the host, once per mask (the result is cached with the block lists), from each row's visible key
interval (not from the slices, so any slicing of the same mask is recognised):

* every row seeing every key (full, Sq and Sk free: a rectangle of a decomposed mask, decompose.py);
* one sequence (Sq == Sk) where row r sees ``[max(0, r - left), min(S, r + right + 1))``: full (no
  bound), causal (right 0, no left bound) or a sliding window (FA4 "local");
* documents (FA4 varlen, ``cu_seqlens_q`` / ``cu_seqlens_k``): runs of rows that see one key range,
  all full or all causal (bottom-right aligned, so a run may have fewer rows than keys), with key
  ranges that neither overlap nor go backwards. Rows that see nothing and keys nobody reads become
  documents with no keys or no rows. Beyond the square documents of a varlen mask, this covers what
  the context-parallel runtime hands one stage: a rank's chunks of each document, back to back.
  Documents without keys are given no used rows (FA4 ``seqused_q`` 0) in the directions of
  ``SKIP_ROWS_WITHOUT_KEYS_IN``: FA4 launches nothing for them and leaves their rows unwritten (the
  forward's out/lse, the backward's dq), which the caller treats as not computed
  (``SliceBlockMask.empty_rows`` / ``skipped_rows``). In a runtime remote stage these are most of
  the rank's rows, which FA4 would otherwise visit: the forward's epilogue, the backward's pre- and
  post-processing.
* documents of one length on the diagonal, all full or all causal (FA4's batch layout [B, S / B]:
  the inputs are viewed, not copied), FA4's plainest path: no per-tile document lookup. Through
  ``flex_flash_attn_func`` on an H200, causal documents of 2048 tokens ran 1.03-1.04x as fast in the
  backward as the same documents as varlen, the forward within noise (0.96-1.03x; BENCHMARKS.md
  "Varlen causal against causal of the same area, kernel by kernel"). Behind ``BATCHED_DOCUMENTS``.
* documents on the diagonal with one causal sliding window (FA4 varlen with a local window): row r
  of a document starting at a sees ``[max(a, r - left), r + 1)``. Sliding windows within documents,
  and a runtime host stage of a sliding window whose rank holds two pieces of the sequence (the
  rotated sequential dispatch). Behind ``VARLEN_WINDOWS`` (on; verified on 2 x H200 by
  ``test_gpu_fa4.py -k window_documents``).

Anything else goes through the block lists and the mask function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from magi_ffa.transfer import to_device

__all__ = ["NativeMask", "recognise_native"]


#: the directions whose FA4 calls skip the rows of documents without keys (``seqused_q``); a switch
#: for A/B runs (both on: 2 x H200, BENCHMARKS.md)
SKIP_ROWS_WITHOUT_KEYS_IN = frozenset({"fwd", "bwd"})


@dataclass(frozen=True)
class NativeMask:
    """FA4's own mask arguments. Windows are inclusive key offsets from the row (None: unbounded)."""

    causal: bool = False
    window_left: int | None = None
    window_right: int | None = None
    cu_seqlens_q: torch.Tensor | None = None  # int32 [docs + 1]: varlen documents' rows
    cu_seqlens_k: torch.Tensor | None = None  # int32 [docs + 1]: their keys
    max_seqlen_q: int | None = None
    max_seqlen_k: int | None = None
    seqused_q: torch.Tensor | None = None  # int32 [docs]: rows FA4 computes (0 for documents without keys)
    batch: int = 1  # documents of one length, run as FA4's batch layout [batch, S / batch]

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens_q is not None

    def fa4_kwargs(self, direction: str = "fwd") -> dict:
        """FA4's keyword arguments for a forward ("fwd") or backward ("bwd") call."""
        kw: dict = {"causal": self.causal}
        if self.window_left is not None or self.window_right is not None:
            kw.update(window_size_left=self.window_left, window_size_right=self.window_right)
        if self.varlen:
            kw.update(cu_seqlens_q=self.cu_seqlens_q, cu_seqlens_k=self.cu_seqlens_k,
                      max_seqlen_q=self.max_seqlen_q, max_seqlen_k=self.max_seqlen_k)
        if self.skips_rows(direction):
            kw["seqused_q"] = self.seqused_q
        return kw

    def skips_rows(self, direction: str) -> bool:
        """Whether FA4 calls in `direction` leave the rows that see no key uncomputed."""
        return self.seqused_q is not None and direction in SKIP_ROWS_WITHOUT_KEYS_IN

    @property
    def device_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors of fa4_kwargs (constant while the mask is cached)."""
        found = (self.cu_seqlens_q, self.cu_seqlens_k, self.seqused_q)
        return tuple(t for t in found if t is not None)


def _bound(offsets: np.ndarray, active: np.ndarray) -> tuple[bool, int | None]:
    """(consistent, w): the rows where the edge is not clipped (`active`) must all sit at one
    offset w >= 0 from the diagonal; no such row means the edge is unbounded (None)."""
    if not active.any():
        return True, None
    w = int(offsets[active][0])
    return bool(w >= 0 and (offsets[active] == w).all()), w


def _window_ruled_out(lo: np.ndarray, hi: np.ndarray, seqlen: int) -> bool:
    """Whether a few rows already show that ``_window`` will find no window: the last row, if its
    start is clipped, fixes ``left`` for every clipped row; the first row, if its end is clipped,
    fixes ``right``. Why: a varlen mask of many documents reaches ``_window`` first, and the full
    check cost it ~0.6 ms at 64k rows on the development machine."""
    last = seqlen - 1
    for r in (seqlen // 4, seqlen // 2, 3 * seqlen // 4):
        if lo[last] > 0 and lo[r] > 0 and r - int(lo[r]) != last - int(lo[last]):
            return True
        if hi[0] < seqlen and hi[r] < seqlen and int(hi[r]) - 1 - r != int(hi[0]) - 1:
            return True
    return False


def _window(lo: np.ndarray, hi: np.ndarray, seqlen: int) -> NativeMask | None:
    """One sequence with a (possibly unbounded) window per row, or None."""
    if _window_ruled_out(lo, hi, seqlen):
        return None
    r = np.arange(seqlen, dtype=np.int64)
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    ok_l, left = _bound(r - lo, lo > 0)
    ok_r, right = _bound(hi - 1 - r, hi < seqlen)
    if not (ok_l and ok_r):
        return None
    want_lo = np.zeros_like(r) if left is None else np.maximum(0, r - left)
    want_hi = np.full_like(r, seqlen) if right is None else np.minimum(seqlen, r + right + 1)
    if not (np.array_equal(lo, want_lo) and np.array_equal(hi, want_hi)):
        return None
    if left is None and right == 0:
        return NativeMask(causal=True)
    return NativeMask(window_left=left, window_right=right)


#: FA4 varlen calls with a local window (``_window_documents``). On since it passed on 2 x H200; with the
#: rotated sequential dispatch it took a 64k sliding window at cp 2 from 0.88 / 0.81 to 0.94 / 0.92
#: scaling efficiency (BENCHMARKS.md). Off: such masks go through the block lists.
VARLEN_WINDOWS = True

#: equal documents on the diagonal run as FA4's batch layout instead of varlen (``_documents``). Off:
#: they run varlen, like documents of different lengths.
BATCHED_DOCUMENTS = True

#: a mask read as more documents than one per this many rows keeps the block lists: FA4 gives each
#: document its own tiles, while block lists pack short documents into shared tiles
MIN_ROWS_PER_DOCUMENT = 16


def row_runs(lo: np.ndarray, hi: np.ndarray, causal: bool):
    """Maximal runs of rows one document expresses: (q start, q end, k start, k end, sees keys) per
    run, whether or not their key ranges overlap (``decompose.row_layers`` places overlapping ones in
    layers).

    Full: consecutive rows with the same interval. Causal (bottom-right aligned): the same start and
    an end one further each row. Rows that see nothing form runs of their own.
    """
    n = lo.shape[0]
    empty = hi <= lo
    step = (hi[1:] == hi[:-1] + 1) if causal else (hi[1:] == hi[:-1])
    joins = (empty[1:] & empty[:-1]) | (~empty[1:] & ~empty[:-1] & (lo[1:] == lo[:-1]) & step)
    qs = np.flatnonzero(np.concatenate([[True], ~joins]))
    qe = np.append(qs[1:], n)
    return qs, qe, lo[qs], hi[qe - 1], ~empty[qs]


def _runs(lo: np.ndarray, hi: np.ndarray, causal: bool):
    """``row_runs``, or None when the key ranges of the runs that see keys overlap or go backwards
    (one call of FA4 varlen documents cannot run them)."""
    qs, qe, ks, ke, sees = row_runs(lo, hi, causal)
    if (ks[sees][1:] < ke[sees][:-1]).any():
        return None
    return qs, qe, ks, ke, sees


def _documents(lo: np.ndarray, hi: np.ndarray, seqlen_q: int, seqlen_k: int, device) -> NativeMask | None:
    """One row interval per row, read as FA4 varlen documents (see the module docstring), or None."""
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    for causal in (True, False):
        runs = _runs(lo, hi, causal)
        if runs is not None:
            break
    else:
        return None
    qs, qe, ks, ke, sees = runs
    if not sees.any() or len(qs) > max(MIN_ROWS_PER_DOCUMENT, seqlen_q // MIN_ROWS_PER_DOCUMENT):
        return None
    q_len, k_len, used, cursor = [], [], [], 0
    for a, b, c, d, s in zip(qs.tolist(), qe.tolist(), ks.tolist(), ke.tolist(), sees.tolist()):
        if not s:  # rows that see nothing: a document without keys, and without used rows
            q_len.append(b - a), k_len.append(0), used.append(0)
            continue
        if c > cursor:  # keys no row reads: a document without rows
            q_len.append(0), k_len.append(c - cursor), used.append(0)
        q_len.append(b - a), k_len.append(d - c), used.append(b - a)
        cursor = d
    if cursor < seqlen_k:
        q_len.append(0), k_len.append(seqlen_k - cursor), used.append(0)
    if BATCHED_DOCUMENTS and len(q_len) > 1 and q_len == k_len and len(set(q_len)) == 1:
        return NativeMask(causal=causal, batch=len(q_len))  # no empty documents: used == q_len
    cu_q = np.concatenate([[0], np.cumsum(q_len)])
    cu_k = np.concatenate([[0], np.cumsum(k_len)])
    as_tensor = lambda a: to_device(np.asarray(a, dtype=np.int32), device)  # noqa: E731
    return NativeMask(causal=causal, cu_seqlens_q=as_tensor(cu_q), cu_seqlens_k=as_tensor(cu_k),
                      max_seqlen_q=max(q_len), max_seqlen_k=max(k_len),
                      seqused_q=as_tensor(used) if used != q_len else None)


def _window_documents(lo: np.ndarray, hi: np.ndarray, seqlen: int, device) -> NativeMask | None:
    """Documents on the diagonal with one causal sliding window (see the module docstring), or None.
    A document starts where a row sees only itself; its rows see back to its start or ``left`` keys,
    whichever is nearer, and some row of some document must be cut by the window (else it is plain
    varlen causal, which ``_documents`` reads)."""
    r = np.arange(seqlen, dtype=np.int64)
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    if not np.array_equal(hi, r + 1):  # every row sees itself last: the diagonal, no empty row
        return None
    begins = lo == r  # a row that sees only itself starts a document
    start = np.maximum.accumulate(np.where(begins, r, 0))  # each row's document start
    cut = lo > start
    if not cut.any():
        return None
    left = int(r[cut][0] - lo[cut][0])
    if not np.array_equal(lo, np.maximum(start, r - left)):
        return None
    starts = np.flatnonzero(begins)
    if len(starts) > max(MIN_ROWS_PER_DOCUMENT, seqlen // MIN_ROWS_PER_DOCUMENT):
        return None
    cu = np.append(starts, seqlen)
    cu_t = to_device(cu.astype(np.int32), device)
    longest = int(np.diff(cu).max())
    return NativeMask(window_left=left, window_right=0, cu_seqlens_q=cu_t, cu_seqlens_k=cu_t,
                      max_seqlen_q=longest, max_seqlen_k=longest)


def recognise_native(lo: np.ndarray, hi: np.ndarray, seqlen_q: int, seqlen_k: int, device=None) -> NativeMask | None:
    """The FA4-native form of a mask given its merged row intervals `lo`/`hi` [K, Sq]
    (``block_sparse.row_intervals``), or None."""
    if seqlen_q == 0 or seqlen_k == 0 or lo.shape[0] != 1:
        return None
    if (lo[0] == 0).all() and (hi[0] == seqlen_k).all():  # every row sees every key: full, any Sq/Sk
        return NativeMask()
    if seqlen_q == seqlen_k and (hi[0] > lo[0]).all():
        found = _window(lo[0], hi[0], seqlen_q)
        if found is not None:
            return found
    found = _documents(lo[0], hi[0], seqlen_q, seqlen_k, device)
    if found is None and VARLEN_WINDOWS and seqlen_q == seqlen_k:
        found = _window_documents(lo[0], hi[0], seqlen_q, device)
    return found
