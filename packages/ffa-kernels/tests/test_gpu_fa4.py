"""The fa4 backend on a Hopper/Blackwell GPU with Flash-Attention 4 installed, against float64.

Same criterion as test_gpu.py (assert_close_to_ref: within 2x the dense low-precision reference's
own error). Skips without CUDA, without FA4, or below sm90.
"""

from __future__ import annotations

import pytest
import torch
from magi_ffa import ffa_backward, ffa_forward, flex_flash_attn_func
from magi_ffa.backends.fa4 import FA4Backend
from magi_ffa.testing import assert_close_to_ref
from test_gpu import FAMILIES, _dense_lowp, _inputs, mask_family

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not FA4Backend().is_available(), reason="needs flash-attn-4 (magi-ffa-kernels[fa4])"),
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9,
                       reason="FA4 needs sm90+"),
]


def _run(backend, dt, q, k, v, dout, qr, kr, tm, softcap):
    leaves = [x.detach().to(dt).requires_grad_() for x in (q, k, v)]
    out, meta = flex_flash_attn_func(*leaves, qr, kr, tm, softcap=softcap, backend=backend)
    out.backward(dout.to(dt))
    return {"out": out, "lse": meta.lse, "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("softcap", [0.0, 30.0])
def test_fa4_vs_float64(family, softcap):
    total, hq, hk, d = 4096, 8, 2, 128
    q, k, v, dout = _inputs(total, hq, hk, d, torch.bfloat16, seed=3)
    qr, kr, tm = mask_family(family, total, seed=4)
    qr_t, kr_t = (torch.tensor(x, dtype=torch.int32, device="cuda").reshape(-1, 2) for x in (qr, kr))
    tm_t = torch.tensor(tm, dtype=torch.int32, device="cuda")
    got = _run("fa4", torch.bfloat16, q, k, v, dout, qr_t, kr_t, tm_t, softcap)
    ref = _run("torch", torch.float64, q, k, v, dout, qr_t, kr_t, tm_t, softcap)
    lowp = _dense_lowp(q, k, v, dout, qr_t, kr_t, tm_t, softcap)
    for name in ("out", "lse", "dq", "dk", "dv"):
        assert_close_to_ref(name, got[name], lowp[name], ref[name])


@pytest.mark.parametrize("family", ["causal", "sliding_window"])
def test_fa4_stages_accumulate_like_the_runtime(family):
    """The distributed runtime's path on real FA4: two stages over disjoint cells merged into fp32
    accumulators (not fresh), then each stage's backward under the final out/lse, added up. Stage 1
    runs on FA4's own masking; stage 2 on block lists with partial tiles and empty rows."""
    total, hq, hk, d = 4096, 8, 2, 128
    q, k, v, dout = _inputs(total, hq, hk, d, torch.bfloat16, seed=5)
    second = {"causal": ([[0, 2048]], [[2100, 4096]], [0]),  # above the diagonal
              "sliding_window": ([[2048, 4096]], [[0, 500]], [0])}[family]  # left of the window
    stages = [mask_family(family, total, seed=6), second]
    stages = [[torch.tensor(x, dtype=torch.int32, device="cuda").reshape(shape)
               for x, shape in zip(st, ((-1, 2), (-1, 2), (-1,)))] for st in stages]
    out = lse = None
    for st in stages:
        out, lse, _ = ffa_forward(q, k, v, *st, softmax_scale=d**-0.5, out=out, lse=lse, backend="fa4")
    grads = None
    for st in stages:
        grads = ffa_backward(dout, q, k, v, out.to(q.dtype), lse, *st, softmax_scale=d**-0.5,
                             **(dict(zip(("dq", "dk", "dv"), grads)) if grads else {}), backend="fa4")
    qr_t, kr_t, tm_t = (torch.cat([st[i] for st in stages]) for i in range(3))
    ref = _run("torch", torch.float64, q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    lowp = _dense_lowp(q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    got = {"out": out.to(q.dtype), "lse": lse, "dq": grads[0], "dk": grads[1], "dv": grads[2]}
    for name in ("out", "lse", "dq", "dk", "dv"):
        assert_close_to_ref(name, got[name], lowp[name], ref[name], slack=3.0)
