"""A CPU stand-in for Flash-Attention 4's block-sparse interface, to test the fa4 backend's plumbing.

It honours FA4's contract as the backend relies on it: q/k/v [1, S, H, D], lse [1, H, Sq]; only
tiles in the block lists are visited; *full* tiles need no mask, *partial* tiles call the mask
function (with scalar q index, vector kv index, and the aux tensors); the backward takes the global
out and lse and reads the transposed (per k block) lists. The math is plain dense torch, so what
the tests check is the translation and the calling convention, not FA4's kernels (the GPU test
does that).
"""

from __future__ import annotations

import sys
import types
from typing import NamedTuple

import torch


class BlockSparseTensorsTorch(NamedTuple):
    mask_block_cnt: torch.Tensor
    mask_block_idx: torch.Tensor
    full_block_cnt: torch.Tensor | None = None
    full_block_idx: torch.Tensor | None = None
    cu_total_m_blocks: torch.Tensor | None = None
    cu_block_idx_offsets: torch.Tensor | None = None
    block_size: tuple[int, int] | None = None


CALLS = {"fwd": 0, "bwd": 0, "mask_rows": 0}
EMPTY_ROWS_AS_GARBAGE = False  # tests set it: empty rows come back as out NaN, lse +inf


def _visible(bst, mask_mod, aux, sq, sk, transposed):
    """bool [Sq, Sk] visible cells (block lists + the mask function on partial tiles), and the
    cells of every visited tile (a kernel computes those, masked or not)."""
    bm, bn = bst.block_size
    vis = torch.zeros(sq, sk, dtype=torch.bool)
    visited = torch.zeros(sq, sk, dtype=torch.bool)
    rows = bst.mask_block_cnt.shape[-1]
    for r in range(rows):
        for cnt, idx, full in ((bst.full_block_cnt, bst.full_block_idx, True),
                               (bst.mask_block_cnt, bst.mask_block_idx, False)):
            for c in idx[0, 0, r, : int(cnt[0, 0, r])].tolist():
                i, j = (c, r) if transposed else (r, c)
                q0, q1 = i * bm, min((i + 1) * bm, sq)
                k0, k1 = j * bn, min((j + 1) * bn, sk)
                assert not visited[q0:q1, k0:k1].any(), "a tile is listed twice"
                visited[q0:q1, k0:k1] = True
                if full:
                    vis[q0:q1, k0:k1] = True
                    continue
                kv = torch.arange(k0, k1, dtype=torch.int32)
                for q in range(q0, q1):
                    CALLS["mask_rows"] += 1
                    qi = torch.tensor([q], dtype=torch.int32)
                    vis[q, k0:k1] = mask_mod(torch.zeros(1), torch.zeros(1), qi, kv, None, aux)
    return vis, visited


def _scores(q, k, scale, softcap):
    hq, hk = q.shape[2], k.shape[2]
    kh = k[0].double().transpose(0, 1).repeat_interleave(hq // hk, 0)  # [hq, Sk, d]
    s = torch.matmul(q[0].double().transpose(0, 1), kh.transpose(1, 2)) * scale
    t = None
    if softcap:
        t = torch.tanh(s / softcap)
        s = t * softcap
    return s, t, kh


def _flash_attn_fwd(q, k, v, *, softmax_scale, softcap, mask_mod, block_sparse_tensors,
                    return_lse, aux_tensors, **_):
    CALLS["fwd"] += 1
    assert q.dim() == 4 and q.shape[0] == 1 and return_lse
    sq, sk = q.shape[1], k.shape[1]
    vis, _ = _visible(block_sparse_tensors, mask_mod, aux_tensors, sq, sk, transposed=False)
    s, _, _ = _scores(q, k, softmax_scale, softcap)
    s = s.masked_fill(~vis, float("-inf"))
    lse = torch.logsumexp(s, -1)  # [hq, Sq]; -inf where nothing is visible
    p = torch.exp(s - torch.where(torch.isneginf(lse), 0.0, lse)[..., None])
    hq, hk = q.shape[2], k.shape[2]
    vh = v[0].double().transpose(0, 1).repeat_interleave(hq // hk, 0)
    out = torch.matmul(p, vh).transpose(0, 1).to(q.dtype)  # [Sq, hq, d]
    if EMPTY_ROWS_AS_GARBAGE:  # what a kernel may leave in rows that see nothing
        empty = torch.isneginf(lse).transpose(0, 1)
        out = out.masked_fill(empty.unsqueeze(-1), float("nan"))
        lse = lse.masked_fill(torch.isneginf(lse), float("inf"))
    return out[None], lse[None].float(), None, None, None


def _flash_attn_bwd(q, k, v, out, dout, lse, *, softmax_scale, softcap, mask_mod, aux_tensors,
                    block_sparse_tensors, **_):
    CALLS["bwd"] += 1
    sq, sk, hq, hk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    assert lse.shape == (1, hq, sq)
    vis, visited = _visible(block_sparse_tensors, mask_mod, aux_tensors, sq, sk, transposed=True)
    s, t, kh = _scores(q, k, softmax_scale, softcap)
    # like a kernel: masked cells of a visited tile are exp(-inf - lse) (NaN if lse = -inf)
    p = torch.exp(s.masked_fill(~vis, float("-inf")) - lse[0].double()[..., None])
    p = p.masked_fill(~visited, 0.0)  # [hq, Sq, Sk]
    do = dout[0].double().transpose(0, 1)  # [hq, Sq, d]
    o = out[0].double().transpose(0, 1)
    vh = v[0].double().transpose(0, 1).repeat_interleave(hq // hk, 0)
    dv = torch.matmul(p.transpose(1, 2), do)
    ds = p * (torch.matmul(do, vh.transpose(1, 2)) - (do * o).sum(-1, keepdim=True))
    if t is not None:
        ds = ds * (1 - t * t)
    dq = torch.matmul(ds, kh) * softmax_scale
    dk = torch.matmul(ds.transpose(1, 2), q[0].double().transpose(0, 1)) * softmax_scale
    g = hq // hk
    dk = dk.reshape(hk, g, sk, -1).sum(1)
    dv = dv.reshape(hk, g, sk, -1).sum(1)
    return tuple(x.transpose(0, 1)[None].to(q.dtype) for x in (dq, dk, dv))


def install(monkeypatch) -> None:
    """Put the fake FA4 (and the cutlass names the mask function uses) into sys.modules."""
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    module("flash_attn")
    module("flash_attn.cute")
    module("flash_attn.cute.interface", _flash_attn_fwd=_flash_attn_fwd, _flash_attn_bwd=_flash_attn_bwd)
    module("flash_attn.cute.block_sparsity", BlockSparseTensorsTorch=BlockSparseTensorsTorch)
    module("flash_attn.cute.utils", scalar_to_ssa=lambda x, dtype: x)
    module("cutlass", range_constexpr=range, Int32=torch.int32)
    module("cutlass.cute", jit=lambda f: f)
    for k in CALLS:
        CALLS[k] = 0
