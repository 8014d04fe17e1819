"""A CPU stand-in for Flash-Attention 4's interface, to test the fa4 backend's plumbing.

It honours FA4's contract as the backend relies on it: q/k/v [1, S, H, D] and lse [1, H, Sq], or
[S, H, D] and [H, S] with cu_seqlens (varlen); causal / window_size_left / window_size_right as FA4
documents them; with block lists, only listed tiles are visited, *full* tiles need no mask and
*partial* tiles call the mask function (scalar q index, vector kv index, the aux tensors); the
backward takes the global out and lse and reads the transposed (per k block) lists; given out= /
dq= / dk= / dv= buffers are written and returned. The math is plain dense torch, so what the tests
check is the translation and the calling convention, not FA4's kernels (the GPU test does that).
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


CALLS = {"fwd": 0, "bwd": 0, "mask_rows": 0, "native": 0}
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
                assert mask_mod is not None, "a partial tile without a mask function would be computed whole"
                kv = torch.arange(k0, k1, dtype=torch.int32)
                for q in range(q0, q1):
                    CALLS["mask_rows"] += 1
                    qi = torch.tensor([q], dtype=torch.int32)
                    vis[q, k0:k1] = mask_mod(torch.zeros(1), torch.zeros(1), qi, kv, None, aux)
    return vis, visited


def _native_visible(sq, sk, causal, window_size_left, window_size_right, cu_seqlens_q, cu_seqlens_k=None, **_):
    """FA4's own masking, from its documented semantics (not from the backend's code): in a
    sequence (a varlen document) of lq rows and lk keys, key c is visible from row r iff
    r + (lk - lq) - left <= c <= r + (lk - lq) + right (causal: right 0; the diagonal is
    bottom-right aligned)."""
    left, right = window_size_left, 0 if causal else window_size_right
    if cu_seqlens_q is None:
        docs = [((0, sq), (0, sk))]
    else:
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        assert len(cq) == len(ck) and cq[-1] == sq and ck[-1] == sk, "FA4 reads cu_seqlens over the whole tensors"
        docs = list(zip(zip(cq[:-1], cq[1:]), zip(ck[:-1], ck[1:])))
    vis = torch.zeros(sq, sk, dtype=torch.bool)
    for (q0, q1), (k0, k1) in docs:
        lq, lk = q1 - q0, k1 - k0
        r = torch.arange(lq)[:, None] + (lk - lq)
        c = torch.arange(lk)[None, :]
        ok = torch.ones(lq, lk, dtype=torch.bool)
        if left is not None:
            ok &= c >= r - left
        if right is not None:
            ok &= c <= r + right
        vis[q0:q1, k0:k1] = ok
    return vis


def _mask(block_sparse_tensors, mask_mod, aux_tensors, sq, sk, transposed, kw):
    """(visible, visited) cells: the block-sparse contract, or FA4's own masking (NATIVE counts)."""
    if block_sparse_tensors is None:
        assert mask_mod is None and aux_tensors is None
        CALLS["native"] += 1
        vis = _native_visible(sq, sk, **kw)
        return vis, torch.ones_like(vis)
    return _visible(block_sparse_tensors, mask_mod, aux_tensors, sq, sk, transposed)


def _with_batch(t, varlen):
    return t if (t is None or not varlen) else t.unsqueeze(0)


def _scores(q, k, scale, softcap):
    hq, hk = q.shape[2], k.shape[2]
    kh = k[0].double().transpose(0, 1).repeat_interleave(hq // hk, 0)  # [hq, Sk, d]
    s = torch.matmul(q[0].double().transpose(0, 1), kh.transpose(1, 2)) * scale
    t = None
    if softcap:
        t = torch.tanh(s / softcap)
        s = t * softcap
    return s, t, kh


def _write(dst, val):
    """FA4's out= / dq= contract: a given buffer (of the input dtype) is written and returned."""
    if dst is None:
        return val
    assert dst.dtype == val.dtype and dst.shape == val.shape, "FA4 checks the buffers it is given"
    dst.copy_(val)
    return dst


def _flash_attn_fwd(q, k, v, *, softmax_scale, softcap, return_lse, mask_mod=None, block_sparse_tensors=None,
                    aux_tensors=None, out=None, causal=False, window_size_left=None, window_size_right=None,
                    cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, **_):
    CALLS["fwd"] += 1
    varlen = cu_seqlens_q is not None
    assert (cu_seqlens_k is not None) == varlen and return_lse
    q, k, v = (_with_batch(x, varlen) for x in (q, k, v))
    assert q.dim() == 4 and q.shape[0] == 1
    sq, sk = q.shape[1], k.shape[1]
    vis, _ = _mask(block_sparse_tensors, mask_mod, aux_tensors, sq, sk, False, dict(
        causal=causal, window_size_left=window_size_left, window_size_right=window_size_right,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k))
    s, _, _ = _scores(q, k, softmax_scale, softcap)
    s = s.masked_fill(~vis, float("-inf"))
    lse = torch.logsumexp(s, -1)  # [hq, Sq]; -inf where nothing is visible
    p = torch.exp(s - torch.where(torch.isneginf(lse), 0.0, lse)[..., None])
    hq, hk = q.shape[2], k.shape[2]
    vh = v[0].double().transpose(0, 1).repeat_interleave(hq // hk, 0)
    o = torch.matmul(p, vh).transpose(0, 1).to(q.dtype)  # [Sq, hq, d]
    if EMPTY_ROWS_AS_GARBAGE:  # what a kernel may leave in rows that see nothing
        empty = torch.isneginf(lse).transpose(0, 1)
        o = o.masked_fill(empty.unsqueeze(-1), float("nan"))
        lse = lse.masked_fill(torch.isneginf(lse), float("inf"))
    o, lse = (o, lse.float()) if varlen else (o[None], lse[None].float())
    return _write(out, o), lse, None, None, None


def _flash_attn_bwd(q, k, v, out, dout, lse, *, softmax_scale, softcap, mask_mod=None, aux_tensors=None,
                    block_sparse_tensors=None, dq=None, dk=None, dv=None, causal=False, window_size_left=None,
                    window_size_right=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                    max_seqlen_k=None, **_):
    CALLS["bwd"] += 1
    varlen = cu_seqlens_q is not None
    q, k, v, out, dout, lse = (_with_batch(x, varlen) for x in (q, k, v, out, dout, lse))
    sq, sk, hq, hk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    assert lse.shape == (1, hq, sq)
    vis, visited = _mask(block_sparse_tensors, mask_mod, aux_tensors, sq, sk, True, dict(
        causal=causal, window_size_left=window_size_left, window_size_right=window_size_right,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k))
    s, t, kh = _scores(q, k, softmax_scale, softcap)
    # like a kernel: masked cells of a visited tile are exp(-inf - lse) (NaN if lse = -inf)
    p = torch.exp(s.masked_fill(~vis, float("-inf")) - lse[0].double()[..., None])
    p = p.masked_fill(~visited, 0.0)  # [hq, Sq, Sk]
    do = dout[0].double().transpose(0, 1)  # [hq, Sq, d]
    o = out[0].double().transpose(0, 1)
    vh = v[0].double().transpose(0, 1).repeat_interleave(hq // hk, 0)
    gv = torch.matmul(p.transpose(1, 2), do)
    ds = p * (torch.matmul(do, vh.transpose(1, 2)) - (do * o).sum(-1, keepdim=True))
    if t is not None:
        ds = ds * (1 - t * t)
    gq = torch.matmul(ds, kh) * softmax_scale
    gk = torch.matmul(ds.transpose(1, 2), q[0].double().transpose(0, 1)) * softmax_scale
    g = hq // hk
    gk = gk.reshape(hk, g, sk, -1).sum(1)
    gv = gv.reshape(hk, g, sk, -1).sum(1)
    res = (x.transpose(0, 1).to(q.dtype) for x in (gq, gk, gv))
    res = res if varlen else (x[None] for x in res)
    return tuple(_write(dst, x) for dst, x in zip((dq, dk, dv), res))


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


class KeepForTheProcess:
    """A stand-in for pytest's monkeypatch where nothing is undone (a benchmark, a spawned rank)."""

    @staticmethod
    def setitem(mapping, key, value):
        mapping[key] = value

    @staticmethod
    def setattr(target, name, value):
        setattr(target, name, value)


def install_backend_on_cpu(monkeypatch, block_size: tuple[int, int] | None = (4, 8)) -> None:
    """install(), then the fa4 backend allowed on CPU in float32/float64 as if on an SM90 GPU, with
    tiny sparse blocks (``block_size``; None keeps FA4's own) and its caches emptied."""
    from magi_ffa.backends import fa4 as fa4_backend
    from magi_ffa.backends.fa4 import FA4Backend, kernel

    install(monkeypatch)
    kernel.import_fa4.cache_clear()
    kernel._interval_mask_mod.cache_clear()
    fa4_backend.clear_mask_cache()
    monkeypatch.setattr(FA4Backend, "DEVICES", FA4Backend.DEVICES | {"cpu"})
    monkeypatch.setattr(FA4Backend, "DTYPES", FA4Backend.DTYPES | {torch.float32, torch.float64})
    monkeypatch.setattr(fa4_backend, "_arch", lambda device: 90)
    if block_size is not None:
        monkeypatch.setattr(kernel, "sparse_block_size", lambda arch: block_size)
