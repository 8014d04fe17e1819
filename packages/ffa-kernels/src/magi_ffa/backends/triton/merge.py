"""One-pass LSE merge of a partial result into accumulators (a Triton kernel).

Why: backends that cannot accumulate inside their kernel (fa4) return each call's (out, lse) and
merge it into the caller's accumulators. ``magi_ffa.merge.correct_attn_out_lse`` does that in
about a dozen elementwise torch ops, each a full pass over [Sq, h, d]; in the context-parallel
runtime, where every stage merges, those passes cost as much GPU time as the attention kernels on
sparse masks. This kernel reads each operand once and writes the accumulators once, with the
same arithmetic (terms of weight 0, lse = -inf, are skipped, never multiplied).
"""

from __future__ import annotations

import os

import torch

__all__ = ["merge_into_"]

_ROWS = 16  # (token, head) rows per program
# fp32 accumulators, or a low-precision one (the runtime's buffers with at most two contributors):
# the arithmetic is fp32 either way, the result rounded once when stored
_ACC_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _merge_kernel(acc_ptr, acc_lse_ptr, part_ptr, part_lse_ptr, empty_ptr, n_rows, heads, head_dim,
                      part_lse_stride_s, part_lse_stride_h,
                      HAS_EMPTY: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        live = rows < n_rows
        l_acc = tl.load(acc_lse_ptr + rows, mask=live, other=-float("inf"))
        l_part = tl.load(part_lse_ptr + (rows // heads) * part_lse_stride_s + (rows % heads) * part_lse_stride_h,
                         mask=live, other=-float("inf"))
        if HAS_EMPTY:  # rows that see no key: the kernel's values there are not results
            empty = tl.load(empty_ptr + rows // heads, mask=live, other=0) != 0
            l_part = tl.where(empty, -float("inf"), l_part)
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


_compiled = None


def merge_into_(acc: torch.Tensor, acc_lse: torch.Tensor, part: torch.Tensor, part_lse: torch.Tensor,
                empty_rows: torch.Tensor | None = None) -> bool:
    """Merge (part, part_lse) into (acc, acc_lse) in place; returns False (and does nothing) when
    the tensors are not the kernel's case, so the caller falls back to the torch merge.

    acc: fp32, fp16 or bf16 [Sq, h, d]; acc_lse: fp32 [Sq, h]; part: [Sq, h, d] any float dtype; part_lse: fp32
    [Sq, h], any strides (FA4 gives a transposed view); empty_rows: bool [Sq] rows whose part
    counts as empty (lse -inf). The others contiguous, on one device, d <= 256.
    """
    global _compiled
    if not (acc.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"):
        return False
    if acc.dtype not in _ACC_DTYPES or acc_lse.dtype != torch.float32 or part_lse.dtype != torch.float32:
        return False
    if acc.dim() != 3 or part.shape != acc.shape or acc_lse.shape != acc.shape[:2] or part_lse.shape != acc_lse.shape:
        return False
    if not all(t.is_contiguous() for t in (acc, acc_lse, part)) or acc.shape[2] > 256:
        return False
    if empty_rows is not None and (empty_rows.shape != acc.shape[:1] or not empty_rows.is_contiguous()):
        return False
    n_rows = acc.shape[0] * acc.shape[1]
    if n_rows == 0:
        return True
    if _compiled is None:
        _compiled = _kernel()
    import triton

    empty = empty_rows.view(torch.uint8) if empty_rows is not None else acc_lse  # unused when None
    _compiled[(triton.cdiv(n_rows, _ROWS),)](
        acc, acc_lse, part, part_lse, empty, n_rows, acc.shape[1], acc.shape[2], part_lse.stride(0),
        part_lse.stride(1),
        HAS_EMPTY=empty_rows is not None, ROWS=_ROWS, BLOCK_D=triton.next_power_of_2(acc.shape[2]))
    return True
