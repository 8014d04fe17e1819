"""One-pass LSE merge of a partial result into accumulators, and the backward's gradient add
(Triton kernels).

Why: backends that cannot accumulate inside their kernel (fa4) return each call's (out, lse) and
merge it into the caller's accumulators. ``magi_ffa.merge.correct_attn_out_lse`` does that in
about a dozen elementwise torch ops, each a full pass over [Sq, h, d]; in the context-parallel
runtime, where every stage merges, those passes cost as much GPU time as the attention kernels on
sparse masks. This kernel reads each operand once and writes the accumulators once, with the
same arithmetic (terms of weight 0, lse = -inf, are skipped, never multiplied). Given the rows the
call computed (``rows``), it runs over those alone: in a remote stage the others are most rows, and
a grid over all of them spent most of the merge's time on programs that found nothing to do.
"""

from __future__ import annotations

import os

import torch

__all__ = ["add_into_", "merge_into_", "zero_rows_"]

_ROWS = 16  # (token, head) rows per program
# fp32 accumulators, or a low-precision one (the runtime's buffers with at most two contributors):
# the arithmetic is fp32 either way, the result rounded once when stored
_ACC_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _merge_kernel(acc_ptr, acc_lse_ptr, part_ptr, part_lse_ptr, tokens_ptr, n_rows, heads, head_dim,
                      part_lse_stride_s, part_lse_stride_h,
                      INDEXED: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (token, head) rows
        live = i < n_rows
        if INDEXED:  # the i-th row of the listed tokens; the others stay as they are (merged with nothing)
            rows = tl.load(tokens_ptr + i // heads, mask=live, other=0).to(tl.int64) * heads + i % heads
        else:
            rows = i
        l_acc = tl.load(acc_lse_ptr + rows, mask=live, other=-float("inf"))
        l_part = tl.load(part_lse_ptr + (rows // heads) * part_lse_stride_s + (rows % heads) * part_lse_stride_h,
                         mask=live, other=-float("inf"))
        hi = tl.maximum(l_acc, l_part)
        lo = tl.minimum(l_acc, l_part)
        hi_safe = tl.where(hi == -float("inf"), 0.0, hi)
        new = hi + tl.log(1.0 + tl.exp(lo - hi_safe))
        new_safe = tl.where(new == -float("inf"), 0.0, new)
        w_acc = tl.exp(l_acc - new_safe)
        w_part = tl.exp(l_part - new_safe)
        cols = tl.arange(0, BLOCK_D)
        m = live[:, None] & (cols[None, :] < head_dim)
        offs = rows[:, None] * head_dim + cols[None, :]
        o_acc = tl.load(acc_ptr + offs, mask=m, other=0.0).to(tl.float32)
        o_part = tl.load(part_ptr + offs, mask=m, other=0.0).to(tl.float32)
        res = tl.where(w_acc[:, None] == 0.0, 0.0, w_acc[:, None] * o_acc) + \
            tl.where(w_part[:, None] == 0.0, 0.0, w_part[:, None] * o_part)
        tl.store(acc_ptr + offs, res.to(acc_ptr.dtype.element_ty), mask=m)
        tl.store(acc_lse_ptr + rows, new, mask=live)

    return _merge_kernel


def _row_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _add_rows_kernel(acc_ptr, part_ptr, skip_ptr, row_elems, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        if tl.load(skip_ptr + row) != 0:
            return
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < row_elems
        offs = row * row_elems + cols
        a = tl.load(acc_ptr + offs, mask=m).to(tl.float32)
        b = tl.load(part_ptr + offs, mask=m).to(tl.float32)
        tl.store(acc_ptr + offs, (a + b).to(acc_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _zero_rows_kernel(buf_ptr, rows_ptr, row_elems, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        if tl.load(rows_ptr + row) == 0:
            return
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < row_elems
        tl.store(buf_ptr + row * row_elems + cols, tl.zeros([BLOCK], buf_ptr.dtype.element_ty), mask=m)

    return _add_rows_kernel, _zero_rows_kernel


_compiled = None
_compiled_rows = None


def _per_row(kernel_index: int, first: torch.Tensor, *args) -> None:
    """Launch a row kernel over `first` [S, ...] (one program per row and column block)."""
    global _compiled_rows
    if _compiled_rows is None:
        _compiled_rows = _row_kernels()
    import triton

    row_elems = first[0].numel()
    block = min(4096, triton.next_power_of_2(row_elems))
    _compiled_rows[kernel_index][(first.shape[0], triton.cdiv(row_elems, block))](
        first, *args, row_elems, BLOCK=block)


def _triton_ok(*tensors: torch.Tensor) -> bool:
    """Whether the kernels here can run on `tensors`: on a GPU (or the Triton interpreter), contiguous."""
    first = tensors[0]
    return (first.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1") and all(
        t.is_contiguous() for t in tensors)


def zero_rows_(buf: torch.Tensor, rows: torch.Tensor) -> None:
    """buf[rows] = 0 for bool `rows` [S], writing those rows only: torch's masked fill reads the
    mask and rewrites every element (at a 64k varlen remote stage's dq on H200 it took 172 us,
    more than FA4 saved by leaving those rows out)."""
    if rows.shape != buf.shape[:1]:
        raise ValueError(f"zero_rows_(): rows {tuple(rows.shape)} must match buf's rows {tuple(buf.shape[:1])}.")
    if not _triton_ok(buf, rows):
        buf.masked_fill_(rows.view(-1, *[1] * (buf.dim() - 1)), 0)
    elif buf.numel():
        _per_row(1, buf, rows.view(torch.uint8))


def add_into_(acc: torch.Tensor, part: torch.Tensor, skip_rows: torch.Tensor | None) -> None:
    """acc += part on the rows not in `skip_rows` (bool [S]; the part's other rows are not results,
    any values, NaN included); acc and part [S, ...] contiguous. One pass over the added rows on a
    GPU (or under the Triton interpreter); torch elsewhere."""
    if skip_rows is None:
        acc.add_(part)
        return
    if acc.shape != part.shape or skip_rows.shape != acc.shape[:1]:
        raise ValueError(f"add_into_(): acc {tuple(acc.shape)}, part {tuple(part.shape)} and skip_rows "
                         f"{tuple(skip_rows.shape)} must agree on the rows.")
    if not _triton_ok(acc, part, skip_rows):
        acc.add_(part.masked_fill(skip_rows.view(-1, *[1] * (acc.dim() - 1)), 0))
    elif acc.numel():
        _per_row(0, acc, part, skip_rows.view(torch.uint8))


def merge_into_(acc: torch.Tensor, acc_lse: torch.Tensor, part: torch.Tensor, part_lse: torch.Tensor,
                rows: torch.Tensor | None = None) -> bool:
    """Merge (part, part_lse) into (acc, acc_lse) in place; returns False (and does nothing) when
    the tensors are not the kernel's case, so the caller falls back to the torch merge.

    acc: fp32, fp16 or bf16 [Sq, h, d], 0 where acc_lse is -inf (as every accumulator the backends
    write); acc_lse: fp32 [Sq, h]; part: [Sq, h, d] any float dtype; part_lse: fp32
    [Sq, h], any strides (FA4 gives a transposed view); rows: int32/int64 [n], the only rows to
    merge (the part's other rows count as empty: lse -inf, any values; None: every row). The others
    contiguous, on one device, d <= 256.
    """
    global _compiled
    if not _triton_ok(acc, acc_lse, part):
        return False
    if acc.dtype not in _ACC_DTYPES or acc_lse.dtype != torch.float32 or part_lse.dtype != torch.float32:
        return False
    if acc.dim() != 3 or part.shape != acc.shape or acc_lse.shape != acc.shape[:2] or part_lse.shape != acc_lse.shape:
        return False
    if acc.shape[2] > 256:
        return False
    if rows is not None and (rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64)
                             or not rows.is_contiguous()):
        return False
    n_rows = (acc.shape[0] if rows is None else rows.shape[0]) * acc.shape[1]
    if n_rows == 0:
        return True
    if _compiled is None:
        _compiled = _kernel()
    import triton

    _compiled[(triton.cdiv(n_rows, _ROWS),)](
        acc, acc_lse, part, part_lse, acc_lse if rows is None else rows, n_rows, acc.shape[1], acc.shape[2],
        part_lse.stride(0), part_lse.stride(1),
        INDEXED=rows is not None, ROWS=_ROWS, BLOCK_D=triton.next_power_of_2(acc.shape[2]))
    return True
