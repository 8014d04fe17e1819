"""Triton backward kernels of Flex-Flash-Attention: dq per q tile, dk/dv per k tile, no atomics.

* ``ffa_bwd_dq_kernel``: one program per (q tile, q head) walks the forward work list and
  adds its dq tile into the caller's fp32 dq.
* ``ffa_bwd_dkdv_kernel``: one program per (k tile, kv head) walks the transposed work list
  (k columns outer, q rows inner) for every q head of its GQA group, then adds dk and dv.
  With FUSED_DQ it also atomically adds dq (then the dq kernel is skipped).

Without FUSED_DQ each program owns its output tile, so the result is deterministic and needs
no atomics. With FRESH (the call is the only contributor) the epilogues write their tile
instead of adding to it, in the buffer's dtype, and tiles without any piece write zeros: the
caller needs no zero-filled fp32 buffers and no conversion pass.
``delta = rowsum(out * dout)`` is computed by the caller. Logits are recomputed in base 2
(log2(e) folded into the scale) and probabilities come from the final merged lse.
"""

from __future__ import annotations

import triton
import triton.language as tl

from magi_ffa.backends.triton.fwd_kernel import _load_tile, _tanh

__all__ = ["ffa_bwd_dkdv_kernel", "ffa_bwd_dq_kernel"]

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _load_rowvec(ptrs, ok, other, CHECK_ROWS: tl.constexpr):
    if CHECK_ROWS:
        x = tl.load(ptrs, mask=ok, other=other)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _store_zero_tile(ptr, tile, head, seqlen, stride_row, stride_head,
                     HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """Zero rows [tile*BLOCK, tile*BLOCK+BLOCK) of one head (FRESH tiles no slice reaches)."""
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D_PAD)
    ptrs = ptr + head.to(tl.int64) * stride_head + offs[:, None].to(tl.int64) * stride_row + offs_d[None, :]
    zero = tl.zeros([BLOCK, D_PAD], dtype=ptr.dtype.element_ty)
    tl.store(ptrs, zero, mask=(offs[:, None] < seqlen) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _lse_base2(lse):
    # Rows without any key (lse = -inf) must give p = 0, not exp2(-inf + inf).
    return tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse2, delta,  #
    k_ptr, v_ptr, stride_kn, stride_vn,  #
    offs_m, offs_d, start, stop,  #
    o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,  #
    qk_scale, softcap_over_scale,  #
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,  #
    MASKED: tl.constexpr, SOFTCAP: tl.constexpr,
):
    """Accumulate dS @ K over k blocks [start, stop) for one q tile."""
    offs_n = start + tl.arange(0, BLOCK_N)
    k_ptrs = k_ptr + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :]
    v_ptrs = v_ptr + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :]
    for _ in range(start, stop, BLOCK_N):
        n_ok = offs_n < i_hi
        k = _load_tile(k_ptrs, n_ok, offs_d, HEAD_DIM, EVEN_D, MASKED)
        v = _load_tile(v_ptrs, n_ok, offs_d, HEAD_DIM, EVEN_D, MASKED)
        qk = tl.dot(q, tl.trans(k))
        # -- recompute p from the merged lse --
        if SOFTCAP:
            t = _tanh(qk * softcap_over_scale)
            s = qk_scale * t
        else:
            s = qk * qk_scale
        if MASKED:
            diag = offs_n[None, :] - offs_m[:, None]
            vis = (offs_m[:, None] >= o_lo) & (offs_m[:, None] < o_hi)
            vis = vis & (offs_n[None, :] >= i_lo) & n_ok[None, :]
            vis = vis & (diag >= d_lo) & (diag <= d_hi)
            s = tl.where(vis, s, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])
        # -- dS = P * (dP - delta), through the softcap derivative --
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq = tl.dot(ds.to(k.dtype), k, dq)
        offs_n += BLOCK_N
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return dq


@triton.jit
def ffa_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,  #
    tile_ptr, pieces_ptr, tile_order_ptr,  #
    stride_qm, stride_qh,  #
    stride_kn, stride_kh,  #
    stride_vn, stride_vh,  #
    stride_dom, stride_doh,  #
    stride_lm, stride_lh,  #
    stride_dm, stride_dh,  #
    stride_dqm, stride_dqh,  #
    seqlen_q, group,  #
    sm_scale, qk_scale, softcap_over_scale,  #
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,  #
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  #
    SOFTCAP: tl.constexpr, FRESH: tl.constexpr,
):
    tl.static_assert(D_PAD >= 16)
    tl.static_assert(D_PAD >= HEAD_DIM)
    tl.static_assert(BLOCK_M % 16 == 0)
    tl.static_assert(BLOCK_N % 16 == 0)
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD

    tile = tl.load(tile_order_ptr + tl.program_id(0))
    head = tl.program_id(1)
    kv_head = head // group
    p_begin = tl.load(tile_ptr + tile)
    p_end = tl.load(tile_ptr + tile + 1)
    if p_end > p_begin:
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D_PAD)
        m_ok = offs_m < seqlen_q
        rows = offs_m[:, None].to(tl.int64)
        h64 = head.to(tl.int64)
        q = _load_tile(q_ptr + h64 * stride_qh + rows * stride_qm + offs_d[None, :],
                       m_ok, offs_d, HEAD_DIM, EVEN_D, True)
        do = _load_tile(do_ptr + h64 * stride_doh + rows * stride_dom + offs_d[None, :],
                        m_ok, offs_d, HEAD_DIM, EVEN_D, True)
        lse = tl.load(lse_ptr + offs_m.to(tl.int64) * stride_lm + head * stride_lh,
                      mask=m_ok, other=float("inf"))
        lse2 = _lse_base2(lse)
        delta = tl.load(delta_ptr + offs_m.to(tl.int64) * stride_dm + head * stride_dh,
                        mask=m_ok, other=0.0)
        k_base = k_ptr + kv_head.to(tl.int64) * stride_kh
        v_base = v_ptr + kv_head.to(tl.int64) * stride_vh
        dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
        for piece in range(p_begin, p_end):
            rec = pieces_ptr + piece * 8
            o_lo = tl.load(rec + 0)
            o_hi = tl.load(rec + 1)
            i_lo = tl.load(rec + 2)
            i_hi = tl.load(rec + 3)
            f_lo = tl.load(rec + 4)
            f_hi = tl.load(rec + 5)
            d_lo = tl.load(rec + 6)
            d_hi = tl.load(rec + 7)
            # stage 1: masked prefix / stage 2: whole visible blocks / stage 3: masked suffix
            dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn,
                               offs_m, offs_d, i_lo, f_lo, o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,
                               qk_scale, softcap_over_scale, BLOCK_N, HEAD_DIM, EVEN_D, True, SOFTCAP)
            dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn,
                               offs_m, offs_d, f_lo, f_hi, o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,
                               qk_scale, softcap_over_scale, BLOCK_N, HEAD_DIM, EVEN_D, False, SOFTCAP)
            dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn,
                               offs_m, offs_d, f_hi, i_hi, o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,
                               qk_scale, softcap_over_scale, BLOCK_N, HEAD_DIM, EVEN_D, True, SOFTCAP)
        # -- epilogue: write (FRESH) or add into the caller's dq --
        dq_ptrs = dq_ptr + h64 * stride_dqh + rows * stride_dqm + offs_d[None, :]
        st_mask = m_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
        if FRESH:
            tl.store(dq_ptrs, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=st_mask)
        else:
            dq_old = tl.load(dq_ptrs, mask=st_mask, other=0.0)
            tl.store(dq_ptrs, dq_old + dq * sm_scale, mask=st_mask)
    elif FRESH:
        _store_zero_tile(dq_ptr, tile, head, seqlen_q, stride_dqm, stride_dqh, HEAD_DIM, D_PAD, BLOCK_M)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v,  #
    q_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,  #
    stride_qm, stride_dom, stride_lm, stride_dm, stride_dqm,  #
    offs_n, offs_d, start, stop,  #
    o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,  #
    sm_scale, qk_scale, softcap_over_scale,  #
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,  #
    MASKED: tl.constexpr, SOFTCAP: tl.constexpr, FUSED_DQ: tl.constexpr,
):
    """Accumulate P^T dO and dS^T Q over q blocks [start, stop) for one k tile and q head.

    FUSED_DQ: also atomically add dS @ K into the fp32 dq (5 matmuls per block instead of the
    split passes' 7; the summation order of dq then varies run to run).
    """
    offs_m = start + tl.arange(0, BLOCK_M)
    rows = offs_m[:, None].to(tl.int64)
    q_ptrs = q_ptr + rows * stride_qm + offs_d[None, :]
    do_ptrs = do_ptr + rows * stride_dom + offs_d[None, :]
    if FUSED_DQ:
        dq_ptrs = dq_ptr + rows * stride_dqm + offs_d[None, :]
    for _ in range(start, stop, BLOCK_M):
        m_ok = offs_m < i_hi
        q = _load_tile(q_ptrs, m_ok, offs_d, HEAD_DIM, EVEN_D, MASKED)
        do = _load_tile(do_ptrs, m_ok, offs_d, HEAD_DIM, EVEN_D, MASKED)
        lse2 = _lse_base2(_load_rowvec(lse_ptr + offs_m.to(tl.int64) * stride_lm, m_ok, float("inf"), MASKED))
        delta = _load_rowvec(delta_ptr + offs_m.to(tl.int64) * stride_dm, m_ok, 0.0, MASKED)
        qkT = tl.dot(k, tl.trans(q))
        # -- recompute P^T [BLOCK_N, BLOCK_M] --
        if SOFTCAP:
            t = _tanh(qkT * softcap_over_scale)
            sT = qk_scale * t
        else:
            sT = qkT * qk_scale
        if MASKED:
            diag = offs_m[None, :] - offs_n[:, None]
            vis = (offs_n[:, None] >= o_lo) & (offs_n[:, None] < o_hi)
            vis = vis & (offs_m[None, :] >= i_lo) & m_ok[None, :]
            vis = vis & (diag >= d_lo) & (diag <= d_hi)
            sT = tl.where(vis, sT, float("-inf"))
        pT = tl.math.exp2(sT - lse2[None, :])
        # -- dV += P^T dO --
        dv = tl.dot(pT.to(do.dtype), do, dv)
        # -- dK += dS^T Q --
        dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        if SOFTCAP:
            dsT = dsT * (1.0 - t * t)
        dsT_lp = dsT.to(q.dtype)
        dk = tl.dot(dsT_lp, q, dk)
        if FUSED_DQ:
            dq_part = tl.dot(tl.trans(dsT_lp), k) * sm_scale
            if MASKED:
                tl.atomic_add(dq_ptrs, dq_part, mask=m_ok[:, None] & (offs_d[None, :] < HEAD_DIM), sem="relaxed")
            elif EVEN_D:
                tl.atomic_add(dq_ptrs, dq_part, sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs, dq_part, mask=offs_d[None, :] < HEAD_DIM, sem="relaxed")
            dq_ptrs += BLOCK_M * stride_dqm
        offs_m += BLOCK_M
        q_ptrs += BLOCK_M * stride_qm
        do_ptrs += BLOCK_M * stride_dom
    return dk, dv


@triton.jit
def ffa_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, dq_ptr,  #
    tile_ptr, pieces_ptr, tile_order_ptr,  #
    stride_qm, stride_qh,  #
    stride_kn, stride_kh,  #
    stride_vn, stride_vh,  #
    stride_dom, stride_doh,  #
    stride_lm, stride_lh,  #
    stride_dm, stride_dh,  #
    stride_dkn, stride_dkh,  #
    stride_dvn, stride_dvh,  #
    stride_dqm, stride_dqh,  #
    seqlen_k, group,  #
    sm_scale, qk_scale, softcap_over_scale,  #
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,  #
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  #
    SOFTCAP: tl.constexpr, FUSED_DQ: tl.constexpr, FRESH: tl.constexpr,
):
    tl.static_assert(D_PAD >= 16)
    tl.static_assert(D_PAD >= HEAD_DIM)
    tl.static_assert(BLOCK_M % 16 == 0)
    tl.static_assert(BLOCK_N % 16 == 0)
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD

    tile = tl.load(tile_order_ptr + tl.program_id(0))
    kv_head = tl.program_id(1)
    p_begin = tl.load(tile_ptr + tile)
    p_end = tl.load(tile_ptr + tile + 1)
    if p_end > p_begin:
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D_PAD)
        n_ok = offs_n < seqlen_k
        cols = offs_n[:, None].to(tl.int64)
        kh64 = kv_head.to(tl.int64)
        k = _load_tile(k_ptr + kh64 * stride_kh + cols * stride_kn + offs_d[None, :],
                       n_ok, offs_d, HEAD_DIM, EVEN_D, True)
        v = _load_tile(v_ptr + kh64 * stride_vh + cols * stride_vn + offs_d[None, :],
                       n_ok, offs_d, HEAD_DIM, EVEN_D, True)
        dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
        for g in range(0, group):
            head = kv_head * group + g
            h64 = head.to(tl.int64)
            q_base = q_ptr + h64 * stride_qh
            do_base = do_ptr + h64 * stride_doh
            lse_base = lse_ptr + h64 * stride_lh
            delta_base = delta_ptr + h64 * stride_dh
            dq_base = dq_ptr + h64 * stride_dqh
            for piece in range(p_begin, p_end):
                rec = pieces_ptr + piece * 8
                o_lo = tl.load(rec + 0)
                o_hi = tl.load(rec + 1)
                i_lo = tl.load(rec + 2)
                i_hi = tl.load(rec + 3)
                f_lo = tl.load(rec + 4)
                f_hi = tl.load(rec + 5)
                d_lo = tl.load(rec + 6)
                d_hi = tl.load(rec + 7)
                # stage 1: masked prefix / stage 2: whole visible blocks / stage 3: masked suffix
                dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base,
                                         stride_qm, stride_dom, stride_lm, stride_dm, stride_dqm,
                                         offs_n, offs_d, i_lo, f_lo, o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,
                                         sm_scale, qk_scale, softcap_over_scale,
                                         BLOCK_M, HEAD_DIM, EVEN_D, True, SOFTCAP, FUSED_DQ)
                dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base,
                                         stride_qm, stride_dom, stride_lm, stride_dm, stride_dqm,
                                         offs_n, offs_d, f_lo, f_hi, o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,
                                         sm_scale, qk_scale, softcap_over_scale,
                                         BLOCK_M, HEAD_DIM, EVEN_D, False, SOFTCAP, FUSED_DQ)
                dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base,
                                         stride_qm, stride_dom, stride_lm, stride_dm, stride_dqm,
                                         offs_n, offs_d, f_hi, i_hi, o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,
                                         sm_scale, qk_scale, softcap_over_scale,
                                         BLOCK_M, HEAD_DIM, EVEN_D, True, SOFTCAP, FUSED_DQ)
        # -- epilogue: write (FRESH) or add into the caller's dk / dv --
        st_mask = n_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
        dk_ptrs = dk_ptr + kh64 * stride_dkh + cols * stride_dkn + offs_d[None, :]
        dv_ptrs = dv_ptr + kh64 * stride_dvh + cols * stride_dvn + offs_d[None, :]
        if FRESH:
            tl.store(dk_ptrs, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=st_mask)
            tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=st_mask)
        else:
            dk_old = tl.load(dk_ptrs, mask=st_mask, other=0.0)
            tl.store(dk_ptrs, dk_old + dk * sm_scale, mask=st_mask)
            dv_old = tl.load(dv_ptrs, mask=st_mask, other=0.0)
            tl.store(dv_ptrs, dv_old + dv, mask=st_mask)
    elif FRESH:
        _store_zero_tile(dk_ptr, tile, kv_head, seqlen_k, stride_dkn, stride_dkh, HEAD_DIM, D_PAD, BLOCK_N)
        _store_zero_tile(dv_ptr, tile, kv_head, seqlen_k, stride_dvn, stride_dvh, HEAD_DIM, D_PAD, BLOCK_N)
