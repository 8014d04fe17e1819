"""A CPU stand-in for Flash-Attention 4's interface, to test the fa4 backend's plumbing.

It honours FA4's contract as the backend relies on it: q/k/v [1, S, H, D] and lse [1, H, Sq], or
[S, H, D] and [H, S] with cu_seqlens (varlen); causal / window_size_left / window_size_right as FA4
documents them; with block lists, only listed tiles are visited, *full* tiles need no mask and
*partial* tiles call the mask function (scalar q index, vector kv index, the aux tensors); the
backward takes the global out and lse and reads the transposed (per k block) lists; given out= /
dq= / dk= / dv= buffers are written and returned; with ``seqused_q`` a varlen document's rows past
its used count are not computed (out, lse, dq: their unknown values are NaN here). The math is plain dense torch, so what the tests
check is the translation and the calling convention, not FA4's kernels (the GPU test does that).
"""

from __future__ import annotations

import functools
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
HOST_WORK = None  # tests set it: f(q, out, lse) run by the forward's host code before its launch
LAUNCH_UNCACHED = False  # tests set it: the forward launches its kernel without the compile cache
# rows a seqused_q call does not compute: NaN (False, so that a caller reading them fails loudly) or left
# as they were in the buffer (True, what FA4 does: e.g. torch.empty's contents)
UNWRITTEN_ROWS_KEPT = False


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


def _unused_rows(sq, cu_seqlens_q, seqused_q):
    """bool [Sq]: rows of varlen documents past their ``seqused_q`` count (FA4 computes none of them)."""
    unused = torch.zeros(sq, dtype=torch.bool)
    if seqused_q is not None:
        assert cu_seqlens_q is not None and seqused_q.shape == (cu_seqlens_q.shape[0] - 1,)
        for (q0, q1), n in zip(zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist()), seqused_q.tolist()):
            assert 0 <= n <= q1 - q0
            unused[q0 + n:q1] = True
    return unused


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


class _JITCache:
    """FA4's compile cache interface (cache_utils.JITCache): compile key -> launchable kernel."""

    def __init__(self):
        self.cache = {}

    def __getitem__(self, key):
        return self.cache[key]

    def __setitem__(self, key, fn):
        self.cache[key] = fn

    def __contains__(self, key):
        return key in self.cache


class AuxData(NamedTuple):
    tensors: tuple | list | None = None
    scalars: tuple | None = None


def _lists(bst):
    return None if bst is None else (bst.mask_block_cnt, bst.mask_block_idx, bst.full_block_cnt, bst.full_block_idx)


def _as_bst(lists, block_size):
    return None if lists is None else BlockSparseTensorsTorch(*lists, block_size=block_size)


# Like FA4, each entry point is host code that picks a "compiled kernel" from its compile cache by a
# key of compile-time choices and launches it with tensors and scalars; all tensor math happens in
# the kernels (what magi_ffa's launch replay relies on and records).

def _per_sequence(kernel):
    """A kernel over FA4's batch layout [B, S, ...] (B > 1: FA4's own masking only) as B runs of
    the one-sequence body on [1, S, ...] slices of every tensor argument; varlen runs it once."""
    def run(*args, varlen):
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() >= 3]
        batch = 1 if varlen else args[tensors[0]].shape[0]
        if batch == 1:
            return kernel(*args)
        assert args[-2] is None, "FA4's batch layout with B > 1 is only used with its own masking here"
        for b in range(batch):
            kernel(*(a[b:b + 1] if i in tensors else a for i, a in enumerate(args)))
    return run


def _fwd_kernel(block_size, mask_mod, causal, q, k, v, out, lse, softmax_scale, softcap, cu_seqlens_q,
                cu_seqlens_k, seqused_q, window_size_left, window_size_right, lists, aux):
    CALLS["fwd"] += 1
    _per_sequence(_fwd_one)(q, k, v, out, lse, softmax_scale, softcap, cu_seqlens_q, cu_seqlens_k, seqused_q,
                            window_size_left, window_size_right, (block_size, mask_mod, causal), lists, aux,
                            varlen=cu_seqlens_q is not None)


def _fwd_one(q, k, v, out, lse, softmax_scale, softcap, cu_seqlens_q, cu_seqlens_k, seqused_q,
             window_size_left, window_size_right, compiled, lists, aux):
    block_size, mask_mod, causal = compiled
    varlen = cu_seqlens_q is not None
    q, k, v = (_with_batch(x, varlen) for x in (q, k, v))
    assert q.dim() == 4 and q.shape[0] == 1
    sq, sk = q.shape[1], k.shape[1]
    vis, _ = _mask(_as_bst(lists, block_size), mask_mod, aux.tensors, sq, sk, False, dict(
        causal=causal, window_size_left=window_size_left, window_size_right=window_size_right,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k))
    s, _, _ = _scores(q, k, softmax_scale, softcap)
    s = s.masked_fill(~vis, float("-inf"))
    lse_v = torch.logsumexp(s, -1)  # [hq, Sq]; -inf where nothing is visible
    p = torch.exp(s - torch.where(torch.isneginf(lse_v), 0.0, lse_v)[..., None])
    hq, hk = q.shape[2], k.shape[2]
    vh = v[0].double().transpose(0, 1).repeat_interleave(hq // hk, 0)
    o = torch.matmul(p, vh).transpose(0, 1).to(q.dtype)  # [Sq, hq, d]
    if EMPTY_ROWS_AS_GARBAGE:  # what a kernel may leave in rows that see nothing
        empty = torch.isneginf(lse_v).transpose(0, 1)
        o = o.masked_fill(empty.unsqueeze(-1), float("nan"))
        lse_v = lse_v.masked_fill(torch.isneginf(lse_v), float("inf"))
    unused = _unused_rows(sq, cu_seqlens_q, seqused_q)  # not computed: unknown values
    if UNWRITTEN_ROWS_KEPT:
        o = torch.where(unused[:, None, None], (out if varlen else out[0]).double(), o.double()).to(out.dtype)
        lse_v = torch.where(unused[None], (lse if varlen else lse[0]).double(), lse_v)
    else:
        o = o.masked_fill(unused[:, None, None], float("nan"))
        lse_v = lse_v.masked_fill(unused[None], float("nan"))
    out.copy_(o if varlen else o[None])
    lse.copy_(lse_v if varlen else lse_v[None])


def _flash_attn_fwd(q, k, v, *, softmax_scale, softcap, return_lse, mask_mod=None, block_sparse_tensors=None,
                    aux_tensors=None, out=None, causal=False, window_size_left=None, window_size_right=None,
                    cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, seqused_q=None, **_):
    varlen = cu_seqlens_q is not None
    assert (cu_seqlens_k is not None) == varlen and return_lse
    if out is None:
        out = torch.empty_like(q)
    assert out.dtype == q.dtype and out.shape == q.shape, "FA4 checks the buffers it is given"
    lse_shape = (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    block_size = None if block_sparse_tensors is None else block_sparse_tensors.block_size
    key = (block_size, mask_mod, causal, q.dtype, varlen)
    if key not in _flash_attn_fwd.compile_cache:
        _flash_attn_fwd.compile_cache[key] = functools.partial(_fwd_kernel, block_size, mask_mod, causal)
    if HOST_WORK is not None:
        HOST_WORK(q, out, lse)
    kernel = _flash_attn_fwd.compile_cache[key]
    if LAUNCH_UNCACHED:  # as opaque as a compiled kernel: no torch function sees its work
        uncached = functools.partial(_fwd_kernel, block_size, mask_mod, causal)

        def kernel(*args):
            with torch._C.DisableTorchFunction():
                uncached(*args)
    kernel(
        q.detach(), k.detach(), v.detach(), out.detach(), lse, softmax_scale, softcap, cu_seqlens_q,
        cu_seqlens_k, seqused_q, window_size_left, window_size_right, _lists(block_sparse_tensors),
        AuxData(aux_tensors, None))
    return out, lse, None, None, None


def _bwd_pre_kernel(varlen, out, dout, dpsum, dq_accum):
    """rowsum(out * dout) per head, [B, hq, Sq] ([hq, Sq] varlen); the dq accumulator zeroed (FA4's
    preprocess)."""
    o, do = (_with_batch(x, varlen).double() for x in (out, dout))
    (dpsum[None] if varlen else dpsum).copy_((o * do).sum(-1).transpose(1, 2))
    dq_accum.zero_()


def _bwd_main_kernel(block_size, mask_mod, causal, q, k, v, dout, lse, dpsum, dq_accum, dk_out, dv_out,
                     softmax_scale, softcap, cu_seqlens_q, cu_seqlens_k, window_size_left, window_size_right,
                     lists, aux):
    CALLS["bwd"] += 1
    _per_sequence(_bwd_one)(q, k, v, dout, lse, dpsum, dq_accum, dk_out, dv_out, softmax_scale, softcap,
                            cu_seqlens_q, cu_seqlens_k, window_size_left, window_size_right,
                            (block_size, mask_mod, causal), lists, aux, varlen=cu_seqlens_q is not None)


def _bwd_one(q, k, v, dout, lse, dpsum, dq_accum, dk_out, dv_out, softmax_scale, softcap, cu_seqlens_q,
             cu_seqlens_k, window_size_left, window_size_right, compiled, lists, aux):
    block_size, mask_mod, causal = compiled
    varlen = cu_seqlens_q is not None
    q, k, v, dout, lse, dpsum = (_with_batch(x, varlen) for x in (q, k, v, dout, lse, dpsum))
    sq, sk, hq, hk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    assert lse.shape == (1, hq, sq)
    vis, visited = _mask(_as_bst(lists, block_size), mask_mod, aux.tensors, sq, sk, True, dict(
        causal=causal, window_size_left=window_size_left, window_size_right=window_size_right,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k))
    s, t, kh = _scores(q, k, softmax_scale, softcap)
    # like a kernel: masked cells of a visited tile are exp(-inf - lse) (NaN if lse = -inf)
    p = torch.exp(s.masked_fill(~vis, float("-inf")) - lse[0].double()[..., None])
    p = p.masked_fill(~visited, 0.0)  # [hq, Sq, Sk]
    do = dout[0].double().transpose(0, 1)  # [hq, Sq, d]
    vh = v[0].double().transpose(0, 1).repeat_interleave(hq // hk, 0)
    gv = torch.matmul(p.transpose(1, 2), do)
    ds = p * (torch.matmul(do, vh.transpose(1, 2)) - dpsum[0][..., None])
    if t is not None:
        ds = ds * (1 - t * t)
    gq = torch.matmul(ds, kh) * softmax_scale
    gk = torch.matmul(ds.transpose(1, 2), q[0].double().transpose(0, 1)) * softmax_scale
    g = hq // hk
    gk = gk.reshape(hk, g, sk, -1).sum(1)
    gv = gv.reshape(hk, g, sk, -1).sum(1)
    dq_accum.add_(gq.transpose(0, 1).reshape(dq_accum.shape))
    for dst, x in ((dk_out, gk), (dv_out, gv)):  # the GQA accumulators are added into, else written
        x = x.transpose(0, 1).to(dst.dtype).reshape(dst.shape)
        dst.add_(x) if dst.dtype == torch.float64 and g > 1 else dst.copy_(x)


def _bwd_post_kernel(accum, output, cu_seqlens_q=None, seqused_q=None):
    """accum -> output; with seqused_q (FA4's dq of a varlen call) the rows past a document's used
    count are not computed: unknown values, NaN here."""
    res = accum.reshape(output.shape).to(output.dtype)
    unused = _unused_rows(output.shape[-3], cu_seqlens_q, seqused_q).view(*[1] * (res.dim() - 3), -1, 1, 1)
    output.copy_(torch.where(unused, output, res) if UNWRITTEN_ROWS_KEPT else res.masked_fill(unused, float("nan")))


def _flash_attn_bwd(q, k, v, out, dout, lse, *, softmax_scale, softcap, mask_mod=None, aux_tensors=None,
                    block_sparse_tensors=None, dq=None, dk=None, dv=None, causal=False, window_size_left=None,
                    window_size_right=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                    max_seqlen_k=None, seqused_q=None, **_):
    varlen = cu_seqlens_q is not None
    dq, dk, dv = (torch.empty_like(t) if g is None else g for g, t in ((dq, q), (dk, k), (dv, v)))
    for g, t in ((dq, q), (dk, k), (dv, v)):
        assert g.dtype == t.dtype and g.shape == t.shape, "FA4 checks the buffers it is given"
    dpsum = torch.empty(lse.shape, dtype=torch.float64, device=q.device)
    dq_accum = torch.empty(q.shape, dtype=torch.float64, device=q.device)  # zeroed by the preprocess
    gqa = q.shape[-2] != k.shape[-2]
    dk_accum, dv_accum = (torch.zeros(t.shape, dtype=torch.float64, device=t.device) if gqa else None
                          for t in (k, v))
    block_size = None if block_sparse_tensors is None else block_sparse_tensors.block_size
    caches = _flash_attn_bwd.compile_cache
    for key, kernel in ((("pre", varlen), functools.partial(_bwd_pre_kernel, varlen)),
                        (("main", block_size, mask_mod, causal), functools.partial(
                            _bwd_main_kernel, block_size, mask_mod, causal)),
                        (("post",), _bwd_post_kernel)):
        if key not in caches:
            caches[key] = kernel
    caches[("pre", varlen)](out.detach(), dout.detach(), dpsum, dq_accum)
    caches[("main", block_size, mask_mod, causal)](
        q.detach(), k.detach(), v.detach(), dout.detach(), lse.detach(), dpsum, dq_accum,
        dk_accum if gqa else dk, dv_accum if gqa else dv, softmax_scale, softcap, cu_seqlens_q,
        cu_seqlens_k, window_size_left, window_size_right, _lists(block_sparse_tensors),
        AuxData(aux_tensors, None))
    caches[("post",)](dq_accum, dq, cu_seqlens_q, seqused_q)
    if gqa:
        caches[("post",)](dk_accum, dk)
        caches[("post",)](dv_accum, dv)
    return dq, dk, dv


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
    module("flash_attn.cute.utils", scalar_to_ssa=lambda x, dtype: x, AuxData=AuxData)
    module("cutlass", range_constexpr=range, Int32=torch.int32)
    module("cutlass.cute", jit=lambda f: f)
    for k in CALLS:
        CALLS[k] = 0
    _flash_attn_fwd.compile_cache = _JITCache()
    _flash_attn_bwd.compile_cache = _JITCache()


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
