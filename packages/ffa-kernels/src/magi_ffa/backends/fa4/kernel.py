"""The calls into Flash-Attention 4 (``flash_attn.cute``, CuTe DSL): one forward, one backward.

Imported only when the FA4 backend runs; every FA4 name used lives here, so a change of FA4's
interface touches this file alone. Written against flash-attn-4 4.0.0b36 (its internal
``_flash_attn_fwd`` / ``_flash_attn_bwd`` take the global out and lse, which the accumulating FFA
contract needs: a call's gradient uses the *merged* softmax statistics, not its own).

Layout: FA4 wants q/k/v [B, S, H, D] and returns lse [B, H, Sq]; we run B = 1.
"""

from __future__ import annotations

import functools
import importlib

import torch

from magi_ffa.backends.fa4.block_sparse import BlockLists, SliceBlockMask

__all__ = ["FA4_REQUIREMENT", "fa4_backward", "fa4_forward", "import_fa4", "sparse_block_size"]

FA4_REQUIREMENT = "flash-attn-4>=4.0.0b36"
_INSTALL_HINT = f"install it with `pip install magi-ffa-kernels[fa4]` ({FA4_REQUIREMENT})"


@functools.lru_cache(maxsize=1)
def import_fa4():
    """(interface, block_sparsity, utils, cutlass, cute) modules of FA4; ImportError with a hint."""
    try:
        mods = tuple(importlib.import_module(m) for m in (
            "flash_attn.cute.interface", "flash_attn.cute.block_sparsity", "flash_attn.cute.utils",
            "cutlass", "cutlass.cute"))
    except ImportError as e:
        raise ImportError(f"the fa4 backend needs Flash-Attention 4 (flash_attn.cute): {e}; "
                          f"{_INSTALL_HINT}") from e
    iface = mods[0]
    for name in ("_flash_attn_fwd", "_flash_attn_bwd"):
        if not hasattr(iface, name):
            raise ImportError(f"flash_attn.cute.interface has no {name}: this FA4 release is not the "
                              f"interface the fa4 backend was written for; {_INSTALL_HINT}")
    return mods


def sparse_block_size(arch: int) -> tuple[int, int]:
    """(q block, k block) of the block-sparse lists: a multiple of FA4's forward q tile per CTA
    (128 rows on SM90, 2 x 128 on SM100+) and its k tile (128) for head dims up to 128."""
    return (128, 128) if arch < 100 else (256, 128)


@functools.cache
def _interval_mask_mod(num_intervals: int):
    """The CuTe mask function: key n is visible from query m iff lo[j, m] <= n < hi[j, m] for some j.

    One function object per interval count, so FA4's compile cache (keyed on the function's code
    and captured constants) compiles each variant once.
    """
    _, _, utils, cutlass, cute = import_fa4()

    @cute.jit
    def interval_mask_mod(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
        lo, hi = aux_tensors[0], aux_tensors[1]
        visible = None
        for j in cutlass.range_constexpr(num_intervals):
            a = utils.scalar_to_ssa(lo[j, q_idx[0]], cutlass.Int32)
            b = utils.scalar_to_ssa(hi[j, q_idx[0]], cutlass.Int32)
            inside = (kv_idx >= a) & (kv_idx < b)
            visible = inside if visible is None else (visible | inside)
        return visible

    return interval_mask_mod


def _fa4_lists(lists: BlockLists, block_size: tuple[int, int]):
    _, bs, _, _, _ = import_fa4()
    return bs.BlockSparseTensorsTorch(
        mask_block_cnt=lists.mask_cnt, mask_block_idx=lists.mask_idx,
        full_block_cnt=lists.full_cnt, full_block_idx=lists.full_idx, block_size=block_size)


def fa4_forward(q, k, v, mask: SliceBlockMask, softmax_scale: float, softcap: float):
    """out [Sq, hq, d] (q's dtype) and lse fp32 [Sq, hq] (-inf and out 0 on rows that see no key)."""
    iface = import_fa4()[0]
    out, lse, *_ = iface._flash_attn_fwd(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), softmax_scale=softmax_scale,
        softcap=softcap or None, mask_mod=_interval_mask_mod(mask.num_intervals),
        block_sparse_tensors=_fa4_lists(mask.fwd, mask.block_size), return_lse=True,
        aux_tensors=[mask.lo, mask.hi])
    out, lse = out[0], lse[0].transpose(0, 1)
    # rows that see no key: lse -inf and out 0 whatever the kernel left there (FA2 wrote +inf, and a
    # q block with no listed tile may never be stored), so the lse merge gives them weight 0
    empty = ~torch.isfinite(lse)  # elementwise, no host sync
    return out.masked_fill(empty.unsqueeze(-1), 0.0), lse.masked_fill(empty, float("-inf"))


def fa4_backward(q, k, v, out, dout, lse, mask: SliceBlockMask, softmax_scale: float, softcap: float):
    """dq, dk, dv (input dtype) of this call's cells, under the merged `out` and `lse` [Sq, hq]."""
    iface = import_fa4()[0]
    # rows that see nothing anywhere: +inf makes exp(s - lse) = 0 instead of exp(-inf + inf) = NaN
    lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    dq, dk, dv = iface._flash_attn_bwd(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), out.to(q.dtype).unsqueeze(0),
        dout.to(q.dtype).unsqueeze(0), lse.transpose(0, 1).unsqueeze(0).contiguous(),
        softmax_scale=softmax_scale, softcap=softcap, mask_mod=_interval_mask_mod(mask.num_intervals),
        aux_tensors=[mask.lo, mask.hi], block_sparse_tensors=_fa4_lists(mask.bwd, mask.block_size))[:3]
    return dq[0], dk[0], dv[0]
