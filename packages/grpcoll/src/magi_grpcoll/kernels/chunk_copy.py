"""Chunk copy: move runs of consecutive rows, each run to its own destination buffer.

The native implementation's data mover. A chunk ``(src_row, dst_row, n_rows, dst)`` copies rows
``[src_row, src_row + n_rows)`` of ``src`` to rows ``[dst_row, ...)`` of a destination: a peer's
symmetric-memory buffer when ``dst >= 0`` (its address read from the device array of peer buffer
addresses, plus a byte offset) or the local ``out`` tensor when ``dst == -1``. Why chunks and not
rows: a program that moves one 4 KiB row keeps too few stores in flight to fill NVLink; a program
that moves a 64 KiB run with 16-byte vector accesses does, and one launch can mix remote pushes
with local copies so the HBM and NVLink traffic overlap.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from magi_grpcoll.kernels._select import triton_available
from magi_grpcoll.transfer import upload

__all__ = ["CHUNK_BYTES", "build_chunks", "build_runs", "copy_chunks", "copy_runs", "row_bytes"]

CHUNK_BYTES = 64 * 1024  # bytes one program moves at most
_BLOCK_WORDS = 2048  # 8 KiB per loop step: 16 words, four 16-byte accesses per thread (4 warps)


def row_bytes(t: torch.Tensor) -> int:
    """Bytes of one dim-0 row of ``t``."""
    return math.prod(t.shape[1:]) * t.element_size()


def _host_int64(t) -> np.ndarray:
    """A 1-D int64 numpy array of ``t`` (a tensor, on any device, or anything array-like)."""
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.int64).numpy()
    return np.asarray(t, dtype=np.int64)


def build_chunks(src_rows, dst_rows, dst, row_nbytes: int, device=None,
                 max_bytes: int | None = CHUNK_BYTES) -> torch.Tensor:
    """Chunk table [C, 4] int64 (src_row, dst_row, n_rows, dst) of a row-by-row copy description.

    Row i goes from ``src_rows[i]`` to row ``dst_rows[i]`` of destination ``dst[i]``. Consecutive rows
    that continue each other on both sides and share a destination become one run; runs are cut so
    that no chunk moves more than ``max_bytes`` (None: whole runs). Built on the host, once per
    bound plan, in numpy: a new mask binds new plans every step, and torch's per-operator cost on
    these host arrays doubled the time.
    """
    src_rows, dst_rows, dst = (_host_int64(t) for t in (src_rows, dst_rows, dst))
    n = src_rows.size
    if n == 0:
        return torch.empty((0, 4), dtype=torch.int64, device=device)
    brk = np.ones(n, dtype=bool)
    brk[1:] = (src_rows[1:] != src_rows[:-1] + 1) | (dst_rows[1:] != dst_rows[:-1] + 1) | (dst[1:] != dst[:-1])
    # runs, then each cut into pieces of max_rows (per run, not per row)
    run_first = np.flatnonzero(brk)
    run_len = np.diff(run_first, append=n)
    max_rows = n if max_bytes is None else max(1, max_bytes // max(row_nbytes, 1))
    pieces = (run_len + max_rows - 1) // max_rows
    if int(pieces.max()) == 1:
        starts, lens = run_first, run_len
    else:
        piece = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        starts = np.repeat(run_first, pieces) + piece * max_rows
        lens = np.minimum(np.repeat(run_first + run_len, pieces) - starts, max_rows)
    table = torch.from_numpy(_interleave(np.stack([src_rows[starts], dst_rows[starts], lens, dst[starts]], axis=1)))
    return upload(table, device) if device is not None else table


def build_runs(src_rows: torch.Tensor, dst_rows: torch.Tensor, dst: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """The whole runs (src_row, dst_row, n_rows, dst) of a row-by-row copy description, as host
    ints: what :func:`copy_runs` issues, one copy per run."""
    return [tuple(r) for r in build_chunks(src_rows, dst_rows, dst, 1, max_bytes=None).tolist()]


def copy_runs(src: torch.Tensor, runs, *, out: torch.Tensor | None, peer_views) -> None:
    """Copy each run with ``Tensor.copy_`` of contiguous row slices: on CUDA one ``cudaMemcpyAsync``
    per run, which the copy engines carry (over NVLink when the destination is a peer's mapped
    buffer) without taking an SM from the kernels running beside it.

    Args:
        src: [S, ...] rows to read (contiguous).
        runs: (src_row, dst_row, n_rows, dst) from :func:`build_runs`.
        out: the destination of runs with ``dst == -1`` (rows like ``src``'s).
        peer_views: ``peer_views[r]`` is peer r's destination, rows like ``src``'s (for CUDA, a
            tensor on this device mapping the peer's buffer, e.g. a symmetric-memory handle's
            ``get_buffer``).
    """
    for s, d, n, who in runs:
        target = out if who < 0 else peer_views[who]
        target[d:d + n].copy_(src[s:s + n])


def _interleave(table: np.ndarray) -> np.ndarray:
    """Order chunks by how far into its destination's rows each starts (as a fraction), so the
    programs running at any moment write to every destination at once: the NVLink pushes and the
    local copy overlap instead of running one after the other (they ran back to back in send
    order: 0.70 ms vs 0.60 ms for the pushes alone at 64k tokens on 2 H200)."""
    lens, who = table[:, 2].astype(np.float64), table[:, 3]
    frac = np.empty_like(lens)
    for w in range(int(who.min()), int(who.max()) + 1):  # destinations: -1 (local) and the peers
        sel = who == w
        if sel.any():
            ln = lens[sel]
            frac[sel] = (np.cumsum(ln) - ln) / ln.sum()
    return table[np.argsort(frac, kind="stable")]


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _copy_chunks_kernel(chunks_ptr, src_addr, peer_bufs_addr, out_addr, dst_offset_bytes, row_words,
                            ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
        # one program per chunk; data moves as int32 words (row sizes are multiples of 4 bytes)
        c = tl.program_id(0).to(tl.int64)
        s = tl.load(chunks_ptr + c * 4)
        d = tl.load(chunks_ptr + c * 4 + 1)
        n = tl.load(chunks_ptr + c * 4 + 2)
        who = tl.load(chunks_ptr + c * 4 + 3)
        # addresses arrive as Python ints (typed i32 when small, e.g. 0): widen before the cast
        peer_bufs = peer_bufs_addr.to(tl.int64).to(tl.pointer_type(tl.int64))
        peer_base = tl.load(peer_bufs + tl.maximum(who, 0), mask=who >= 0, other=0) + dst_offset_bytes
        base = tl.where(who >= 0, peer_base, out_addr.to(tl.int64)).to(tl.pointer_type(tl.int32))
        if ALIGNED:  # every base address and row size is a multiple of 16 bytes: vector accesses
            base = tl.multiple_of(base, 16)
        src_base = src_addr.to(tl.int64).to(tl.pointer_type(tl.int32))
        if ALIGNED:
            src_base = tl.multiple_of(src_base, 16)
        dst = base + d * row_words
        src = src_base + s * row_words
        total = n * row_words
        for off in range(0, total, BLOCK):
            o = tl.max_contiguous(tl.multiple_of(off + tl.arange(0, BLOCK), BLOCK), BLOCK)
            m = o < total
            tl.store(dst + o, tl.load(src + o, mask=m), mask=m)


def copy_chunks(src: torch.Tensor, chunks: torch.Tensor, *, out: torch.Tensor | None = None,
                peer_bufs_addr: int = 0, dst_offset_bytes: int = 0, peer_align_16: bool = True,
                block_words: int = _BLOCK_WORDS, num_warps: int = 4) -> None:
    """Run a chunk table (see :func:`build_chunks`) on the current stream.

    Args:
        src: contiguous [S, ...] rows to read (row size a multiple of 4 bytes).
        chunks: [C, 4] int64 table on ``src``'s device.
        out: the local destination of chunks with ``dst == -1`` (same row size as ``src``).
        peer_bufs_addr: device address of the array of peer buffer addresses (chunks with ``dst >= 0``).
        dst_offset_bytes: added to every peer buffer address.
        peer_align_16: the peer buffer addresses are multiples of 16 bytes.
        block_words / num_warps: launch shape (the defaults were measured best; profile_native.py
            sweeps them).
    """
    n_chunks = int(chunks.shape[0])
    if n_chunks == 0:
        return
    rb = row_bytes(src)
    if not src.is_contiguous():
        raise ValueError("copy_chunks(): src must be contiguous (rows are read from its raw address).")
    if rb % 4:
        raise ValueError(f"copy_chunks(): row size {rb} bytes is not a multiple of 4.")
    src_addr = src.data_ptr()
    out_addr = out.data_ptr() if out is not None else 0
    aligned = (rb % 16 == 0 and src_addr % 16 == 0 and out_addr % 16 == 0
               and dst_offset_bytes % 16 == 0 and peer_align_16)
    _copy_chunks_kernel[(n_chunks,)](chunks, src_addr, peer_bufs_addr, out_addr, dst_offset_bytes, rb // 4,
                                     ALIGNED=aligned, BLOCK=block_words, num_warps=num_warps)
