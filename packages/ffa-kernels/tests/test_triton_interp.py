"""The Triton FFA kernels under the Triton interpreter (TRITON_INTERPRET=1), on CPU tensors.

Triton must see TRITON_INTERPRET=1 before `import triton` (its own standard library is
decorated at import time), which a shared pytest process cannot guarantee. So this file runs
in two modes:

* normal run (`pytest packages/ffa-kernels/tests`): the plan tests run here, and
  `test_interpreter_suite` re-runs this file in a subprocess with TRITON_INTERPRET=1, failing
  with the subprocess report if any kernel test fails; the kernel tests show as skipped here.
* `TRITON_INTERPRET=1 pytest packages/ffa-kernels/tests/test_triton_interp.py`: the kernel
  tests run one by one (this is what the subprocess does).

Small tiles (MAGI_FFA_TRITON_BLOCKS=32,16) make tiny problems span several tiles and all three
kernel stages. fp16/fp32 only: the interpreter's bf16 tl.dot is wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
if INTERP:
    os.environ.setdefault("MAGI_FFA_TRITON_BLOCKS", "32,16")

from magi_ffa import ffa_backward, ffa_forward, flex_flash_attn_func, range_cache  # noqa: E402
from magi_ffa.backends.base import FFAInputs  # noqa: E402
from magi_ffa.backends.triton import TritonBackend, plan, triton_importable  # noqa: E402
from magi_ffa.backends.triton.plan import build_work_list, cached_work_list  # noqa: E402
from magi_ffa.testing import make_dense_mask, random_slices, ref_attn_dense  # noqa: E402

pytestmark = [
    pytest.mark.interp,
    pytest.mark.skipif(not triton_importable(), reason="triton not importable"),
]
kernel_test = pytest.mark.skipif(
    not INTERP, reason="runs in the TRITON_INTERPRET=1 subprocess of test_interpreter_suite"
)


@pytest.mark.skipif(INTERP, reason="already inside the interpreter run")
def test_interpreter_suite():
    """Run the kernel tests of this file in a fresh process with TRITON_INTERPRET=1."""
    env = dict(os.environ, TRITON_INTERPRET="1", MAGI_FFA_TRITON_BLOCKS="32,16")
    env.pop("MAGI_FFA_TRITON_FUSED_BWD", None)
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "interp"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    report = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, f"interpreter suite failed (rc={res.returncode}):\n{report}"
    assert " passed" in res.stdout, report


# ---------------------------------------------------------------------------------------------
# inputs and checks (the float64 reference is magi_ffa.testing.ref_attn_dense)
# ---------------------------------------------------------------------------------------------
def slices(seed, sq, sk, n=8):
    """Cell-disjoint random slices (magi_ffa.testing.random_slices) as int32 tensors."""
    qr, kr, tm = random_slices(seed, sq, sk, n)
    t = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    return t(qr).reshape(-1, 2), t(kr).reshape(-1, 2), t(tm).reshape(-1)


def ref(q, k, v, qr, kr, tm, softcap=0.0, dtype=torch.float64):
    """(out, lse, max_logits) of the dense reference in `dtype`."""
    return ref_attn_dense(q, k, v, qr, kr, tm, softmax_scale=q.shape[-1] ** -0.5, softcap=softcap,
                          compute_dtype=dtype)


def grid_slices(gen, sq, sk):
    """Cell-disjoint slices on a random grid of q/k segments (random subset of cells, random
    types, shuffled; one q segment stays empty; plus an empty slice). Unlike random_slices'
    rectangles of at most half the length, grid cells often span whole 32-row tiles, so the
    kernels' unmasked stage and masked suffix run (a kernel without them must fail here)."""
    nq = int(torch.randint(2, 5, (1,), generator=gen))
    nk = int(torch.randint(2, 5, (1,), generator=gen))
    qc = sorted(set(torch.randint(1, sq, (nq - 1,), generator=gen).tolist()) | {0, sq})
    kc = sorted(set(torch.randint(1, sk, (nk - 1,), generator=gen).tolist()) | {0, sk})
    qr, kr, tm = [], [], []
    skip = int(torch.randint(0, len(qc) - 1, (1,), generator=gen))
    for n, (a, b) in enumerate(zip(qc[:-1], qc[1:])):
        for c, d in zip(kc[:-1], kc[1:]):
            if n != skip and float(torch.rand((), generator=gen)) < 0.7:
                qr.append((a, b))
                kr.append((c, d))
                tm.append(int(torch.randint(0, 4, (1,), generator=gen)))
    qr.append((0, sq // 3))
    kr.append((sk // 2, sk // 2))
    tm.append(0)
    perm = torch.randperm(len(qr), generator=gen).tolist()
    as_t = lambda xs: torch.tensor([xs[i] for i in perm], dtype=torch.int32)  # noqa: E731
    return as_t(qr).reshape(-1, 2), as_t(kr).reshape(-1, 2), as_t(tm).reshape(-1)


def make_inputs(seed, sq, sk, hq, hk, d, dtype):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, hq, d, generator=gen).to(dtype)
    k = torch.randn(sk, hk, d, generator=gen).to(dtype)
    v = torch.randn(sk, hk, d, generator=gen).to(dtype)
    qr, kr, tm = grid_slices(gen, sq, sk)
    return gen, q, k, v, qr, kr, tm


def fresh_buffers(sq, hq, d):
    return torch.zeros(sq, hq, d), torch.full((sq, hq), float("-inf"))


def run_forward(q, k, v, qr, kr, tm, *, softcap=0.0, max_logits=None):
    d = q.shape[-1]
    inp = FFAInputs(q, k, v, qr, kr, tm, d**-0.5, softcap)
    out, lse = fresh_buffers(q.shape[0], q.shape[1], d)
    TritonBackend().forward(inp, out, lse, max_logits)
    return inp, out, lse


def run_backward(inp, dout, out, lse):
    q, k = inp.q, inp.k
    dq = torch.zeros(q.shape)
    dk = torch.zeros(k.shape)
    dv = torch.zeros(k.shape)
    delta = (out * dout.float()).sum(-1)
    TritonBackend().backward(inp, dout, out, lse, delta, dq, dk, dv)
    return dq, dk, dv


def check(name, x, x_lowp, ref64, fp32_atol=2e-5):
    """fp32: absolute tolerance; low precision: within 2x the same-dtype torch error (+1e-6)."""
    x = x.double()
    assert not torch.isnan(x).any(), f"{name}: NaN"
    fin = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(x), fin), f"{name}: -inf pattern differs"
    err = (x[fin] - ref64[fin]).abs().max().item() if fin.any() else 0.0
    if x_lowp is None:
        assert err <= fp32_atol, f"{name}: max err {err:.3e} > {fp32_atol:.1e}"
    else:
        base = (x_lowp.double()[fin] - ref64[fin]).abs().max().item() if fin.any() else 0.0
        assert err <= 2 * base + 1e-6, f"{name}: max err {err:.3e} > 2 * {base:.3e} + 1e-6"


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_plan_pieces_cover_mask_exactly(seed, transpose):
    """Pieces reproduce the dense mask cell by cell; [f_lo, f_hi) blocks are fully visible."""
    sq, sk = 37 + 9 * seed, 53 + 5 * seed
    qr, kr, tm = slices(100 + seed, sq, sk)
    mask = make_dense_mask(qr, kr, tm, sq, sk)
    if transpose:
        mask = mask.T
    bo, bi = 16, 16
    wl = build_work_list(qr, kr, tm, outer_len=mask.shape[0], block_outer=bo, block_inner=bi, transpose=transpose)
    covered = torch.zeros(mask.shape, dtype=torch.int32)
    o = torch.arange(mask.shape[0])[:, None]
    i = torch.arange(mask.shape[1])[None, :]
    ptr = wl.tile_ptr.tolist()
    assert sorted(wl.tile_order.tolist()) == list(range(wl.num_tiles))
    for t in range(wl.num_tiles):
        for p in wl.pieces[ptr[t] : ptr[t + 1]].tolist():
            o_lo, o_hi, i_lo, i_hi, f_lo, f_hi, d_lo, d_hi = p
            assert t * bo <= o_lo < o_hi <= (t + 1) * bo
            assert i_lo <= f_lo <= f_hi <= i_hi and (f_hi - f_lo) % bi == 0
            assert f_hi == f_lo == i_hi or (f_lo - i_lo) % bi == 0, "unmasked run not block-aligned"
            vis = (o >= o_lo) & (o < o_hi) & (i >= i_lo) & (i < i_hi) & (i - o >= d_lo) & (i - o <= d_hi)
            covered += vis.int()
            if f_hi > f_lo:  # the unmasked stage: the whole tile sees every column
                assert bool(vis[t * bo : (t + 1) * bo, f_lo:f_hi].all())
    assert int(covered.max()) <= 1, "a cell is visited twice"
    assert torch.equal(covered.bool(), mask)


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
def _case_id(c):
    """Readable test id of a FWD_CASES / BWD_CASES row."""
    return f"s{c[0]}-{c[1]}x{c[2]}-h{c[3]}/{c[4]}-d{c[5]}-{str(c[6])[6:]}-cap{c[7]}"


FWD_CASES = [
    # seed, sq, sk, hq, hk, d, dtype, softcap
    (0, 70, 90, 2, 2, 32, torch.float32, 0.0),
    (1, 129, 77, 4, 2, 16, torch.float32, 0.0),
    (2, 100, 150, 4, 1, 64, torch.float32, 5.0),
    (3, 96, 96, 2, 2, 40, torch.float32, 0.0),
    (4, 120, 100, 4, 2, 64, torch.float16, 0.0),
    (5, 90, 130, 2, 1, 32, torch.float16, 4.0),
]


@kernel_test
@pytest.mark.parametrize("case", FWD_CASES, ids=_case_id)
def test_forward_matches_dense_reference(case):
    seed, sq, sk, hq, hk, d, dtype, cap = case
    _, q, k, v, qr, kr, tm = make_inputs(seed, sq, sk, hq, hk, d, dtype)
    mask = make_dense_mask(qr, kr, tm, sq, sk)
    assert (~mask.any(1)).any(), "the case should hold empty rows"
    ml = torch.full((hq,), float("-inf"))
    _, out, lse = run_forward(q, k, v, qr, kr, tm, softcap=cap, max_logits=ml)
    o64, l64, ml64 = ref(q, k, v, qr, kr, tm, cap)
    lowp = dtype != torch.float32
    o_lp, l_lp, _ = ref(q, k, v, qr, kr, tm, cap, dtype=dtype) if lowp else (None, None, None)
    check("out", out, o_lp, o64)
    check("lse", lse, l_lp, l64)
    assert torch.equal(out[~mask.any(1)], torch.zeros_like(out[~mask.any(1)])), "empty rows were touched"
    torch.testing.assert_close(ml.double(), ml64, atol=1e-5 if not lowp else 1e-3, rtol=0)


@kernel_test
def test_forward_causal_lq_gt_lk_and_bicausal_empty():
    """Causal with Lq > Lk leaves the first Lq-Lk rows empty; bi-causal with Lq > Lk is empty."""
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(100, 2, 32, generator=gen)
    k = torch.randn(60, 2, 32, generator=gen)
    v = torch.randn(60, 2, 32, generator=gen)
    qr = torch.tensor([[0, 50], [50, 100]], dtype=torch.int32)
    kr = torch.tensor([[0, 20], [20, 60]], dtype=torch.int32)
    tm = torch.tensor([1, 3], dtype=torch.int32)
    _, out, lse = run_forward(q, k, v, qr, kr, tm)
    mask = make_dense_mask(qr, kr, tm, 100, 60)
    assert not mask[:30].any() and mask[30:50].any() and not mask[50:].any()
    o64, l64, _ = ref(q, k, v, qr, kr, tm)
    check("out", out, None, o64)
    check("lse", lse, None, l64)


@kernel_test
def test_forward_merges_into_existing_buffers():
    """Two calls on halves of the slices equal one call; untouched rows keep their values."""
    _, q, k, v, qr, kr, tm = make_inputs(11, 90, 80, 2, 2, 32, torch.float32)
    sq, hq, d = q.shape
    half = qr.shape[0] // 2
    inp_a = FFAInputs(q, k, v, qr[:half], kr[:half], tm[:half], d**-0.5)
    inp_b = FFAInputs(q, k, v, qr[half:], kr[half:], tm[half:], d**-0.5)
    out, lse = fresh_buffers(sq, hq, d)
    TritonBackend().forward(inp_a, out, lse, None)
    TritonBackend().forward(inp_b, out, lse, None)
    o64, l64, _ = ref(q, k, v, qr, kr, tm)
    check("out", out, None, o64)
    check("lse", lse, None, l64)

    # Pre-existing partial result (random out / finite lse) merged with this call in f64.
    gen = torch.Generator().manual_seed(12)
    out0 = torch.randn(sq, hq, d, generator=gen)
    lse0 = torch.randn(sq, hq, generator=gen)
    out, lse = out0.clone(), lse0.clone()
    TritonBackend().forward(inp_a, out, lse, None)
    ma = make_dense_mask(qr[:half], kr[:half], tm[:half], sq, 80)
    oa, la, _ = ref(q, k, v, qr[:half], kr[:half], tm[:half])
    lse_m = torch.logaddexp(lse0.double(), la)
    exp_out = out0.double() * torch.exp(lse0.double() - lse_m)[..., None] + oa * torch.exp(la - lse_m)[..., None]
    check("merged out", out, None, exp_out)
    check("merged lse", lse, None, lse_m)
    untouched = ~ma.any(1)
    assert untouched.any()
    assert torch.equal(out[untouched], out0[untouched]) and torch.equal(lse[untouched], lse0[untouched])


@kernel_test
def test_max_logits_is_maxed_into_given_buffer():
    _, q, k, v, qr, kr, tm = make_inputs(13, 64, 64, 4, 2, 16, torch.float32)
    ml = torch.tensor([100.0, float("-inf"), -100.0, 0.0])
    run_forward(q, k, v, qr, kr, tm, softcap=2.0, max_logits=ml)
    _, _, ml64 = ref(q, k, v, qr, kr, tm, 2.0)
    expect = torch.maximum(torch.tensor([100.0, float("-inf"), -100.0, 0.0]).double(), ml64)
    torch.testing.assert_close(ml.double(), expect, atol=1e-5, rtol=0)
    assert ml[0] == 100.0 and ml[2] > -100.0 and ml[2] <= 2.0


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
BWD_CASES = [
    (20, 70, 90, 2, 2, 32, torch.float32, 0.0),
    (21, 129, 77, 4, 2, 16, torch.float32, 3.0),
    (22, 100, 120, 4, 1, 64, torch.float32, 0.0),
    (23, 80, 96, 2, 2, 24, torch.float32, 0.0),
    (24, 110, 100, 4, 2, 32, torch.float16, 0.0),
    (25, 96, 70, 2, 1, 64, torch.float16, 5.0),
]


@kernel_test
@pytest.mark.parametrize("case", BWD_CASES, ids=_case_id)
def test_backward_matches_dense_reference(case):
    seed, sq, sk, hq, hk, d, dtype, cap = case
    gen, q, k, v, qr, kr, tm = make_inputs(seed, sq, sk, hq, hk, d, dtype)
    dout = torch.randn(sq, hq, d, generator=gen).to(dtype)
    inp, out, lse = run_forward(q, k, v, qr, kr, tm, softcap=cap)
    dq, dk, dv = run_backward(inp, dout, out, lse)

    def grads(prec):
        leaves = [x.detach().to(prec).requires_grad_() for x in (q, k, v)]
        o, _, _ = ref(*leaves, qr, kr, tm, cap, dtype=prec)
        o.backward(dout.to(prec))
        return [x.grad for x in leaves]

    g64 = grads(torch.float64)
    glp = grads(dtype) if dtype != torch.float32 else [None] * 3
    for name, x, lp, r in zip(("dq", "dk", "dv"), (dq, dk, dv), glp, g64):
        check(name, x, lp, r, fp32_atol=5e-5)


@kernel_test
def test_backward_adds_into_existing_gradients():
    gen, q, k, v, qr, kr, tm = make_inputs(30, 64, 64, 2, 2, 16, torch.float32)
    dout = torch.randn(q.shape, generator=gen)
    inp, out, lse = run_forward(q, k, v, qr, kr, tm)
    fresh = run_backward(inp, dout, out, lse)
    base = [torch.randn(x.shape, generator=gen) for x in fresh]
    acc = [b.clone() for b in base]
    delta = (out * dout).sum(-1)
    TritonBackend().backward(inp, dout, out, lse, delta, *acc)
    for name, a, b, f in zip(("dq", "dk", "dv"), acc, base, fresh):
        torch.testing.assert_close(a, b + f, atol=1e-6, rtol=0, msg=name)


@kernel_test
def test_deterministic_bitwise():
    gen, q, k, v, qr, kr, tm = make_inputs(40, 72, 64, 2, 1, 32, torch.float16)
    dout = torch.randn(q.shape, generator=gen).half()
    results = []
    for _ in range(2):
        inp, out, lse = run_forward(q, k, v, qr, kr, tm)
        results.append((out, lse, *run_backward(inp, dout, out, lse)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# capability table
# ---------------------------------------------------------------------------------------------
@kernel_test
def test_not_supported_reasons():
    be = TritonBackend()
    q = torch.randn(8, 4, 32)
    k = torch.randn(8, 3, 32)
    r = torch.zeros(1, 2, dtype=torch.int32)
    t = torch.zeros(1, dtype=torch.int32)
    reasons = be.not_supported_reasons(FFAInputs(q, k, k, r, r, t, 1.0))
    assert any("num_heads_q=4" in s for s in reasons)
    q = torch.randn(8, 2, 20)
    reasons = be.not_supported_reasons(FFAInputs(q, q, q, r, r, t, 1.0))
    assert any("head_dim=20" in s for s in reasons)
    q = torch.randn(8, 2, 32, dtype=torch.float64)
    reasons = be.not_supported_reasons(FFAInputs(q, q, q, r, r, t, 1.0))
    assert any("dtype=float64" in s for s in reasons)
    q = torch.randn(8, 2, 32)
    assert be.not_supported_reasons(FFAInputs(q, q, q, r, r, t, 1.0)) == []
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        reasons = be.not_supported_reasons(FFAInputs(q, q, q, r, r, t, 1.0))
    finally:
        os.environ["TRITON_INTERPRET"] = "1"
    assert any("device=cpu" in s for s in reasons) and any("dtype=float32" in s for s in reasons)


# ---------------------------------------------------------------------------------------------
# work-list cache and the shared host copy of the ranges (plain torch: runs in this process)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def host_reads(monkeypatch):
    """Count device->host reads of ranges (range_cache._read_to_host), from a clean cache."""
    plan.clear_cache()
    calls = []
    real = range_cache._read_to_host

    def counting(flat):
        calls.append(flat.shape[0])
        return real(flat)

    monkeypatch.setattr(range_cache, "_read_to_host", counting)
    yield calls
    plan.clear_cache()


def _wl(qr, kr, tm, sq=96):
    return cached_work_list(qr, kr, tm, outer_len=sq, block_outer=32, block_inner=16)


def _same_list(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("tile_ptr", "pieces", "tile_order"))


def test_worklist_cache_hit_and_invalidation(host_reads):
    """Same tensors: the stored list, no read. In-place change: re-read and a new, correct list."""
    qr, kr, tm = slices(1, 96, 80)
    a = _wl(qr, kr, tm)
    assert len(host_reads) == 1
    assert _same_list(a, build_work_list(qr, kr, tm, outer_len=96, block_outer=32, block_inner=16))
    assert _wl(qr, kr, tm) is a and len(host_reads) == 1
    # another tile config of the same tensors reuses the host copy
    cached_work_list(qr, kr, tm, outer_len=80, block_outer=16, block_inner=32, transpose=True)
    assert len(host_reads) == 1
    tm[0] = (int(tm[0]) + 1) % 4  # in place: bumps the version counter
    b = _wl(qr, kr, tm)
    assert len(host_reads) == 2 and b is not a
    assert _same_list(b, build_work_list(qr, kr, tm, outer_len=96, block_outer=32, block_inner=16))


def test_worklist_cache_content_hit_across_tensors(host_reads):
    qr, kr, tm = slices(2, 96, 80)
    a = _wl(qr, kr, tm)
    b = _wl(qr.clone(), kr.clone(), tm.clone())  # equal values, new objects: one read, same list
    assert b is a and len(host_reads) == 2


def test_worklist_cache_lru_bound(host_reads, monkeypatch):
    monkeypatch.setattr(plan._work_lists, "max_entries", 3)
    monkeypatch.setattr(range_cache, "_MAX_ENTRIES", 3)
    triples = [slices(10 + i, 96, 80) for i in range(5)]
    first = _wl(*triples[0])
    for t in triples[1:]:
        _wl(*t)
    assert len(plan._work_lists) == 3 and len(range_cache._by_identity) == 3
    assert len(host_reads) == 5
    again = _wl(*triples[0])  # evicted from both levels: read and built again
    assert len(host_reads) == 6 and again is not first and _same_list(again, first)
    _wl(*triples[4])  # still cached
    assert len(host_reads) == 6


def test_worklist_identity_cache_off(host_reads, monkeypatch):
    monkeypatch.setenv("MAGI_FFA_WORKLIST_IDENTITY_CACHE", "0")
    qr, kr, tm = slices(3, 96, 80)
    a = _wl(qr, kr, tm)
    assert _wl(qr, kr, tm) is a  # the content level still hits
    assert len(host_reads) == 2 and len(range_cache._by_identity) == 0


def test_inference_tensors_are_read_every_call(host_reads):
    with torch.inference_mode():
        qr, kr, tm = slices(4, 96, 80)
        a = _wl(qr, kr, tm)
        assert _wl(qr, kr, tm) is a
    assert len(host_reads) == 2


def test_validated_ranges_need_no_device_read(host_reads, monkeypatch):
    """After a first call, checks and planning read nothing: no tolist/cpu/item/numpy at all."""
    from magi_ffa import api

    q, k = torch.randn(96, 2, 16), torch.randn(80, 2, 16)
    qr, kr, tm = slices(5, 96, 80)
    api._prepare("f", q, k, k, qr, kr, tm, None, 0.0)
    _wl(qr, kr, tm)
    assert len(host_reads) == 1

    def banned(*a, **kw):
        raise AssertionError("device read on a repeated call")

    for name in ("tolist", "cpu", "item", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, banned)
    api._prepare("f", q, k, k, qr, kr, tm, None, 0.0)
    _wl(qr, kr, tm)
    monkeypatch.undo()
    assert len(host_reads) == 1


def test_list_ranges_need_no_device_read(host_reads):
    """Nested lists are copied from the host once: neither checks nor the plan read them back."""
    from magi_ffa import api

    q, k = torch.randn(96, 2, 16), torch.randn(80, 2, 16)
    qr, kr, tm = random_slices(6, 96, 80, 6)
    for _ in range(2):
        _, _, _, qt, kt, tt, _, _, _ = api._prepare("f", q, k, k, qr, kr, tm, None, 0.0)
        _wl(qt, kt, tt)
    assert host_reads == []


# ---------------------------------------------------------------------------------------------
# fresh mode (the single-call path): equals the accumulate path, writes every element
# ---------------------------------------------------------------------------------------------
def _nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def _fresh_fwd(inp, dtype, max_logits=None):
    sq, hq, d = inp.q.shape
    out, lse = _nan_like((sq, hq, d), dtype), _nan_like((sq, hq), torch.float32)
    TritonBackend().forward(inp, out, lse, max_logits, fresh=True)
    return out, lse


def _fresh_bwd(inp, dout, out, lse, dtype):
    q, k = inp.q, inp.k
    grads = [_nan_like(q.shape, dtype), _nan_like(k.shape, dtype), _nan_like(k.shape, dtype)]
    delta = (out.float() * dout.float()).sum(-1)
    TritonBackend().backward(inp, dout, out, lse, delta, *grads, fresh=True)
    return grads


FRESH_CASES = [
    # seed, sq, sk, hq, hk, d, dtype, softcap; the last q tiles and k tiles get no slice at all
    (50, 88, 80, 4, 2, 16, torch.float16, 0.0),
    (51, 90, 70, 2, 1, 32, torch.float32, 3.0),
]


@kernel_test
@pytest.mark.parametrize("case", FRESH_CASES, ids=lambda c: f"s{c[0]}-{str(c[6])[6:]}")
def test_fresh_equals_accumulate_bitwise(case):
    """Fresh (NaN-filled buffers, input dtype) == accumulate (zeros, fp32, then .to()) bit for bit;
    rows with no key come out 0 / -inf, and whole tiles no slice reaches are written too."""
    seed, sq, sk, hq, hk, d, dtype, cap = case
    gen, q, k, v, _, _, _ = make_inputs(seed, sq, sk, hq, hk, d, dtype)
    qr, kr, tm = slices(seed, sq - 40, sk - 40)  # the last 40 rows and columns stay empty
    mask = make_dense_mask(qr, kr, tm, sq, sk)
    inp = FFAInputs(q, k, v, qr, kr, tm, d**-0.5, cap)
    ml_a, ml_f = torch.full((hq,), float("-inf")), torch.full((hq,), float("-inf"))
    out_a, lse_a = fresh_buffers(sq, hq, d)
    TritonBackend().forward(inp, out_a, lse_a, ml_a)
    out_f, lse_f = _fresh_fwd(inp, dtype, ml_f)
    assert torch.equal(out_f, out_a.to(dtype)) and torch.equal(lse_f, lse_a) and torch.equal(ml_f, ml_a)
    empty = ~mask.any(1)
    assert empty[-32:].all() and not empty.all()
    assert (out_f[empty] == 0).all() and (lse_f[empty] == float("-inf")).all()
    o64, l64, _ = ref(q, k, v, qr, kr, tm, cap)
    o_lp, l_lp, _ = ref(q, k, v, qr, kr, tm, cap, dtype=dtype) if dtype != torch.float32 else (None, None, None)
    check("fresh out", out_f, o_lp, o64)
    check("fresh lse", lse_f, l_lp, l64)

    dout = torch.randn(q.shape, generator=gen).to(dtype)
    acc = run_backward(inp, dout, out_a, lse_a)
    fresh = _fresh_bwd(inp, dout, out_a, lse_a, dtype)
    no_col = ~mask.any(0)
    assert no_col[-32:].all()
    for name, a, f in zip(("dq", "dk", "dv"), acc, fresh):
        assert f.dtype == dtype and torch.equal(f, a.to(dtype)), name
    assert (fresh[0][empty] == 0).all() and (fresh[1][no_col] == 0).all() and (fresh[2][no_col] == 0).all()


@kernel_test
def test_fresh_without_slices_writes_empty_result():
    q = torch.randn(40, 2, 16)
    r = torch.zeros(0, 2, dtype=torch.int32)
    inp = FFAInputs(q, q, q, r, r, torch.zeros(0, dtype=torch.int32), 0.25)
    out, lse = _fresh_fwd(inp, torch.float32)
    assert (out == 0).all() and (lse == float("-inf")).all()
    grads = _fresh_bwd(inp, torch.randn(q.shape), out, lse, torch.float32)
    assert all((g == 0).all() for g in grads)


@kernel_test
def test_fused_backward_matches_split(monkeypatch):
    """The opt-in fused backward (atomic dq) gives the split backward's gradients, both when
    adding into fp32 buffers and when writing fresh ones (dq then goes through a scratch)."""
    gen, q, k, v, qr, kr, tm = make_inputs(60, 80, 72, 4, 2, 16, torch.float32)
    dout = torch.randn(q.shape, generator=gen)
    inp, out, lse = run_forward(q, k, v, qr, kr, tm, softcap=2.0)
    split = run_backward(inp, dout, out, lse)
    assert split[0].abs().max() > 0.1
    monkeypatch.setenv("MAGI_FFA_TRITON_FUSED_BWD", "1")
    for fused in (run_backward(inp, dout, out, lse), _fresh_bwd(inp, dout, out, lse, torch.float32)):
        for name, a, b in zip(("dq", "dk", "dv"), split, fused):
            torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5, msg=name)


@kernel_test
def test_api_triton_fresh_path_matches_reference_and_reads_once(host_reads):
    """flex_flash_attn_func on the Triton backend (fresh buffers): values and grads vs float64,
    one host read of the ranges on the first call (shared by checks and plans), none after."""
    gen, q, k, v, qr, kr, tm = make_inputs(70, 64, 56, 2, 1, 16, torch.float16)
    dout = torch.randn(q.shape, generator=gen).half()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out, meta = flex_flash_attn_func(*leaves, qr, kr, tm, backend="triton", return_max_logits=True)
    assert out.dtype == torch.float16 and meta.lse.dtype == torch.float32
    grads = torch.autograd.grad(out, leaves, dout)
    assert len(host_reads) == 1
    out2, _ = flex_flash_attn_func(*leaves, qr, kr, tm, backend="triton")
    torch.autograd.grad(out2, leaves, dout)
    assert len(host_reads) == 1, "a repeated call read the ranges again"
    assert torch.equal(out2, out)

    def reference(prec):
        ls = [x.detach().to(prec).requires_grad_() for x in (q, k, v)]
        o, lse, ml = ref(*ls, qr, kr, tm, dtype=prec)
        return (o, lse, ml, *torch.autograd.grad(o, ls, dout.to(prec)))

    r64, rlp = reference(torch.float64), reference(torch.float16)
    for name, x, a, b in zip(("out", "lse", "max_logits", "dq", "dk", "dv"),
                             (out, meta.lse, meta.max_logits, *grads), rlp, r64):
        check(name, x, a, b)

    # with a sink the fresh forward writes fp32 (the sink merges in before the cast)
    sink = torch.randn(2, 2, generator=gen)
    out_s, meta_s = flex_flash_attn_func(q, k, v, qr, kr, tm, sink=sink, backend="triton")
    o64s, l64s, _ = ref_attn_dense(q, k, v, qr, kr, tm, sink=sink)
    o_lps, l_lps, _ = ref_attn_dense(q, k, v, qr, kr, tm, sink=sink, compute_dtype=torch.float16)
    check("out (sink)", out_s, o_lps, o64s)
    check("lse (sink)", meta_s.lse, l_lps, l64s)

    # the accumulation interface without buffers takes the fresh path too (fp32 results)
    scale = 16**-0.5
    o32, l32, _ = ffa_forward(q, k, v, qr, kr, tm, softmax_scale=scale, backend="triton")
    assert o32.dtype == torch.float32 and torch.equal(o32.to(torch.float16), out) and torch.equal(l32, meta.lse)
    o_acc, l_acc = fresh_buffers(*q.shape)
    ffa_forward(q, k, v, qr, kr, tm, softmax_scale=scale, out=o_acc, lse=l_acc, backend="triton")
    assert torch.equal(o_acc, o32) and torch.equal(l_acc, l32)
    g32 = ffa_backward(dout, q, k, v, out, meta.lse, qr, kr, tm, softmax_scale=scale, backend="triton")
    for x, y in zip(g32, grads):
        assert x.dtype == torch.float32 and torch.equal(x.to(torch.float16), y)


@kernel_test
@pytest.mark.parametrize("part_dtype,acc_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                                  (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)])
def test_fused_lse_merge_matches_torch_merge(part_dtype, acc_dtype):
    """The fa4 backend's one-pass merge equals merge.correct_attn_out_lse (float64), including
    -inf lse on either side, a list of the rows to merge (the others empty, NaN in the part) and a
    transposed part lse (FA4's layout); a
    low-precision accumulator (the runtime's two-contributor buffers) is read and rounded once."""
    from magi_ffa.backends.triton.merge import merge_into_
    from magi_ffa.merge import correct_attn_out_lse

    gen = torch.Generator().manual_seed(3)
    sq, h, d = 37, 3, 40
    acc = torch.randn(sq, h, d, generator=gen).to(acc_dtype)
    acc_lse = torch.randn(sq, h, generator=gen)
    part = torch.randn(sq, h, d, generator=gen).to(part_dtype)
    part_lse = torch.randn(h, sq, generator=gen).t()  # a view with strides (1, sq)
    acc_lse[torch.rand(sq, h, generator=gen) < 0.3] = float("-inf")
    part_lse[torch.rand(sq, h, generator=gen) < 0.3] = float("-inf")
    acc_lse[5], part_lse[5] = float("-inf"), float("-inf")  # a row nobody sees stays -inf / 0
    acc[torch.isneginf(acc_lse)] = 0.0  # an accumulator's rows of lse -inf hold 0 (its contract)
    empty = torch.rand(sq, generator=gen) < 0.2
    empty[5] = False
    part[empty] = float("nan")  # what a kernel leaves in rows that see no key must not leak
    ref_part_lse = part_lse.clone()
    ref_part_lse[empty] = float("-inf")
    ref_part = torch.where(empty[:, None, None], 0.0, part.double())
    want_o, want_l = correct_attn_out_lse(acc.double(), acc_lse.double(), ref_part, ref_part_lse.double())
    untouched = acc[empty].clone(), acc_lse[empty].clone()
    assert merge_into_(acc, acc_lse, part, part_lse, (~empty).nonzero().squeeze(1).to(torch.int32))
    # rows left out of the list are neither read nor written (their accumulator merged with nothing)
    assert torch.equal(acc[empty], untouched[0]) and torch.equal(acc_lse[empty], untouched[1])
    assert not torch.isnan(acc).any() and acc.dtype == acc_dtype
    tol = 1e-5 if acc_dtype == torch.float32 else (1e-3 if acc_dtype == torch.float16 else 8e-3)
    torch.testing.assert_close(acc.double(), want_o.to(acc_dtype).double(), rtol=tol, atol=tol)
    torch.testing.assert_close(acc_lse.double(), want_l, rtol=1e-5, atol=1e-5)
    assert torch.equal(acc[5], torch.zeros(h, d, dtype=acc_dtype)) and (acc_lse[5] == float("-inf")).all()
    # not its case: fp64 accumulators fall back (returns False, touches nothing)
    a64 = acc.double()
    assert not merge_into_(a64, acc_lse.double(), part.double(), part_lse.double())


@kernel_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gradient_add_skips_rows_not_computed(dtype):
    """add_into_ (the fa4 backend's dq add for calls that leave rows unwritten): acc += part on the
    other rows, the skipped rows untouched whatever the part holds there (NaN); zero_rows_ zeroes
    exactly the given rows; the torch paths of non-contiguous tensors give the same."""
    from magi_ffa.backends.triton.merge import add_into_, zero_rows_

    gen = torch.Generator().manual_seed(4)
    acc = torch.randn(29, 3, 40, generator=gen).to(dtype)
    part = torch.randn(29, 3, 40, generator=gen).to(dtype)
    skip = torch.rand(29, generator=gen) < 0.4
    part[skip] = float("nan")
    want = torch.where(skip[:, None, None], acc.double(), acc.double() + part.double())
    fused, by_torch = acc.clone(), acc.clone()
    add_into_(fused, part, skip)
    add_into_(by_torch, part.transpose(0, 1).contiguous().transpose(0, 1), skip)  # not contiguous
    for got in (fused, by_torch):
        torch.testing.assert_close(got.double(), want.to(dtype).double(), rtol=1e-3, atol=1e-3)
        assert torch.equal(got[skip], acc[skip])
    with pytest.raises(ValueError, match="skip_rows"):
        add_into_(acc, part, skip[:-1])
    zeroed, by_torch = part.clone(), part.transpose(0, 1).contiguous().transpose(0, 1)
    for buf in (zeroed, by_torch):  # the fa4 backend's fill of the rows it leaves unwritten
        zero_rows_(buf, skip)
        assert (buf[skip] == 0).all() and torch.equal(buf[~skip], part[~skip])
    with pytest.raises(ValueError, match="rows"):
        zero_rows_(zeroed, skip[:-1])
