"""The fa4 backend end to end on CPU, through a stand-in for FA4 that honours its block-sparse
contract (tests/_fake_fa4.py): translation, calling convention, lse merge, global-lse backward,
selection, refusals and the missing-dependency error. FA4's own kernels are checked on a GPU."""

from __future__ import annotations

import random
import sys

import _fake_fa4
import pytest
import torch
from magi_ffa import ffa_backward, ffa_forward, flex_flash_attn_func
from magi_ffa.backends import fa4 as fa4_backend
from magi_ffa.backends.fa4 import FA4Backend, kernel, native, replay
from magi_ffa.backends.fa4.block_sparse import row_intervals
from magi_ffa.errors import BackendUnavailableError, FFAInputError
from magi_ffa.select import resolve_backend_name, select_backend
from magi_ffa.testing import overlapping_slices, random_slices, ref_attn_dense, varlen_slices


def _window_slices(s, left, right):
    """A sliding window as one slice per row: row r sees keys [r - left, r + right]."""
    qr = [[r, r + 1] for r in range(s)]
    kr = [[max(0, r - left), min(s, r + right + 1)] for r in range(s)]
    return qr, kr, [0] * s


def native_mask(qr, kr, ts, sq, sk):
    """What native.py makes of a mask (None: block lists)."""
    return native.recognise_native(*row_intervals(qr, kr, ts, sq), sq, sk)


def _masks():
    """(name, Sq, Sk, slices..., whether it runs on FA4's own masking)"""
    rng = random.Random(1)
    yield "random", 37, 45, *random_slices(rng, 37, 45, 6), False
    yield "overlapping", 30, 26, *overlapping_slices(rng, 30, 26, 5, allow_empty_k=False), False
    yield "bi-causal-empty-rows", 24, 24, [[2, 10], [14, 20]], [[0, 12], [6, 18]], [3, 2], False
    # documents with rows that see nothing (FA4 varlen with seqused_q: those rows are not computed)
    yield "documents-empty-rows", 24, 24, [[2, 10], [14, 20]], [[0, 8], [12, 18]], [0, 0], True
    yield "varlen-causal", 33, 33, *varlen_slices([10, 3, 20], 1), True
    yield "varlen-full-unordered", 33, 33, [[13, 33], [0, 10], [10, 13]], [[13, 33], [0, 10], [10, 13]], [0] * 3, True
    yield "causal-in-two-slices", 30, 30, [[0, 12], [12, 30]], [[0, 12], [0, 30]], [1, 1], True
    yield "window", 28, 28, *_window_slices(28, 5, 2), True
    # documents of one length: FA4's batch layout [B, S / B] (native.BATCHED_DOCUMENTS)
    yield "equal-documents-causal", 32, 32, *varlen_slices([8] * 4, 1), True
    yield "equal-documents-full-cut", 30, 30, [[0, 4], [4, 10], [10, 20], [20, 30]], \
        [[0, 10], [0, 10], [10, 20], [20, 30]], [0] * 4, True


@pytest.mark.parametrize("name,sq,sk,qr,kr,ts,native", list(_masks()),
                         ids=lambda x: x if isinstance(x, str) else "")
@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_matches_float64_reference(fake_fa4, name, sq, sk, qr, kr, ts, native, softcap):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(sq, 4, 64, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(sk, 2, 64, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(sk, 2, 64, generator=g, dtype=torch.float64, requires_grad=True)
    out, meta = flex_flash_attn_func(q, k, v, qr, kr, ts, softcap=softcap, backend="fa4")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_out, ref_lse, _ = ref_attn_dense(q, k, v, qr, kr, ts, softcap=softcap)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), dout)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(meta.lse.double(), ref_lse, atol=1e-5, rtol=1e-5)  # lse is fp32
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert fake_fa4["fwd"] == 1 and fake_fa4["bwd"] == 1
    recognised = native_mask(qr, kr, ts, sq, sk)
    assert (recognised is not None and recognised.batch > 1) == name.startswith("equal-documents")
    if native:  # FA4's own masking (the stand-in counts each sequence of a batch), no block lists, no mask function
        assert fake_fa4["native"] == 2 * recognised.batch and fake_fa4["mask_rows"] == 0
    else:
        assert fake_fa4["native"] == 0 and fake_fa4["mask_rows"] > 0


def test_empty_rows_are_normalised_whatever_the_kernel_leaves(fake_fa4, monkeypatch):
    monkeypatch.setattr(_fake_fa4, "EMPTY_ROWS_AS_GARBAGE", True)
    qr, kr, ts = [[2, 10], [14, 20]], [[0, 12], [6, 18]], [3, 2]  # rows 0-1, 10-13, 20-23 see nothing
    g = torch.Generator().manual_seed(5)
    q = torch.randn(24, 2, 64, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(24, 2, 64, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out, meta = flex_flash_attn_func(q, k, v, qr, kr, ts, backend="fa4")
    ref_out, ref_lse, _ = ref_attn_dense(q, k, v, qr, kr, ts)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
    assert torch.equal(torch.isneginf(meta.lse), torch.isneginf(ref_lse)) and torch.isneginf(meta.lse).any()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("skip_in", [{"fwd"}, {"fwd", "bwd"}, set()], ids=["skip-fwd", "skip-both", "skip-none"])
def test_stages_accumulate_like_the_runtime(fake_fa4, monkeypatch, skip_in):
    """The distributed runtime's use: each stage merges into fp32 accumulators (not fresh); the
    backward of each stage runs under the final out/lse. Stage 1 is native (causal); stage 2 is
    native documents with rows that see nothing and keys nobody reads (FA4 varlen with filler
    documents); stage 3 has two key runs per row (block lists)."""
    monkeypatch.setattr(native, "SKIP_ROWS_WITHOUT_KEYS_IN", frozenset(skip_in))  # seqused_q per direction
    g = torch.Generator().manual_seed(7)
    q = torch.randn(20, 2, 64, generator=g, dtype=torch.float64)
    k, v = (torch.randn(20, 1, 64, generator=g, dtype=torch.float64) for _ in range(2))
    dout = torch.randn(20, 2, 64, generator=g, dtype=torch.float64)
    stages = [([[0, 20]], [[0, 20]], [1]), ([[0, 10]], [[12, 20]], [0]),  # causal, then keys above it
              ([[10, 14], [10, 14]], [[15, 17], [18, 20]], [0, 0])]
    out = lse = None
    for qr, kr, ts in stages:
        out, lse, _ = ffa_forward(q, k, v, qr, kr, ts, softmax_scale=0.125, out=out, lse=lse, backend="fa4")
    qr_all, kr_all, ts_all = (sum((list(st[i]) for st in stages), []) for i in range(3))
    qa, ka, va = (x.clone().requires_grad_() for x in (q, k, v))
    ref_out, ref_lse, _ = ref_attn_dense(qa, ka, va, qr_all, kr_all, ts_all, softmax_scale=0.125)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)  # FA4's lse is fp32
    torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=1e-6)
    grads = None
    for qr, kr, ts in stages:
        grads = ffa_backward(dout, q, k, v, out, lse, qr, kr, ts, softmax_scale=0.125,
                             **(dict(zip(("dq", "dk", "dv"), grads)) if grads else {}), backend="fa4")
    for a, b in zip(grads, torch.autograd.grad(ref_out, (qa, ka, va), dout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert fake_fa4["native"] == 4 and fake_fa4["fwd"] == fake_fa4["bwd"] == 3


@pytest.mark.parametrize("kept", [True, False], ids=["rows-kept", "rows-nan"])
def test_runtime_backward_writes_a_stage_payload_and_adds_its_dq(fake_fa4, monkeypatch, kept):
    """The runtime's backward with writing buffers (interface 1.3): the host call writes dq, dk, dv;
    a remote stage writes its own dK/dV payload (overwrite=("dk", "dv")) and adds its dq into the
    host's, in q's dtype. FA4 writes the payload itself and the dq add skips the rows FA4 left
    uncomputed (documents without keys): no temporary, no zero fill, whatever those rows held."""
    from magi_ffa.backends.triton import merge

    monkeypatch.setattr(_fake_fa4, "UNWRITTEN_ROWS_KEPT", kept)
    adds = []
    monkeypatch.setattr(merge, "add_into_", lambda acc, part, skip: adds.append(skip) or (
        acc.add_(part.masked_fill(skip[:, None, None], 0)) if skip is not None else acc.add_(part)))
    g = torch.Generator().manual_seed(8)
    q = torch.randn(24, 2, 64, generator=g, dtype=torch.float64)
    k, v, k2, v2 = (torch.randn(24, 1, 64, generator=g, dtype=torch.float64) for _ in range(4))
    dout = torch.randn(24, 2, 64, generator=g, dtype=torch.float64)
    host = ([[0, 24]], [[0, 24]], [1])
    remote = ([[2, 10], [14, 20]], [[0, 8], [12, 18]], [0, 0])  # rows 0-1, 10-13, 20-23 see no remote key
    out, lse, _ = ffa_forward(q, k, v, *host, softmax_scale=0.125, backend="fa4")
    out, lse, _ = ffa_forward(q, k2, v2, *remote, softmax_scale=0.125, out=out, lse=lse, backend="fa4")
    dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
    ffa_backward(dout, q, k, v, out, lse, *host, softmax_scale=0.125, dq=dq, dk=dk, dv=dv, overwrite=True,
                 backend="fa4")
    dk2, dv2 = torch.empty_like(k2), torch.empty_like(v2)
    ffa_backward(dout, q, k2, v2, out, lse, *remote, softmax_scale=0.125, dq=dq, dk=dk2, dv=dv2,
                 overwrite=("dk", "dv"), backend="fa4")
    assert len(adds) == 1 and adds[0] is not None  # only dq is added, skipping the uncomputed rows
    # the reference: both stages as one mask over the keys [k; k2]
    qa, ka, va = q.clone().requires_grad_(), torch.cat([k, k2]).requires_grad_(), torch.cat([v, v2]).requires_grad_()
    qr_all = host[0] + remote[0]
    kr_all = host[1] + [[a + 24, b + 24] for a, b in remote[1]]
    ref_out, _, _ = ref_attn_dense(qa, ka, va, qr_all, kr_all, host[2] + remote[2], softmax_scale=0.125)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    rq, rk, rv = torch.autograd.grad(ref_out, (qa, ka, va), dout)
    for got, want in ((dq, rq), (dk, rk[:24]), (dv, rv[:24]), (dk2, rk[24:]), (dv2, rv[24:])):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_block_aligned_masks_run_without_the_mask_function(fake_fa4, monkeypatch):
    """Slices on whole tiles (here 4 x 8, the stand-in's block size), as the runtime's remote
    stages of causal masks are: FA4 gets the block lists alone (its plain block-sparse kernel),
    no mask function, and the result is still the mask's. A mask with one partial tile keeps it."""
    seen = []
    real_fwd = sys.modules["flash_attn.cute.interface"]._flash_attn_fwd

    def spy(*a, **kw):
        seen.append(kw.get("mask_mod") is not None)
        return real_fwd(*a, **kw)

    monkeypatch.setattr(sys.modules["flash_attn.cute.interface"], "_flash_attn_fwd", spy)
    g = torch.Generator().manual_seed(9)
    q = torch.randn(16, 2, 64, generator=g, dtype=torch.float64)
    k, v = (torch.randn(32, 1, 64, generator=g, dtype=torch.float64) for _ in range(2))
    dout = torch.randn(16, 2, 64, generator=g, dtype=torch.float64)
    aligned = ([[0, 8], [8, 16], [4, 8]], [[8, 16], [0, 24], [24, 32]], [0, 0, 0])  # staircase-like
    partial = ([[0, 8], [0, 8], [8, 16]], [[8, 13], [16, 19], [0, 24]], [0, 0, 0])  # two key runs a row
    for (qr, kr, ts), masked in ((aligned, False), (partial, True)):
        rows_before = fake_fa4["mask_rows"]
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out, _ = flex_flash_attn_func(*leaves, qr, kr, ts, backend="fa4")
        grads = torch.autograd.grad(out, leaves, dout)
        assert seen[-1] is masked and (fake_fa4["mask_rows"] > rows_before) is masked
        ref = [x.clone().requires_grad_() for x in (q, k, v)]
        ref_out, _, _ = ref_attn_dense(*ref, qr, kr, ts, softmax_scale=None)
        torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
        for a, b in zip(grads, torch.autograd.grad(ref_out, ref, dout)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("api", ["flex_flash_attn_func", "ffa_forward/backward"])
def test_half_precision_buffers(fake_fa4, api):
    """fp16 inputs: flex_flash_attn_func's buffers have q's dtype and FA4 writes them itself;
    ffa_forward/ffa_backward's fresh buffers are fp32, so FA4 writes its own and they are copied."""
    g = torch.Generator().manual_seed(4)
    qr, kr, ts = [[0, 16], [4, 16]], [[0, 16], [16, 24]], [1, 0]
    q = torch.randn(16, 2, 64, generator=g).half()
    k, v = (torch.randn(24, 1, 64, generator=g).half() for _ in range(2))
    dout = torch.randn(16, 2, 64, generator=g).half()
    if api == "flex_flash_attn_func":
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out, meta = flex_flash_attn_func(*leaves, qr, kr, ts, backend="fa4")
        grads = torch.autograd.grad(out, leaves, dout)
        assert out.dtype == torch.float16 and all(x.dtype == torch.float16 for x in grads)
    else:
        out, lse, _ = ffa_forward(q, k, v, qr, kr, ts, softmax_scale=0.125, backend="fa4")
        grads = ffa_backward(dout, q, k, v, out, lse, qr, kr, ts, softmax_scale=0.125, backend="fa4")
        assert out.dtype == torch.float32 and all(x.dtype == torch.float32 for x in grads)
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    ref_out, _, _ = ref_attn_dense(*ref, qr, kr, ts, softmax_scale=None if api == "flex_flash_attn_func" else 0.125)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-3, rtol=2e-3)
    for a, b in zip(grads, torch.autograd.grad(ref_out, ref, dout.double())):
        torch.testing.assert_close(a.double(), b, atol=2e-2, rtol=2e-2)


def test_sink_is_applied_around_the_kernel(fake_fa4):
    g = torch.Generator().manual_seed(2)
    qr, kr, ts = varlen_slices([9, 15], 1)
    q = torch.randn(24, 2, 64, generator=g, dtype=torch.float64)
    k, v = (torch.randn(24, 1, 64, generator=g, dtype=torch.float64) for _ in range(2))
    sink = torch.randn(3, 2, generator=g, dtype=torch.float32)
    out, meta = flex_flash_attn_func(q, k, v, qr, kr, ts, sink=sink, backend="fa4")
    ref_out, ref_lse, _ = ref_attn_dense(q, k, v, qr, kr, ts, sink=sink)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)


def test_mask_is_translated_once_and_reused(fake_fa4, monkeypatch):
    built = []
    real = fa4_backend.build_slice_block_mask
    monkeypatch.setattr(fa4_backend, "build_slice_block_mask", lambda *a, **kw: built.append(1) or real(*a, **kw))
    qr, kr, ts = varlen_slices([16, 16], 1)
    q = torch.randn(32, 2, 64, dtype=torch.float64)
    k = v = torch.randn(32, 2, 64, dtype=torch.float64)
    for _ in range(3):
        flex_flash_attn_func(q, k, v, torch.tensor(qr, dtype=torch.int32), torch.tensor(kr, dtype=torch.int32),
                             torch.tensor(ts, dtype=torch.int32), backend="fa4")
    # one kernel run more than calls: the launch replay's check of its recording (replay.py)
    assert len(built) == 1 and fake_fa4["fwd"] == 3 + replay.stats()["recorded"]


def test_unsupported_features_name_themselves(fake_fa4):
    q = torch.randn(8, 2, 64, dtype=torch.float64)
    k = v = torch.randn(8, 2, 64, dtype=torch.float64)
    r = [[0, 8]]
    with pytest.raises(NotImplementedError, match="deterministic"):
        flex_flash_attn_func(q, k, v, r, r, [1], deterministic=True, backend="fa4")
    with pytest.raises(NotImplementedError, match="max_logits"):
        flex_flash_attn_func(q, k, v, r, r, [1], return_max_logits=True, backend="fa4")
    q32 = torch.randn(8, 2, 32, dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="head_dim=32"):
        flex_flash_attn_func(q32, q32, q32, r, r, [1], backend="fa4")


def test_selection_by_env_and_never_by_auto(fake_fa4, monkeypatch):
    monkeypatch.delenv("MAGI_ATTENTION_KERNEL_BACKEND", raising=False)
    monkeypatch.setenv("MAGI_ATTENTION_FA4_BACKEND", "1")
    assert resolve_backend_name() == "fa4"
    assert resolve_backend_name("torch") == "torch"  # the argument wins
    monkeypatch.setenv("MAGI_ATTENTION_KERNEL_BACKEND", "triton")
    with pytest.raises(FFAInputError, match="MAGI_ATTENTION_FA4_BACKEND=1 conflicts"):
        resolve_backend_name()
    monkeypatch.delenv("MAGI_ATTENTION_KERNEL_BACKEND")
    monkeypatch.setenv("MAGI_ATTENTION_FA4_BACKEND", "yes")  # magi_attention.env rejects it too
    with pytest.raises(FFAInputError, match="MAGI_ATTENTION_FA4_BACKEND='yes' is not a valid toggle"):
        resolve_backend_name()
    monkeypatch.delenv("MAGI_ATTENTION_FA4_BACKEND")
    from magi_ffa.backends.base import FFAInputs

    q = torch.randn(8, 2, 64, dtype=torch.float64)
    r = torch.tensor([[0, 8]], dtype=torch.int32)
    inp = FFAInputs(q, q, q, r, r, torch.tensor([0], dtype=torch.int32), 0.125)
    assert select_backend(inp).NAME == "torch"  # auto: fa4 is opt-in only


def test_repeated_calls_reuse_the_choice_but_follow_the_environment(fake_fa4, monkeypatch):
    """Calls with the same range tensors share one memo (FFAInputs.memo): the backend is chosen and
    the mask translated once, yet a changed MAGI_ATTENTION_FA4_BACKEND still takes effect."""
    from magi_ffa import select

    chosen = []
    real = select._select
    monkeypatch.setattr(select, "_select", lambda inp, name: chosen.append(name) or real(inp, name))
    monkeypatch.delenv("MAGI_ATTENTION_KERNEL_BACKEND", raising=False)
    q, k, v = (torch.randn(16, 2, 64, dtype=torch.float64) for _ in range(3))
    r = torch.tensor([[0, 16]], dtype=torch.int32)
    t = torch.tensor([1], dtype=torch.int32)
    monkeypatch.setenv("MAGI_ATTENTION_FA4_BACKEND", "1")
    for _ in range(3):
        fa4_out = flex_flash_attn_func(q, k, v, r, r, t)[0]
    assert chosen == ["fa4"] and fake_fa4["fwd"] == 3 + replay.stats()["recorded"]
    monkeypatch.setenv("MAGI_ATTENTION_FA4_BACKEND", "0")
    torch_out = flex_flash_attn_func(q, k, v, r, r, t)[0]
    assert chosen == ["fa4", "auto"] and fake_fa4["fwd"] == 3 + replay.stats()["recorded"]
    torch.testing.assert_close(fa4_out, torch_out, atol=1e-10, rtol=1e-10)


def test_missing_fa4_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import flash_attn -> ImportError
    kernel.import_fa4.cache_clear()
    q = torch.randn(8, 2, 64, dtype=torch.float16)
    r = [[0, 8]]
    with pytest.raises(ImportError, match=r"magi-ffa-kernels\[fa4\]"):
        flex_flash_attn_func(q, q, q, r, r, [1], backend="fa4")
    assert not FA4Backend().is_available()


def test_the_window_precheck_only_rules_out_what_the_full_check_rejects(monkeypatch):
    """native._window_ruled_out looks at a few rows before the full window check: it must never rule
    out a real window (full, causal, left / right / both bounded, at sizes where the sampled rows
    fall inside and outside the bounds), and where it rules a mask out, the full check agrees."""
    import numpy as np

    for s in (5, 8, 64, 301):
        for left, right in [(None, None), (None, 0), (3, 0), (0, 4), (7, 2), (s, 1), (1, s)]:
            rows = np.arange(s)
            lo = np.zeros(s, np.int64) if left is None else np.maximum(0, rows - left)
            hi = np.full(s, s, np.int64) if right is None else np.minimum(s, rows + right + 1)
            assert not native._window_ruled_out(lo, hi, s), (s, left, right)
            assert native._window(lo, hi, s) is not None, (s, left, right)
    rng = random.Random(3)
    ruled_out = 0
    for _ in range(300):
        s = rng.randint(4, 80)
        cuts = [0, *sorted(rng.sample(range(1, s), rng.randint(1, 4))), s]
        qr, kr, ts = varlen_slices([b - a for a, b in zip(cuts, cuts[1:])], rng.choice([0, 1]))
        lo, hi = row_intervals(qr, kr, ts, s)
        if native._window_ruled_out(lo[0], hi[0], s):
            ruled_out += 1
            monkeypatch.setattr(native, "_window_ruled_out", lambda *a: False)
            assert native._window(lo[0], hi[0], s) is None
            monkeypatch.undo()
    assert ruled_out > 50  # the pre-check does rule out most document masks


def test_a_mask_prepared_ahead_is_the_one_the_first_call_uses(fake_fa4, monkeypatch):
    """FFACall.prepare (interface 1.5) translates the mask as the first call at those lengths would:
    the call then builds nothing, and gives what an unprepared call gives."""
    from magi_ffa import FFACall

    built = []
    real = fa4_backend.build_slice_block_mask
    monkeypatch.setattr(fa4_backend, "build_slice_block_mask", lambda *a, **kw: built.append(a[3:5]) or real(*a, **kw))
    qr, kr, ts = (torch.tensor(x, dtype=torch.int32) for x in varlen_slices([9, 14, 7], 1))
    q = torch.randn(30, 2, 64, dtype=torch.float64)
    k, v = torch.randn(2, 30, 2, 64, dtype=torch.float64)
    want, want_lse, _ = FFACall(qr, kr, ts, backend="fa4").forward(q, k, v, softmax_scale=None)
    fa4_backend.clear_mask_cache()
    built.clear()
    call = FFACall(qr, kr, ts, backend="fa4")
    assert call.prepare(30, 30, q.device) and built == [(30, 30)]
    assert call.prepare(30, 30, "cpu") and built == [(30, 30)]  # already there
    out, lse, _ = call.forward(q, k, v, softmax_scale=None)
    assert built == [(30, 30)]  # found, not built again
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    assert call.prepare(30, 40, "cpu") and built[-1] == (30, 40)  # other lengths: another translation
    # a mask on block lists (its lists and intervals are built lazily): built too, whole or per part
    rq, rk, rt = (torch.tensor(x, dtype=torch.int32) for x in random_slices(random.Random(3), 37, 45, 6))
    assert FFACall(rq, rk, rt, backend="fa4").prepare(37, 45, "cpu")
    (mask,) = [m for key, m in fa4_backend._masks._entries.items() if key[1:3] == (37, 45)]
    assert mask.native is None
    for m in (mask,) if mask.parts is None else [p.mask for p in mask.parts]:
        assert "device_tensors" in vars(m)
    # backends keeping nothing per mask, a device FA4 does not run on, bad lengths
    assert not FFACall(qr, kr, ts, backend="torch").prepare(30, 30, "cpu")
    assert not FFACall(qr, kr, ts, backend="auto").prepare(30, 30, "cpu")
    assert not call.prepare(30, 30, "meta")
    for bad in (-1, 2.0, True, None):
        with pytest.raises(TypeError, match="seqlen_k must be an int >= 0"):
            call.prepare(30, bad, "cpu")
    for bad in ("nowhere", 3.5, None):
        with pytest.raises(TypeError, match="FFACall.prepare\\(\\): device must be a torch.device"):
            call.prepare(30, 30, bad)
