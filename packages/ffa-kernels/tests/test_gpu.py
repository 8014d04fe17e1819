"""The Triton backend on a CUDA device at realistic sizes, against the torch backend.

Criterion per tensor (out, lse, dq, dk, dv), FlexAttention style: max|x - ref64| <= 2 *
max|x_lowp_ref - ref64| + 1e-6 (`magi_ffa.testing.assert_close_to_ref`), where ref64 is the
torch backend on float64 copies of the inputs. x_lowp_ref is the dense reference computed in the
low precision itself (`ref_attn_dense(compute_dtype=bf16|fp16)`): the torch backend upcasts
bf16/fp16 to fp32 internally, so its error (~1e-7) is no low-precision yardstick. The dense
reference needs [hq, S, S] memory, so the 32k tests (marked slow) use fixed tolerances instead.
Skips without CUDA.
"""

from __future__ import annotations

import random

import pytest
import torch
from magi_ffa import ffa_backward, ffa_forward, flex_flash_attn_func
from magi_ffa.testing import assert_close_to_ref, random_slices, ref_attn_dense, varlen_slices

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


# ---------------------------------------------------------------------------------------------
# mask families (lists of q_ranges, k_ranges, types over `total` tokens)
# ---------------------------------------------------------------------------------------------
def _doc_lengths(total: int, seed: int) -> list[int]:
    """Long-tailed document lengths summing to `total`."""
    rng = random.Random(seed)
    lens, left = [], total
    while left > 0:
        n = min(left, max(1, int(rng.paretovariate(1.2) * 300)))
        lens.append(n)
        left -= n
    return lens


def mask_family(name: str, total: int, seed: int = 0):
    if name == "full":
        return [[0, total]], [[0, total]], [0]
    if name == "causal":
        return [[0, total]], [[0, total]], [1]
    if name == "varlen_full":
        return varlen_slices(_doc_lengths(total, seed), 0)
    if name == "varlen_causal":
        return varlen_slices(_doc_lengths(total, seed), 1)
    if name == "sliding_window":  # row r sees keys (r - w, r]: causal diagonal chunk + inv-causal band
        w, qr, kr, tm = 1024, [], [], []
        for s in range(0, total, w):
            e = min(total, s + w)
            qr.append([s, e]), kr.append([s, e]), tm.append(1)
            if s > 0:  # keys [s - w + 1, s): visible iff k - r >= 1 - w (top-left aligned)
                qr.append([s, e]), kr.append([s - w + 1, s]), tm.append(2)
        return qr, kr, tm
    if name == "block_causal":
        b = 2048
        qr = [[s, min(total, s + b)] for s in range(0, total, b)]
        return qr, [[0, e] for _, e in qr], [0] * len(qr)
    if name == "random":  # all four types, overlapping rows/columns, empty rows, Lq > Lk
        return random_slices(seed, total, total, 24)
    raise ValueError(name)


FAMILIES = ["full", "causal", "varlen_full", "varlen_causal", "sliding_window", "block_causal", "random"]


def _inputs(total, hq, hk, d, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(total, hq, d, device="cuda", generator=gen).to(dtype)
    k = torch.randn(total, hk, d, device="cuda", generator=gen).to(dtype)
    v = torch.randn(total, hk, d, device="cuda", generator=gen).to(dtype)
    dout = torch.randn(total, hq, d, device="cuda", generator=gen).to(dtype)
    return q, k, v, dout


def _fwd_bwd(backend, q, k, v, dout, qr, kr, tm, softcap=0.0):
    d = q.shape[-1]
    out, lse, ml = ffa_forward(q, k, v, qr, kr, tm, softmax_scale=d**-0.5, softcap=softcap,
                               return_max_logits=True, backend=backend)
    dq, dk, dv = ffa_backward(dout, q, k, v, out, lse, qr, kr, tm, softmax_scale=d**-0.5,
                              softcap=softcap, backend=backend)
    return {"out": out, "lse": lse, "max_logits": ml, "dq": dq, "dk": dk, "dv": dv}


def _dense_lowp(q, k, v, dout, qr, kr, tm, softcap):
    """out, lse, dq, dk, dv of the dense reference computed in q's own low precision."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out, lse, _ = ref_attn_dense(*leaves, qr, kr, tm, softcap=softcap, compute_dtype=q.dtype)
    out.backward(dout)
    return {"out": out, "lse": lse, "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}


def _compare(q, k, v, dout, qr, kr, tm, softcap=0.0, *, atol=None):
    """Triton vs torch-backend float64; against the dense low-precision error, or `atol`."""
    qr_t = torch.tensor(qr, dtype=torch.int32, device="cuda").reshape(-1, 2)
    kr_t = torch.tensor(kr, dtype=torch.int32, device="cuda").reshape(-1, 2)
    tm_t = torch.tensor(tm, dtype=torch.int32, device="cuda").reshape(-1)
    x = _fwd_bwd("triton", q, k, v, dout, qr_t, kr_t, tm_t, softcap)
    ref = _fwd_bwd("torch", q.double(), k.double(), v.double(), dout.double(), qr_t, kr_t, tm_t, softcap)
    lowp = _dense_lowp(q, k, v, dout, qr_t, kr_t, tm_t, softcap) if atol is None else None
    for name in ("out", "lse", "dq", "dk", "dv"):
        if lowp is not None:
            assert_close_to_ref(name, x[name], lowp[name], ref[name])
        else:
            fin = torch.isfinite(ref[name])
            assert torch.equal(torch.isfinite(x[name]), fin), f"{name}: -inf pattern differs"
            err = (x[name].double()[fin] - ref[name][fin]).abs().max().item()
            assert err <= atol[name], f"{name}: max abs error {err:.3e} > {atol[name]:.1e}"
    torch.testing.assert_close(x["max_logits"].double(), ref["max_logits"].double(), atol=2e-3, rtol=0)
    return x


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("d", [64, 128])
def test_triton_vs_torch_bf16_gqa(family, d):
    total = 8192
    q, k, v, dout = _inputs(total, 8, 2, d, torch.bfloat16, seed=hash((family, d)) % 1000)
    _compare(q, k, v, dout, *mask_family(family, total, seed=3))


@pytest.mark.parametrize("family", ["causal", "varlen_causal", "random"])
def test_triton_vs_torch_fp16_softcap(family):
    q, k, v, dout = _inputs(4096, 4, 4, 128, torch.float16, seed=5)
    _compare(q, k, v, dout, *mask_family(family, 4096, seed=4), softcap=20.0)


@pytest.mark.parametrize("d", [48, 96, 256])
def test_padded_and_large_head_dims(d):
    q, k, v, dout = _inputs(2048, 4, 2, d, torch.bfloat16, seed=6)
    _compare(q, k, v, dout, *mask_family("random", 2048, seed=d))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["causal", "varlen_causal"])
def test_triton_vs_torch_32k(family):
    q, k, v, dout = _inputs(32768, 8, 1, 128, torch.bfloat16, seed=7)
    tol = {"out": 2e-2, "lse": 1e-3, "dq": 5e-2, "dk": 5e-2, "dv": 5e-2}
    _compare(q, k, v, dout, *mask_family(family, 32768, seed=8), atol=tol)


def test_deterministic_bitwise_on_gpu():
    q, k, v, dout = _inputs(4096, 8, 2, 128, torch.bfloat16, seed=9)
    qr, kr, tm = mask_family("random", 4096, 1)
    a = _fwd_bwd("triton", q, k, v, dout, qr, kr, tm)
    b = _fwd_bwd("triton", q, k, v, dout, qr, kr, tm)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_flex_flash_attn_func_end_to_end():
    total, hq, hk, d = 4096, 8, 2, 128
    q, k, v, dout = _inputs(total, hq, hk, d, torch.bfloat16, seed=10)
    qr, kr, tm = mask_family("varlen_causal", total, seed=11)
    res = {}
    for backend, dt in (("triton", torch.bfloat16), ("torch", torch.float64)):
        leaves = [x.detach().to(dt).requires_grad_() for x in (q, k, v)]
        out, meta = flex_flash_attn_func(*leaves, qr, kr, tm, backend=backend, return_max_logits=True)
        out.backward(dout.to(dt))
        res[backend] = {"out": out, "lse": meta.lse, "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}
    assert res["triton"]["out"].dtype == torch.bfloat16 and res["triton"]["dq"].dtype == torch.bfloat16
    tm_t = torch.tensor(tm, dtype=torch.int32, device="cuda")
    qr_t = torch.tensor(qr, dtype=torch.int32, device="cuda")
    kr_t = torch.tensor(kr, dtype=torch.int32, device="cuda")
    lowp = _dense_lowp(q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    for name in ("out", "lse", "dq", "dk", "dv"):
        assert_close_to_ref(name, res["triton"][name], lowp[name], res["torch"][name])
