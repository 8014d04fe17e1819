"""Row reduce: fold received rows into output rows by sum, avg or lse-weighted merge.

The contributions of one output row are applied in a fixed order (layer 0, 1, ...) in float32, so
results are deterministic. The lse merge of ``(o, L)`` with ``(x, L_in)`` is

    L' = max + log1p(exp(min - max)),  o' = exp(L - L')·o + exp(L_in - L')·x

with terms of weight 0 (an lse of -inf) skipped, so rows whose lse stays -inf end as o = 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from magi_grpcoll.kernels._select import triton_available, use_triton

__all__ = ["REDUCE_OPS", "FoldSources", "OWN", "RECEIVED", "reduce_rows", "fold_from_sources", "lse_merge_"]

REDUCE_OPS = ("sum", "avg", "lse")

OWN, RECEIVED = -1, -2  # FoldSources.who: this rank's input; its buffer's receive region


class FoldSources(NamedTuple):
    """Where :func:`fold_from_sources` reads each contribution (a plan's ReduceMap, resolved to sources).

    touched: [T] output rows; count: [T] float32 contributors per row (for "avg"); who / row:
    [T, C] the c-th contribution of each touched row, in the ReduceMap's layer order: row ``row``
    of this rank's input (``who == OWN``), of its receive region (``RECEIVED``: a peer pushed it
    there) or of the rows peer ``who`` staged (read over NVLink); ``row == -1`` pads.
    """

    touched: torch.Tensor
    who: torch.Tensor
    row: torch.Tensor
    count: torch.Tensor


def lse_merge_(o: torch.Tensor, lse: torch.Tensor, x: torch.Tensor, lse_in: torch.Tensor) -> None:
    """Merge (x, lse_in) into (o, lse) in place; o, x float32 [T, H, ...], lse, lse_in [T, H]."""
    lmax = torch.maximum(lse, lse_in)
    lmin = torch.minimum(lse, lse_in)
    neg = lmax == float("-inf")
    new = torch.where(neg, lmax, lmax + torch.log1p(torch.exp(lmin - torch.where(neg, 0.0, lmax))))
    dead = new == float("-inf")
    w_o = torch.where(dead, 0.0, torch.exp(lse - torch.where(dead, 0.0, new)))
    w_i = torch.where(dead, 0.0, torch.exp(lse_in - torch.where(dead, 0.0, new)))
    shape = (*w_o.shape, *([1] * (o.dim() - 2)))
    w_o, w_i = w_o.view(shape), w_i.view(shape)
    term_o = torch.where(w_o == 0, 0.0, w_o * o)  # never multiply memory behind an lse of -inf
    term_i = torch.where(w_i == 0, 0.0, w_i * x)
    o.copy_(term_o + term_i)
    lse.copy_(new)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _reduce_torch(output, recv, rmap, op, acc_reduce, output_lse, recv_lse):
    touched = rmap.touched
    acc_dtype = _acc_dtype(output.dtype)
    if acc_reduce:
        acc = output.index_select(0, touched).to(acc_dtype)
    else:
        acc = torch.zeros((touched.numel(), *output.shape[1:]), dtype=acc_dtype, device=output.device)
    if op == "lse":
        if acc_reduce:
            acc_lse = output_lse.index_select(0, touched)
        else:
            acc_lse = torch.full((touched.numel(), *output_lse.shape[1:]), float("-inf"),
                                 dtype=torch.float32, device=output.device)
        for pos, rows in rmap.layers:
            o, lo = acc.index_select(0, pos), acc_lse.index_select(0, pos)
            lse_merge_(o, lo, recv.index_select(0, rows).to(acc_dtype), recv_lse.index_select(0, rows))
            acc.index_copy_(0, pos, o)
            acc_lse.index_copy_(0, pos, lo)
        output_lse.index_copy_(0, touched, acc_lse)
    else:
        for pos, rows in rmap.layers:  # positions are unique inside a layer: no accumulation races
            acc.index_add_(0, pos, recv.index_select(0, rows).to(acc_dtype))
        if op == "avg":
            denom = rmap.count + (1.0 if acc_reduce else 0.0)
            acc /= denom.view(-1, *([1] * (acc.dim() - 1)))
    output.index_copy_(0, touched, acc.to(output.dtype))


if triton_available():
    import triton
    import triton.language as tl

    _WHO_OWN = tl.constexpr(OWN)

    @triton.jit
    def _contribution_base(recv_ptr, who_ptr, slot, peer_bufs_addr, peer_off, local_addr, received_addr,
                           PULL: tl.constexpr):
        """Where a contribution's rows start: the receive buffer ``recv_ptr``; or, when the rows are
        read where they live (PULL), this rank's own source at ``local_addr`` (``who == OWN``), its
        receive region at ``received_addr`` (``who == RECEIVED``), or peer ``who``'s staged rows (the
        device array of peer buffer addresses, plus a byte offset). Addresses arrive as ints (typed
        i32 when small): widened before use."""
        if PULL:
            who = tl.load(who_ptr + slot)
            peer_bufs = peer_bufs_addr.to(tl.int64).to(tl.pointer_type(tl.int64))
            peer = tl.load(peer_bufs + tl.maximum(who, 0), mask=who >= 0, other=0) + peer_off
            local = tl.where(who == _WHO_OWN, local_addr.to(tl.int64), received_addr.to(tl.int64))
            base = tl.where(who >= 0, peer, local)
            return base.to(tl.pointer_type(recv_ptr.dtype.element_ty))
        else:
            return recv_ptr

    @triton.jit
    def _sum_term(recv_ptr, contrib_ptr, who_ptr, t, c, n_contrib, offs, m, row_elems, peer_bufs_addr, peer_off,
                  local_addr, received_addr, PULL: tl.constexpr):
        """Contribution c of touched row t, as float32 (zeros for a padding slot)."""
        slot = t * n_contrib + c
        r = tl.load(contrib_ptr + slot).to(tl.int64)  # -1: a padding slot, adds nothing
        base = _contribution_base(recv_ptr, who_ptr, slot, peer_bufs_addr, peer_off, local_addr, received_addr, PULL)
        valid = (offs * 0 + r) >= 0  # as a block: the interpreter rejects block & scalar masks
        return tl.load(base + tl.maximum(r, 0) * row_elems + offs, mask=m & valid, other=0.0).to(tl.float32)

    @triton.jit
    def _reduce_sum_kernel(out_ptr, recv_ptr, touched_ptr, contrib_ptr, count_ptr, row_elems, n_contrib,
                           who_ptr, peer_bufs_addr, peer_off, local_addr, received_addr,
                           IS_AVG: tl.constexpr, ACC: tl.constexpr, PULL: tl.constexpr, UNROLL: tl.constexpr,
                           BLOCK: tl.constexpr):
        # one program per (touched output row, column block); contributions in fixed order, fp32.
        # UNROLL (= n_contrib, when small) unrolls the loop so the loads of all contributions are in
        # flight together: pulled rows come over NVLink, with a long latency
        t = tl.program_id(0).to(tl.int64)
        cb = tl.program_id(1)
        orow = tl.load(touched_ptr + t).to(tl.int64)
        offs = cb * BLOCK + tl.arange(0, BLOCK)
        m = offs < row_elems
        if ACC:
            acc = tl.load(out_ptr + orow * row_elems + offs, mask=m, other=0.0).to(tl.float32)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
        if UNROLL > 0:
            for c in tl.static_range(UNROLL):
                acc += _sum_term(recv_ptr, contrib_ptr, who_ptr, t, c, n_contrib, offs, m, row_elems,
                                 peer_bufs_addr, peer_off, local_addr, received_addr, PULL)
        else:
            for c in range(n_contrib):
                acc += _sum_term(recv_ptr, contrib_ptr, who_ptr, t, c, n_contrib, offs, m, row_elems,
                                 peer_bufs_addr, peer_off, local_addr, received_addr, PULL)
        if IS_AVG:
            cnt = tl.load(count_ptr + t)
            if ACC:
                cnt = cnt + 1.0
            acc = acc / cnt
        tl.store(out_ptr + orow * row_elems + offs, acc.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _reduce_lse_kernel(out_ptr, out_lse_ptr, recv_ptr, recv_lse_ptr, touched_ptr, contrib_ptr,
                           n_heads, head_elems, n_contrib, who_ptr, peer_bufs_addr, peer_off, peer_lse_off,
                           local_addr, local_lse_addr, received_addr, received_lse_addr, ACC: tl.constexpr, PULL: tl.constexpr,
                           BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
        # one program per (touched output row, block of heads): enough bytes per program to keep
        # remote loads in flight when the rows are pulled from peers
        t = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        d = tl.arange(0, BLOCK_D)
        mh = h < n_heads
        m2 = mh[:, None] & (d < head_elems)[None, :]
        orow = tl.load(touched_ptr + t).to(tl.int64)
        out_offs = (orow * n_heads + h)[:, None] * head_elems + d[None, :]
        if ACC:
            o = tl.load(out_ptr + out_offs, mask=m2, other=0.0).to(tl.float32)
            lo = tl.load(out_lse_ptr + orow * n_heads + h, mask=mh, other=-float("inf"))
        else:
            o = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
            lo = tl.full([BLOCK_H], -float("inf"), tl.float32)
        for c in range(n_contrib):
            slot = t * n_contrib + c
            r = tl.load(contrib_ptr + slot).to(tl.int64)
            valid = (h * 0 + r) >= 0  # as a block: the interpreter rejects block & scalar masks
            rr = tl.maximum(r, 0)
            base = _contribution_base(recv_ptr, who_ptr, slot, peer_bufs_addr, peer_off, local_addr,
                                      received_addr, PULL)
            lbase = _contribution_base(recv_lse_ptr, who_ptr, slot, peer_bufs_addr, peer_lse_off,
                                       local_lse_addr, received_lse_addr, PULL)
            li = tl.load(lbase + rr * n_heads + h, mask=mh & valid, other=-float("inf"))
            x = tl.load(base + (rr * n_heads + h)[:, None] * head_elems + d[None, :], mask=m2 & valid[:, None], other=0.0)
            x = x.to(tl.float32)  # a term of lse -inf has weight 0 below, so its x never counts
            # stage 1: new lse, -inf safe
            lmax = tl.maximum(lo, li)
            lmin = tl.minimum(lo, li)
            neg = lmax == -float("inf")
            lsafe = tl.where(neg, 0.0, lmax)
            new = tl.where(neg, lmax, lmax + tl.log(1.0 + tl.exp(lmin - lsafe)))
            # stage 2: rescale both terms; weight-0 terms are skipped, never multiplied
            dead = new == -float("inf")
            nsafe = tl.where(dead, 0.0, new)
            w_o = tl.where(dead, 0.0, tl.exp(lo - nsafe))[:, None]
            w_i = tl.where(dead, 0.0, tl.exp(li - nsafe))[:, None]
            o = tl.where(w_o == 0.0, 0.0, w_o * o) + tl.where(w_i == 0.0, 0.0, w_i * x)
            lo = new
        tl.store(out_ptr + out_offs, o.to(out_ptr.dtype.element_ty), mask=m2)
        tl.store(out_lse_ptr + orow * n_heads + h, lo, mask=mh)


_MAX_UNROLL = 8  # rows with more contributors than this loop at run time


def _reduce_triton(output, recv, touched, contrib, count, op, acc_reduce, output_lse, recv_lse, sources=None,
                   block_elems=1024, num_warps=4):
    """Launch the fold. ``sources``: None (rows come from ``recv``) or ``(who, peer_bufs_addr,
    peer_off, peer_lse_off, received_addr, received_lse_addr)`` (see :func:`fold_from_sources`;
    ``recv`` / ``recv_lse`` are then this rank's own input)."""
    n_t = int(touched.numel())
    if n_t == 0:
        return
    n_contrib = int(contrib.shape[1])
    pull = sources is not None
    who, peer_bufs, peer_off, peer_lse_off, received, received_lse = sources if pull else (contrib, 0, 0, 0, 0, 0)
    if op == "lse":
        n_heads = output.shape[1]
        head_elems = math.prod(output.shape[2:])
        block_d = triton.next_power_of_2(max(head_elems, 1))
        block_h = min(triton.next_power_of_2(max(n_heads, 1)), max(1, 2048 // block_d))
        grid = (n_t, triton.cdiv(n_heads, block_h))
        _reduce_lse_kernel[grid](output, output_lse, recv, recv_lse, touched, contrib, n_heads, head_elems,
                                 n_contrib, who, peer_bufs, peer_off, peer_lse_off, recv.data_ptr(),
                                 recv_lse.data_ptr(), received, received_lse, ACC=acc_reduce, PULL=pull,
                                 BLOCK_H=block_h, BLOCK_D=block_d)
        return
    row_elems = math.prod(output.shape[1:])
    if row_elems == 0:
        return
    block = min(block_elems, triton.next_power_of_2(row_elems))
    grid = (n_t, triton.cdiv(row_elems, block))
    _reduce_sum_kernel[grid](output, recv, touched, contrib, count, row_elems, n_contrib, who, peer_bufs,
                             peer_off, recv.data_ptr(), received, IS_AVG=(op == "avg"), ACC=acc_reduce,
                             PULL=pull, UNROLL=n_contrib if n_contrib <= _MAX_UNROLL else 0, BLOCK=block,
                             num_warps=num_warps)


def reduce_rows(output: torch.Tensor, recv: torch.Tensor, rmap, op: str = "sum", *, acc_reduce: bool = True,
                output_lse: torch.Tensor | None = None, recv_lse: torch.Tensor | None = None,
                backend: str | None = None) -> torch.Tensor:
    """Fold ``recv`` rows into ``output`` in place following ``rmap`` (a :class:`~magi_grpcoll.plan.ReduceMap`).

    Args:
        output: [S_out, ...] the reduce target (rows not in ``rmap.touched`` are left unchanged).
        recv: [R, ...] received rows, same dtype as output.
        op: "sum", "avg" (old output counts as one term when ``acc_reduce``) or "lse".
        output_lse / recv_lse: float32 [S_out, H] / [R, H], required for "lse" (data [S, H, ...]).
    Returns:
        ``output``.
    """
    if op not in REDUCE_OPS:
        raise ValueError(f"reduce_rows(): op={op!r} is unknown; supported: {REDUCE_OPS}.")
    if rmap.touched.numel() == 0:
        return output
    if use_triton(output, backend) and output.dtype != torch.float64:  # fp64 stays exact in torch
        _reduce_triton(output, recv, rmap.touched, rmap.contrib, rmap.count, op, acc_reduce, output_lse, recv_lse)
    else:
        _reduce_torch(output, recv, rmap, op, acc_reduce, output_lse, recv_lse)
    return output


def fold_from_sources(output: torch.Tensor, local: torch.Tensor, sources, op: str, *, acc_reduce: bool,
                      received_addr: int, peer_bufs_addr: int, peer_offset_bytes: int,
                      output_lse: torch.Tensor | None = None, local_lse: torch.Tensor | None = None,
                      received_lse_addr: int = 0, peer_lse_offset_bytes: int = 0, block_elems: int = 1024,
                      num_warps: int = 4) -> torch.Tensor:
    """Fold contributions read where they live (Triton only: it reads raw addresses).

    The native reduce's fold. A contribution of ``sources`` (:class:`FoldSources`) is a row of this
    rank's ``local`` input (``who == OWN``), of its receive region at device address
    ``received_addr`` (``who == RECEIVED``), or of the rows peer ``who`` staged at ``peer_offset_bytes``
    into its symmetric buffer (addresses in the device array at ``peer_bufs_addr``); the lse rows
    likewise. Same order and float32 arithmetic as :func:`reduce_rows`: both give the same bits.
    ``block_elems`` / ``num_warps``: the sum kernel's launch shape (profile_native.py sweeps them).
    """
    if op not in REDUCE_OPS:
        raise ValueError(f"fold_from_sources(): op={op!r} is unknown; supported: {REDUCE_OPS}.")
    if not triton_available():
        raise NotImplementedError("fold_from_sources(): needs triton.")
    if op == "lse" and (output_lse is None or local_lse is None):
        raise ValueError("fold_from_sources(): op='lse' needs output_lse and local_lse.")
    _reduce_triton(output, local, sources.touched, sources.row, sources.count, op, acc_reduce, output_lse,
                   local_lse, sources=(sources.who, peer_bufs_addr, peer_offset_bytes, peer_lse_offset_bytes,
                                       received_addr, received_lse_addr), block_elems=block_elems, num_warps=num_warps)
    return output
