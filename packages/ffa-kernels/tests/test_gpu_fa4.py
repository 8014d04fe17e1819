"""The fa4 backend on a Hopper/Blackwell GPU with Flash-Attention 4 installed, against float64.

Same criterion as test_gpu.py (assert_close_to_ref: within 2x the dense low-precision reference's
own error). Skips without CUDA, without FA4, or below sm90.
"""

from __future__ import annotations

import pytest
import torch
from magi_ffa import ffa_backward, ffa_forward, flex_flash_attn_func
from magi_ffa.backends.fa4 import FA4Backend
from magi_ffa.testing import assert_close_to_ref, shared_question_slices
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


# Documents FA4 runs natively (native.py): varlen with filler documents (rows that see nothing become
# documents without keys, keys nobody reads documents without rows), or, for documents of one length
# on the diagonal, its batch layout.
DOCUMENTS = {
    # causal documents with fewer rows than keys (bottom-right aligned), unread keys, empty tail rows
    "causal_docs_fewer_rows": ([[0, 1000], [1000, 3000]], [[0, 1500], [1700, 4096]], [1, 1]),
    # full documents with empty rows and unread keys around them (a runtime remote stage)
    "full_docs_with_gaps": ([[100, 1100], [1500, 4000]], [[0, 700], [900, 3000]], [0, 0]),
    # a runtime host stage: a rank's chunks of each document back to back, sliced per chunk
    "host_stage": ([[0, 512], [512, 1024], [1024, 1536], [1536, 4096]],
                   [[0, 512], [0, 1024], [1024, 1536], [1024, 4096]], [1, 1, 1, 1]),
    # documents of one length: FA4's batch layout [4, 1024] (native.BATCHED_DOCUMENTS), causal, and full
    # ones given in pieces
    "equal_causal_docs": ([[a, a + 1024] for a in range(0, 4096, 1024)],
                          [[a, a + 1024] for a in range(0, 4096, 1024)], [1] * 4),
    "equal_full_docs_cut": ([[0, 700], [700, 2048], [2048, 4096]], [[0, 2048], [0, 2048], [2048, 4096]], [0] * 3),
}


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_fa4_documents_vs_float64(name):
    from magi_ffa.backends.fa4.block_sparse import row_intervals
    from magi_ffa.backends.fa4.native import recognise_native

    total, hq, hk, d = 4096, 8, 2, 128
    qr, kr, tm = DOCUMENTS[name]
    native = recognise_native(*row_intervals(qr, kr, tm, total), total, total)
    assert native is not None and (native.batch > 1) == name.startswith("equal"), native
    q, k, v, dout = _inputs(total, hq, hk, d, torch.bfloat16, seed=9)
    qr_t, kr_t = (torch.tensor(x, dtype=torch.int32, device="cuda").reshape(-1, 2) for x in (qr, kr))
    tm_t = torch.tensor(tm, dtype=torch.int32, device="cuda")
    got = _run("fa4", torch.bfloat16, q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    ref = _run("torch", torch.float64, q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    lowp = _dense_lowp(q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    for key in ("out", "lse", "dq", "dk", "dv"):
        assert_close_to_ref(key, got[key], lowp[key], ref[key])


def _window_document_slices(lens, window):
    """FFA slices of documents back to back, each with a causal sliding window (row r of a document
    at a sees [max(a, r - window), r]): per block of `window` rows, the causal square on the
    diagonal and the inverse-causal band before it."""
    qr, kr, tm, a = [], [], [], 0
    for n in lens:
        for r0 in range(a, a + n, window):
            r1 = min(r0 + window, a + n)
            qr.append([r0, r1]), kr.append([r0, r1]), tm.append(1)
            if r0 > a:
                qr.append([r0, r1]), kr.append([r0 - window, r0]), tm.append(2)
        a += n
    return qr, kr, tm


@pytest.mark.parametrize("lens", [[1000, 1500, 1596], [200, 3896]], ids=["varlen_window", "rotated_host_stage"])
def test_fa4_window_documents_vs_float64(lens, monkeypatch):
    """Documents with one sliding window, FA4 varlen with a local window (native.VARLEN_WINDOWS, on
    by default since this passed on 2 x H200)."""
    from magi_ffa.backends.fa4 import clear_mask_cache, native
    from magi_ffa.backends.fa4.block_sparse import row_intervals

    monkeypatch.setattr(native, "VARLEN_WINDOWS", True)
    clear_mask_cache()
    total, hq, hk, d = 4096, 8, 2, 128
    qr, kr, tm = _window_document_slices(lens, 256)
    found = native.recognise_native(*row_intervals(qr, kr, tm, total), total, total)
    assert found is not None and found.window_left == 256 and found.varlen, "not native"
    q, k, v, dout = _inputs(total, hq, hk, d, torch.bfloat16, seed=13)
    qr_t, kr_t = (torch.tensor(x, dtype=torch.int32, device="cuda").reshape(-1, 2) for x in (qr, kr))
    tm_t = torch.tensor(tm, dtype=torch.int32, device="cuda")
    try:
        got = _run("fa4", torch.bfloat16, q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    finally:
        clear_mask_cache()  # the masks translated with the switch on
    ref = _run("torch", torch.float64, q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    lowp = _dense_lowp(q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    for key in ("out", "lse", "dq", "dk", "dv"):
        assert_close_to_ref(key, got[key], lowp[key], ref[key])


@pytest.mark.parametrize("family,second", [
    ("causal", "documents"), ("sliding_window", "documents"), ("causal", "block_lists")])
def test_fa4_stages_accumulate_like_the_runtime(family, second):
    """The distributed runtime's path on real FA4: two stages over disjoint cells merged into fp32
    accumulators (not fresh), then each stage's backward under the final out/lse, added up. Stage 1
    runs on FA4's own masking; stage 2 on FA4 varlen with filler documents (empty rows, unread
    keys) or on block lists with partial tiles and empty rows (two key runs per row)."""
    total, hq, hk, d = 4096, 8, 2, 128
    q, k, v, dout = _inputs(total, hq, hk, d, torch.bfloat16, seed=5)
    second = {("causal", "documents"): ([[0, 2048]], [[2100, 4096]], [0]),  # above the diagonal
              ("sliding_window", "documents"): ([[2048, 4096]], [[0, 500]], [0]),  # left of the window
              ("causal", "block_lists"): ([[0, 2048], [0, 2048]], [[2100, 2500], [3000, 4096]], [0, 0]),
              }[family, second]
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


@pytest.mark.parametrize("family", FAMILIES)
def test_fa4_replayed_launches_vs_float64(family):
    """FA4's launches recorded on the ``record_at()``-th call of a mask and replayed on the next (replay.py),
    on new data: every mask family is replayed, not refused, and stays within tolerance."""
    _replayed_vs_float64(*mask_family(family, 4096, seed=4))


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_fa4_documents_replayed_vs_float64(name):
    """Documents with rows that see nothing run with seqused_q 0 (FA4 leaves those rows unwritten):
    their calls are replayed too (the recording's check compares the computed rows only)."""
    _replayed_vs_float64(*DOCUMENTS[name])


def _replayed_vs_float64(qr, kr, tm):
    from magi_ffa.backends.fa4 import replay

    total, hq, hk, d = 4096, 8, 2, 128
    qr_t, kr_t = (torch.tensor(x, dtype=torch.int32, device="cuda").reshape(-1, 2) for x in (qr, kr))
    tm_t = torch.tensor(tm, dtype=torch.int32, device="cuda")
    first = _inputs(total, hq, hk, d, torch.bfloat16, seed=5)
    replay.clear()
    for _ in range(replay.record_at()):  # compiles, runs FA4's own path, then records
        _run("fa4", torch.bfloat16, *first, qr_t, kr_t, tm_t, 0.0)
    q, k, v, dout = _inputs(total, hq, hk, d, torch.bfloat16, seed=6)
    got = _run("fa4", torch.bfloat16, q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    s = replay.stats()
    assert s["refused"] == 0 and s["replayed"] == 2, s
    ref = _run("torch", torch.float64, q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    lowp = _dense_lowp(q, k, v, dout, qr_t, kr_t, tm_t, 0.0)
    for name in ("out", "lse", "dq", "dk", "dv"):
        assert_close_to_ref(name, got[name], lowp[name], ref[name])


# masks that are sums of native parts (decompose.py): a shared question (varlen causal + the
# answers-times-prompt rectangle), and one whose largest part leaves rows to the other and empty
DECOMPOSED = {
    "shared_question": shared_question_slices(512, [700, 1300, 333, 1251]),
    "partial_cover_empty_rows": ([[0, 1500], [2000, 4096]], [[0, 1500], [0, 1100]], [1, 0]),
    # a staircase (a runtime remote stage of chunked documents): three row layers of native documents
    "staircase_row_layers": ([[0, 1024], [1024, 2048], [2048, 3000], [3000, 4096]],
                             [[0, 1500], [0, 2600], [0, 3100], [3100, 4096]], [0, 0, 0, 0]),
}


@pytest.mark.parametrize("mode", ["bwd", "all"])
@pytest.mark.parametrize("name", list(DECOMPOSED))
def test_fa4_decomposed_masks_vs_float64(name, mode, monkeypatch):
    from magi_ffa.backends.fa4 import decompose
    from magi_ffa.backends.fa4.block_sparse import build_slice_block_mask

    monkeypatch.setenv(decompose.ENV, mode)
    total, hq, hk, d = 4096, 8, 2, 128
    qr, kr, tm = DECOMPOSED[name]
    assert build_slice_block_mask(qr, kr, tm, total, total).parts is not None, "not decomposed"
    q, k, v, dout = _inputs(total, hq, hk, d, torch.bfloat16, seed=13)
    qr_t, kr_t = (torch.tensor(x, dtype=torch.int32, device="cuda").reshape(-1, 2) for x in (qr, kr))
    tm_t = torch.tensor(tm, dtype=torch.int32, device="cuda")
    for softcap in (0.0, 30.0):
        for _ in range(2):  # compiles, records: the checked third call replays FA4's launches
            _run("fa4", torch.bfloat16, q, k, v, dout, qr_t, kr_t, tm_t, softcap)
        got = _run("fa4", torch.bfloat16, q, k, v, dout, qr_t, kr_t, tm_t, softcap)
        ref = _run("torch", torch.float64, q, k, v, dout, qr_t, kr_t, tm_t, softcap)
        lowp = _dense_lowp(q, k, v, dout, qr_t, kr_t, tm_t, softcap)
        for key in ("out", "lse", "dq", "dk", "dv"):
            assert_close_to_ref(key, got[key], lowp[key], ref[key])
