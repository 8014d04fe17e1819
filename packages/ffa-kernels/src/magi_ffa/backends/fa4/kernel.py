"""The calls into Flash-Attention 4 (``flash_attn.cute``, CuTe DSL): one forward, one backward.

Imported only when the FA4 backend runs; every FA4 name used lives here, so a change of FA4's
interface touches this file alone. Written against flash-attn-4 4.0.0b36 (its internal
``_flash_attn_fwd`` / ``_flash_attn_bwd`` take the global out and lse, which the accumulating FFA
contract needs: a call's gradient uses the *merged* softmax statistics, not its own).

Layout: FA4 wants q/k/v [B, S, H, D] and returns lse [B, H, Sq]; we run B = 1, or B documents of one
length (native.py); varlen calls drop B.
"""

from __future__ import annotations

import functools
import importlib

import torch

from magi_ffa.backends.fa4 import replay
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


def _mask_args(mask: SliceBlockMask, direction: str) -> dict:
    """FA4's own masking where it expresses the mask (native.py), else block lists, with the mask
    function only when some tile is partial (block-aligned masks, such as the runtime's remote
    stages of causal masks, run FA4's plain block-sparse kernel: no per-tile mask evaluation)."""
    if mask.native is not None:
        return mask.native.fa4_kwargs(direction)
    lists = mask.fwd if direction == "fwd" else mask.bwd
    if not mask.has_partial:
        return {"block_sparse_tensors": _fa4_lists(lists, mask.block_size)}
    return {"mask_mod": _interval_mask_mod(mask.num_intervals), "aux_tensors": [mask.lo, mask.hi],
            "block_sparse_tensors": _fa4_lists(lists, mask.block_size)}


def _layout(mask: SliceBlockMask):
    """(to FA4, from FA4) for q/k/v/out and gradients: FA4 takes [B, S, H, D], we run B = 1, or B
    equal documents (``NativeMask.batch``) viewed as [B, S / B]; varlen drops B."""
    if _varlen(mask):
        return lambda t: t, lambda t: t
    b = _batch(mask)
    if b == 1:  # the common case; unsqueeze is a C++ method, unflatten a Python wrapper (host time per call)
        return (lambda t: None if t is None else t.unsqueeze(0)), (lambda t: t.flatten(0, 1))
    return (lambda t: None if t is None else t.unflatten(0, (b, -1))), (lambda t: t.flatten(0, 1))


def _varlen(mask: SliceBlockMask) -> bool:
    return mask.native is not None and mask.native.varlen


def _batch(mask: SliceBlockMask) -> int:
    return 1 if mask.native is None else mask.native.batch


def _lse_from_fa4(lse: torch.Tensor) -> torch.Tensor:
    """FA4's lse ([H, S] varlen, else [B, H, S / B]) as [S, H]; a view unless B > 1."""
    if lse.dim() == 2:
        return lse.transpose(0, 1)
    return lse.permute(0, 2, 1).flatten(0, 1)


_last_lse: list = [None, None, {}]  # the last backward call's lse, its version, {batch: FA4's copy}


def _lse_for_fa4(lse: torch.Tensor, mask: SliceBlockMask) -> torch.Tensor:
    """lse [S, H] in FA4's backward layout ([H, S] varlen, else [B, H, S / B]), in one kernel that
    also maps -inf to +inf: rows that see nothing anywhere then give exp(s - lse) = 0 instead of
    exp(-inf + inf) = NaN (NaN and +inf are kept).

    Made once per lse: the runtime's stages all run their backward on the same merged lse, so the
    copy of the last lse seen is kept (with the lse itself, so that no other tensor can take its
    memory while the copy is kept) and given again while the lse is unchanged (its version). The
    varlen layout is the B = 1 layout without B, so those two share one copy.
    """
    b = 1 if _varlen(mask) else _batch(mask)
    copies: dict = {}
    # made every time for inference tensors (no version counter) and inside a CUDA graph capture
    # (its copy would live in the graph's pool, which later captures reuse)
    if not lse.is_inference() and not (lse.is_cuda and torch.cuda.is_current_stream_capturing()):
        last, version, seen = _last_lse
        if last is lse and version == lse._version:
            copies = seen
        else:
            _last_lse[:] = (lse, lse._version, copies)
    fa4 = copies.get(b)
    if fa4 is None:
        # unsqueeze for B = 1: a C++ method, where unflatten is a Python wrapper (host time per call)
        src = (lse.unsqueeze(0) if b == 1 else lse.unflatten(0, (b, -1))).permute(0, 2, 1)
        inf = float("inf")
        fa4 = copies[b] = torch.nan_to_num(src, nan=float("nan"), posinf=inf, neginf=inf,
                                           out=lse.new_empty(src.shape))
    return fa4[0] if _varlen(mask) else fa4


def _computed(mask: SliceBlockMask, direction: str):
    """What a call computes, for the launch replay's check: all of its results, except the rows FA4
    skips (documents without keys, native.py) of the forward's out / lse and the backward's dq
    (FA4's varlen layout: rows first, lse [H, S])."""
    skipped = mask.skipped_rows(direction)
    if skipped is None:
        return None
    keep = ~skipped
    if direction == "fwd":
        return lambda res: (res[0][keep], res[1][:, keep])
    return lambda res: (res[0][keep], *res[1:])


def fa4_forward(q, k, v, mask: SliceBlockMask, softmax_scale: float, softcap: float, out=None):
    """(out [Sq, hq, d] in q's dtype, written into `out` when given; lse fp32 [Sq, hq], a view).

    Rows that see no key (``mask.empty_rows``) are left as FA4 wrote them: the caller normalises.
    Repeated calls replay FA4's recorded launches (replay.py).
    """
    iface = import_fa4()[0]
    to_fa4, from_fa4 = _layout(mask)

    def call(q_, k_, v_, out_):
        o, lse, *_ = iface._flash_attn_fwd(
            q_, k_, v_, softmax_scale=softmax_scale, softcap=softcap or None, return_lse=True, out=out_,
            **_mask_args(mask, "fwd"))
        return o, lse

    o, lse = replay.launch(("fwd", softmax_scale, softcap), mask, call,
                           (to_fa4(q), to_fa4(k), to_fa4(v), to_fa4(out)), written=(3,),
                           constants=mask.device_tensors, module=iface, computed=_computed(mask, "fwd"))
    return from_fa4(o), _lse_from_fa4(lse)


def fa4_backward(q, k, v, out, dout, lse, mask: SliceBlockMask, softmax_scale: float, softcap: float,
                 grads=None):
    """dq, dk, dv (input dtype) of this call's cells under the merged `out` and `lse` [Sq, hq];
    written into the buffers of `grads` = (dq, dk, dv) that are not None (FA4 writes every element,
    zeros included, but the dq rows of ``mask.skipped_rows("bwd")``)."""
    iface = import_fa4()[0]
    to_fa4, from_fa4 = _layout(mask)
    lse_fa4 = _lse_for_fa4(lse, mask)
    dq, dk, dv = grads if grads is not None else (None, None, None)  # None: FA4 allocates it

    def call(q_, k_, v_, out_, dout_, lse_, dq_, dk_, dv_):
        return tuple(iface._flash_attn_bwd(
            q_, k_, v_, out_, dout_, lse_, softmax_scale=softmax_scale, softcap=softcap,
            dq=dq_, dk=dk_, dv=dv_, **_mask_args(mask, "bwd"))[:3])

    dt = q.dtype  # out / dout in q's dtype (the runtime's fp32 accumulators are not); .to() costs even as a no-op
    out, dout = (out if out.dtype == dt else out.to(dt)), (dout if dout.dtype == dt else dout.to(dt))
    inputs = [to_fa4(q), to_fa4(k), to_fa4(v), to_fa4(out), to_fa4(dout), lse_fa4,
              to_fa4(dq), to_fa4(dk), to_fa4(dv)]  # no generators: host time on every call
    g_q, g_k, g_v = replay.launch(("bwd", softmax_scale, softcap), mask, call, inputs, written=(6, 7, 8),
                                  constants=mask.device_tensors, module=iface, computed=_computed(mask, "bwd"))
    return from_fa4(g_q), from_fa4(g_k), from_fa4(g_v)
