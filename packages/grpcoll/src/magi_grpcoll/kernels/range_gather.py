"""Row gather ``out[i] = src[rows[i]]`` (the a2a pre-permutation and the cast un-permutation)."""

from __future__ import annotations

import torch

from magi_grpcoll.kernels._select import triton_available, use_triton

__all__ = ["gather_rows"]

_BLOCK = 1024

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _gather_rows_kernel(src_ptr, dst_ptr, rows_ptr, row_elems, BLOCK: tl.constexpr):
        # one program per (destination row, column block); int64 offsets for tensors past 2^31 elements
        i = tl.program_id(0).to(tl.int64)
        cb = tl.program_id(1)
        s = tl.load(rows_ptr + i).to(tl.int64)
        offs = cb * BLOCK + tl.arange(0, BLOCK)
        m = offs < row_elems
        x = tl.load(src_ptr + s * row_elems + offs, mask=m)
        tl.store(dst_ptr + i * row_elems + offs, x, mask=m)


def gather_rows(src: torch.Tensor, rows: torch.Tensor, out: torch.Tensor | None = None, *,
                backend: str | None = None) -> torch.Tensor:
    """Gather rows of ``src`` [S, ...] by ``rows`` [N] int64 into ``out`` [N, ...] (allocated if None)."""
    n = int(rows.numel())
    if out is None:
        out = torch.empty((n, *src.shape[1:]), dtype=src.dtype, device=src.device)
    if n == 0:
        return out
    if not use_triton(src, backend):
        torch.index_select(src, 0, rows, out=out)
        return out
    row_elems = src[0].numel() if src.shape[0] > 0 else out[0].numel()
    if row_elems == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(row_elems))
    grid = (n, triton.cdiv(row_elems, block))
    _gather_rows_kernel[grid](src, out, rows, row_elems, BLOCK=block)
    return out
