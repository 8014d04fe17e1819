"""Triton forward kernel of Flex-Flash-Attention (FlashAttention-2 online softmax over work lists).

One program owns one (q tile, q head): it walks every piece (slice ∩ tile) of its work list
(see ``plan.py``), so no atomics are needed and the result is deterministic by construction.
Each piece is processed in three stages along the k axis: a masked prefix, whole unmasked
blocks (no mask arithmetic) and a masked suffix. The epilogue lse-merges the tile's partial
result into the caller's fp32 ``out``/``lse`` (rows the call does not reach stay untouched).
With FRESH (the call is the only contributor) it writes the result instead, for every row of
the tile (out 0 and lse -inf where no key is visible), in ``out``'s dtype: no read of the old
buffers and no conversion pass. This is exact because the program has already walked every
piece of its tile, so it holds the final value.

Algorithm: Dao, "FlashAttention-2" (2023); layout after Triton's fused-attention tutorial.
Logits live in base 2: log2(e) is folded into the scale, and converted back for lse.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["ffa_fwd_kernel"]

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _tanh(x):
    # Portable tanh (the interpreter and every Triton version have exp).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _load_tile(ptrs, row_ok, offs_d, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """Load a [rows, D_PAD] tile, masking rows (boundary tiles) and padded head dims."""
    if CHECK_ROWS:
        if EVEN_D:
            x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def _logits(qk, qk_scale, softcap_over_scale, SOFTCAP: tl.constexpr):
    """Scaled logits in base 2: qk*scale*log2e, or softcap*tanh(qk*scale/softcap)*log2e."""
    if SOFTCAP:
        # qk_scale already holds softcap*log2e; softcap_over_scale = scale / softcap.
        return qk_scale * _tanh(qk * softcap_over_scale)
    else:
        return qk * qk_scale


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q,  #
    k_ptr, v_ptr, stride_kn, stride_vn,  #
    offs_m, offs_d, start, stop,  #
    o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,  #
    qk_scale, softcap_over_scale,  #
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,  #
    MASKED: tl.constexpr, SOFTCAP: tl.constexpr,
):
    """Online-softmax over k blocks [start, stop) stepping BLOCK_N; MASKED picks the stage.

    The unmasked stage (MASKED=False) has no mask arithmetic and no -inf guards: every row
    of the tile sees every column there, so the running max is finite from the first block.
    K/V pointers advance by one block per step instead of being recomputed.
    """
    offs_n = start + tl.arange(0, BLOCK_N)
    k_ptrs = k_ptr + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :]
    v_ptrs = v_ptr + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :]
    for _ in range(start, stop, BLOCK_N):
        n_ok = offs_n < i_hi
        k = _load_tile(k_ptrs, n_ok, offs_d, HEAD_DIM, EVEN_D, MASKED)
        # -- compute qk (base-2 logits) --
        s = _logits(tl.dot(q, tl.trans(k)), qk_scale, softcap_over_scale, SOFTCAP)
        if MASKED:
            diag = offs_n[None, :] - offs_m[:, None]
            vis = (offs_m[:, None] >= o_lo) & (offs_m[:, None] < o_hi)
            vis = vis & (offs_n[None, :] >= i_lo) & n_ok[None, :]
            vis = vis & (diag >= d_lo) & (diag <= d_hi)
            s = tl.where(vis, s, float("-inf"))
            # rows with nothing visible yet keep m = -inf
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = m_new
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        # -- update output accumulator --
        acc = acc * alpha[:, None]
        v = _load_tile(v_ptrs, n_ok, offs_d, HEAD_DIM, EVEN_D, MASKED)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
        offs_n += BLOCK_N
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def ffa_fwd_kernel(
    q_ptr, k_ptr, v_ptr,  #
    out_ptr, lse_ptr, tile_max_ptr,  #
    tile_ptr, pieces_ptr, tile_order_ptr,  #
    stride_qm, stride_qh,  #
    stride_kn, stride_kh,  #
    stride_vn, stride_vh,  #
    stride_om, stride_oh,  #
    stride_lm, stride_lh,  #
    seqlen_q, num_heads, group,  #
    qk_scale, softcap_over_scale,  #
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,  #
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  #
    SOFTCAP: tl.constexpr, MAX_LOGITS: tl.constexpr, FRESH: tl.constexpr,
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

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    m_ok = offs_m < seqlen_q
    q_base = q_ptr + head.to(tl.int64) * stride_qh
    q = _load_tile(q_base + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :],
                   m_ok, offs_d, HEAD_DIM, EVEN_D, True)
    k_base = k_ptr + kv_head.to(tl.int64) * stride_kh
    v_base = v_ptr + kv_head.to(tl.int64) * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)

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
        # stage 1: masked blocks before the unmasked run
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                                        offs_m, offs_d, i_lo, f_lo, o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,
                                        qk_scale, softcap_over_scale,
                                        BLOCK_N, HEAD_DIM, EVEN_D, True, SOFTCAP)
        # stage 2: whole blocks every row of the tile sees (no mask arithmetic)
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                                        offs_m, offs_d, f_lo, f_hi, o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,
                                        qk_scale, softcap_over_scale,
                                        BLOCK_N, HEAD_DIM, EVEN_D, False, SOFTCAP)
        # stage 3: masked blocks after it
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                                        offs_m, offs_d, f_hi, i_hi, o_lo, o_hi, i_lo, i_hi, d_lo, d_hi,
                                        qk_scale, softcap_over_scale,
                                        BLOCK_N, HEAD_DIM, EVEN_D, True, SOFTCAP)

    # -- epilogue: write (FRESH) or lse-merge into out / lse --
    if MAX_LOGITS:
        tl.store(tile_max_ptr + tile * num_heads + head, tl.max(m_i, 0) * LN2)
    reached = m_ok & (l_i > 0.0)
    l_safe = tl.where(reached, l_i, 1.0)
    lse_new = tl.where(reached, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
    o_new = acc / l_safe[:, None]
    lse_ptrs = lse_ptr + offs_m.to(tl.int64) * stride_lm + head * stride_lh
    o_ptrs = (out_ptr + offs_m[:, None].to(tl.int64) * stride_om + head.to(tl.int64) * stride_oh
              + offs_d[None, :])
    if FRESH:
        # every row of the tile: unreached rows have acc = 0, l = 0 -> out 0, lse -inf
        tl.store(o_ptrs, o_new.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
        tl.store(lse_ptrs, lse_new, mask=m_ok)
    else:
        lse_old = tl.load(lse_ptrs, mask=reached, other=float("-inf"))
        lse_max = tl.maximum(lse_old, lse_new)
        lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
        w_old = tl.exp(lse_old - lse_max)
        w_new = tl.exp(lse_new - lse_max)
        w_sum = tl.where(reached, w_old + w_new, 1.0)
        st_mask = reached[:, None] & (offs_d[None, :] < HEAD_DIM)
        o_old = tl.load(o_ptrs, mask=st_mask, other=0.0)
        o_mrg = (o_old * w_old[:, None] + o_new * w_new[:, None]) / w_sum[:, None]
        tl.store(o_ptrs, o_mrg, mask=st_mask)
        tl.store(lse_ptrs, lse_max + tl.log(w_sum), mask=reached)
