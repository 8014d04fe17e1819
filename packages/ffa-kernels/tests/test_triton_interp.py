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

from magi_ffa.backends.base import FFAInputs  # noqa: E402
from magi_ffa.backends.triton import TritonBackend, triton_importable  # noqa: E402
from magi_ffa.backends.triton.plan import build_work_list  # noqa: E402

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
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "interp"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    report = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, f"interpreter suite failed (rc={res.returncode}):\n{report}"
    assert " passed" in res.stdout, report


# ---------------------------------------------------------------------------------------------
# references (float64, dense; small shapes only)
# ---------------------------------------------------------------------------------------------
def dense_mask(q_ranges, k_ranges, types, sq, sk) -> torch.Tensor:
    """bool [Sq, Sk]: the union of the slice masks (§2.4 rules)."""
    mask = torch.zeros(sq, sk, dtype=torch.bool)
    for (qs, qe), (ks, ke), t in zip(q_ranges.tolist(), k_ranges.tolist(), types.tolist()):
        lq, lk = qe - qs, ke - ks
        i = torch.arange(lq)[:, None]
        j = torch.arange(lk)[None, :]
        m = torch.ones(lq, lk, dtype=torch.bool)
        if t in (1, 3):
            m &= j <= i + lk - lq
        if t in (2, 3):
            m &= j >= i
        mask[qs:qe, ks:ke] |= m
    return mask


def ref_attn(q, k, v, mask, scale, softcap=0.0, dtype=torch.float64):
    """(out [Sq,hq,d], lse [Sq,hq], logits [hq,Sq,Sk]) in `dtype`; empty rows: out 0, lse -inf."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    g = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q, kk) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s.to(torch.float64), -1).to(dtype)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("hqk,khd->qhd", p.to(dtype), vv)
    return out, lse.T.contiguous(), s


def random_slices(gen, sq, sk, *, extra_empty=True):
    """Cell-disjoint random slices: a random grid of q/k segments, a random subset of cells,
    random types, shuffled; some q rows get nothing; includes Lq > Lk cases and empty slices."""
    nq = int(torch.randint(2, 5, (1,), generator=gen))
    nk = int(torch.randint(2, 5, (1,), generator=gen))
    qc = sorted(set(torch.randint(1, sq, (nq - 1,), generator=gen).tolist()) | {0, sq})
    kc = sorted(set(torch.randint(1, sk, (nk - 1,), generator=gen).tolist()) | {0, sk})
    qr, kr, tm = [], [], []
    skip = int(torch.randint(0, len(qc) - 1, (1,), generator=gen))  # one q segment stays empty
    for n, (a, b) in enumerate(zip(qc[:-1], qc[1:])):
        for c, d in zip(kc[:-1], kc[1:]):
            if n != skip and float(torch.rand((), generator=gen)) < 0.7:
                qr.append((a, b))
                kr.append((c, d))
                tm.append(int(torch.randint(0, 4, (1,), generator=gen)))
    if extra_empty:
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
    qr, kr, tm = random_slices(gen, sq, sk)
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
    gen = torch.Generator().manual_seed(100 + seed)
    sq, sk = 37 + 9 * seed, 53 + 5 * seed
    qr, kr, tm = random_slices(gen, sq, sk)
    mask = dense_mask(qr, kr, tm, sq, sk)
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
@pytest.mark.parametrize("case", FWD_CASES, ids=lambda c: f"s{c[0]}-{c[1]}x{c[2]}-h{c[3]}/{c[4]}-d{c[5]}-{str(c[6])[6:]}-cap{c[7]}")
def test_forward_matches_dense_reference(case):
    seed, sq, sk, hq, hk, d, dtype, cap = case
    _, q, k, v, qr, kr, tm = make_inputs(seed, sq, sk, hq, hk, d, dtype)
    mask = dense_mask(qr, kr, tm, sq, sk)
    assert (~mask.any(1)).any(), "the case should hold empty rows"
    ml = torch.full((hq,), float("-inf"))
    _, out, lse = run_forward(q, k, v, qr, kr, tm, softcap=cap, max_logits=ml)
    o64, l64, s64 = ref_attn(q, k, v, mask, d**-0.5, cap)
    lowp = dtype != torch.float32
    o_lp, l_lp, _ = ref_attn(q, k, v, mask, d**-0.5, cap, dtype=dtype) if lowp else (None, None, None)
    check("out", out, o_lp, o64)
    check("lse", lse, l_lp, l64)
    assert torch.equal(out[~mask.any(1)], torch.zeros_like(out[~mask.any(1)])), "empty rows were touched"
    torch.testing.assert_close(ml.double(), s64.amax((1, 2)), atol=1e-5 if not lowp else 1e-3, rtol=0)


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
    mask = dense_mask(qr, kr, tm, 100, 60)
    assert not mask[:30].any() and mask[30:50].any() and not mask[50:].any()
    o64, l64, _ = ref_attn(q, k, v, mask, 32**-0.5)
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
    mask = dense_mask(qr, kr, tm, sq, 80)
    o64, l64, _ = ref_attn(q, k, v, mask, d**-0.5)
    check("out", out, None, o64)
    check("lse", lse, None, l64)

    # Pre-existing partial result (random out / finite lse) merged with this call in f64.
    gen = torch.Generator().manual_seed(12)
    out0 = torch.randn(sq, hq, d, generator=gen)
    lse0 = torch.randn(sq, hq, generator=gen)
    out, lse = out0.clone(), lse0.clone()
    TritonBackend().forward(inp_a, out, lse, None)
    ma = dense_mask(qr[:half], kr[:half], tm[:half], sq, 80)
    oa, la, _ = ref_attn(q, k, v, ma, d**-0.5)
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
    _, _, s64 = ref_attn(q, k, v, dense_mask(qr, kr, tm, 64, 64), 16**-0.5, 2.0)
    expect = torch.maximum(torch.tensor([100.0, float("-inf"), -100.0, 0.0]).double(), s64.amax((1, 2)))
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
@pytest.mark.parametrize("case", BWD_CASES, ids=lambda c: f"s{c[0]}-{c[1]}x{c[2]}-h{c[3]}/{c[4]}-d{c[5]}-{str(c[6])[6:]}-cap{c[7]}")
def test_backward_matches_dense_reference(case):
    seed, sq, sk, hq, hk, d, dtype, cap = case
    gen, q, k, v, qr, kr, tm = make_inputs(seed, sq, sk, hq, hk, d, dtype)
    mask = dense_mask(qr, kr, tm, sq, sk)
    dout = torch.randn(sq, hq, d, generator=gen).to(dtype)
    inp, out, lse = run_forward(q, k, v, qr, kr, tm, softcap=cap)
    dq, dk, dv = run_backward(inp, dout, out, lse)

    def grads(prec):
        leaves = [x.detach().to(prec).requires_grad_() for x in (q, k, v)]
        o, _, _ = ref_attn(*leaves, mask, d**-0.5, cap, dtype=prec)
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
    gen, q, k, v, qr, kr, tm = make_inputs(40, 100, 100, 4, 2, 32, torch.float16)
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
