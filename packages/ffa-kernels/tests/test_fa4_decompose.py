"""Decomposed masks on the fa4 backend (backends/fa4/decompose.py), on CPU through the FA4 stand-in:
which masks split into native parts, that every mode of MAGI_FFA_FA4_DECOMPOSE gives the float64
reference's out, lse and gradients (fresh calls and the runtime's accumulating stages), and that a
mask whose parts would share a cell keeps the single masked call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from magi_ffa import ffa_backward, ffa_forward, flex_flash_attn_func
from magi_ffa.backends.fa4 import decompose, native
from magi_ffa.backends.fa4.block_sparse import build_slice_block_mask
from magi_ffa.testing import ref_attn_dense, shared_question_slices

# (name, slices, Sq, Sk, number of parts or None)
SQ = (*shared_question_slices(9, [5, 11, 6, 3]), 9 + 5 + 11 + 6 + 3)
CASES = [
    ("shared-question", SQ[:3], SQ[3], SQ[3], 2),
    # the largest part does not cover every row; rows 6-9 see nothing
    ("partial-cover-empty-rows", ([[0, 6], [10, 22]], [[0, 6], [0, 5]], [1, 0]), 22, 8, 2),
    # inverse causal over a square is a window (left 0) for FA4
    ("inverse-causal-and-full", ([[0, 10], [10, 20]], [[0, 10], [0, 10]], [2, 0]), 20, 10, 2),
    # full and causal on the same cells: the union is not a sum; its rows' ranges differ row by row
    # (10 runs of one row), more than the row layers' limit: one masked call
    ("overlapping-parts", ([[0, 12], [0, 12]], [[0, 12], [0, 2]], [1, 0]), 12, 12, None),
    # one type only: two runs of rows whose key ranges overlap, so two row layers
    ("one-type-row-layers", ([[0, 6], [6, 14]], [[0, 3], [2, 14]], [0, 0]), 14, 14, 2),
    # the full part has two key runs per row: no native form
    ("part-not-native", ([[0, 10], [0, 10], [10, 16]], [[0, 3], [6, 9], [0, 16]], [0, 0, 1]), 16, 16, None),
]


def _ids(x):
    return x if isinstance(x, str) else ""


@pytest.mark.parametrize("name,slices,sq,sk,n_parts", CASES, ids=_ids)
def test_which_masks_split(name, slices, sq, sk, n_parts):
    mask = build_slice_block_mask(*slices, sq, sk, block_size=(4, 8))
    if n_parts is None:
        assert mask.parts is None
        return
    assert len(mask.parts) == n_parts and mask.native is None and mask.has_partial
    areas = [p.covers[0] * p.covers[1] for p in mask.parts]
    assert areas == sorted(areas, reverse=True)
    # the parts' cells, put back in place, are the mask's cells, each once
    q_idx, k_idx = torch.arange(sq)[:, None], torch.arange(sk)[None, :]
    total = torch.zeros(sq, sk, dtype=torch.int64)
    for p in mask.parts:
        assert p.mask.native is not None and p.mask.parts is None
        (a, b), (c, d) = p.q, p.k
        total[a:b, c:d] += p.mask.cell_mask(q_idx[: b - a], k_idx[:, : d - c]).long()
    assert torch.equal(total, mask.cell_mask(q_idx, k_idx).long())


# a context-parallel remote stage: two documents' chunks against their earlier keys (each chunk sees
# every remote key before it: a staircase), rows of a third chunk seeing nothing; 3 row layers
STAIRCASE = ([[0, 4], [4, 8], [8, 12], [12, 16], [19, 23], [23, 27]],
             [[0, 8], [0, 12], [0, 16], [16, 20], [20, 23], [20, 27]], [0] * 6)


def test_a_staircase_splits_into_row_layers_of_native_documents():
    mask = build_slice_block_mask(*STAIRCASE, 27, 27, block_size=(4, 8))
    assert mask.native is None and mask.parts_kind == "rows" and len(mask.parts) == 3
    q_idx, k_idx = torch.arange(27)[:, None], torch.arange(27)[None, :]
    rows = torch.zeros(27, dtype=torch.int64)
    total = torch.zeros(27, 27, dtype=torch.int64)
    for p in mask.parts:
        assert p.mask.native is not None and not p.mask.native.causal  # documents, or one rectangle
        (a, b), (c, d) = p.q, p.k
        cells = p.mask.cell_mask(q_idx[: b - a], k_idx[:, : d - c]).long()
        total[a:b, c:d] += cells
        rows[a:b] += cells.any(1).long()
    assert torch.equal(total, mask.cell_mask(q_idx, k_idx).long())  # every cell once
    assert rows.max() == 1  # each row computed by one layer


def test_row_layers_beyond_the_limit_keep_one_masked_call(monkeypatch):
    for limit, parts in (("2", None), ("0", None), ("3", 3), ("", 3)):
        monkeypatch.setenv(decompose.MAX_ROW_LAYERS_ENV, limit)
        mask = build_slice_block_mask(*STAIRCASE, 27, 27, block_size=(4, 8))
        assert (None if mask.parts is None else len(mask.parts)) == parts, limit
    for bad in ("-1", "many"):
        monkeypatch.setenv(decompose.MAX_ROW_LAYERS_ENV, bad)
        with pytest.raises(ValueError, match=decompose.MAX_ROW_LAYERS_ENV):
            build_slice_block_mask(*STAIRCASE, 27, 27, block_size=(4, 8))


def _inputs(sq, sk, seed=3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, 4, 64, generator=g, dtype=torch.float64)
    k, v = (torch.randn(sk, 2, 64, generator=g, dtype=torch.float64) for _ in range(2))
    dout = torch.randn(sq, 4, 64, generator=g, dtype=torch.float64)
    return q, k, v, dout


@pytest.mark.parametrize("mode,fwd_calls,bwd_calls", [("0", 1, 1), ("bwd", 1, 2), ("all", 2, 2)])
@pytest.mark.parametrize("name,slices,sq,sk,n_parts", CASES[:3], ids=_ids)
@pytest.mark.parametrize("softcap", [0.0, 4.0])
def test_every_mode_matches_float64_reference(fake_fa4, monkeypatch, mode, fwd_calls, bwd_calls, name, slices,
                                              sq, sk, n_parts, softcap):
    monkeypatch.setenv(decompose.ENV, mode)
    q, k, v, dout = _inputs(sq, sk)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out, meta = flex_flash_attn_func(*leaves, *slices, softcap=softcap, backend="fa4")
    grads = torch.autograd.grad(out, leaves, dout)
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_out, ref_lse, _ = ref_attn_dense(*ref, *slices, softcap=softcap)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(meta.lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, torch.autograd.grad(ref_out, ref, dout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (fake_fa4["fwd"], fake_fa4["bwd"]) == (fwd_calls, bwd_calls)
    # parts run on FA4's own masking; the whole mask needs the mask function
    assert (fake_fa4["native"] == fwd_calls + bwd_calls) is (mode == "all")
    assert (fake_fa4["mask_rows"] == 0) is (mode == "all")


@pytest.mark.parametrize("skip_in", [{"fwd"}, {"fwd", "bwd"}], ids=["skip-fwd", "skip-both"])
@pytest.mark.parametrize("mode", ["0", "all"])
def test_accumulating_stages_with_a_decomposed_stage(fake_fa4, monkeypatch, mode, skip_in):
    """The runtime's use (not fresh, fp32 accumulators): a plain causal stage, then a stage whose
    mask splits (answers x prompt and the answers' own causal blocks)."""
    monkeypatch.setattr(native, "SKIP_ROWS_WITHOUT_KEYS_IN", frozenset(skip_in))  # seqused_q per direction
    monkeypatch.setenv(decompose.ENV, mode)
    qr, kr, ts = shared_question_slices(6, [7, 5, 4])
    total = 6 + 7 + 5 + 4
    q, k, v, dout = _inputs(total, total, seed=11)
    stages = [(qr[:1], kr[:1], ts[:1]), (qr[1:], kr[1:], ts[1:])]
    out = lse = None
    for sqr, skr, sts in stages:
        out, lse, _ = ffa_forward(q, k, v, sqr, skr, sts, softmax_scale=0.2, out=out, lse=lse, backend="fa4")
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_out, ref_lse, _ = ref_attn_dense(*ref, qr, kr, ts, softmax_scale=0.2)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=1e-6)
    grads = None
    for sqr, skr, sts in stages:
        grads = ffa_backward(dout, q, k, v, out, lse, sqr, skr, sts, softmax_scale=0.2,
                             **(dict(zip(("dq", "dk", "dv"), grads)) if grads else {}), backend="fa4")
    for a, b in zip(grads, torch.autograd.grad(ref_out, ref, dout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert fake_fa4["fwd"] == fake_fa4["bwd"] == (3 if mode == "all" else 2)


def test_overlapping_parts_keep_one_masked_call(fake_fa4, monkeypatch):
    monkeypatch.setenv(decompose.ENV, "all")
    _, slices, sq, sk, _ = CASES[3]
    q, k, v, dout = _inputs(sq, sk)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out, _ = flex_flash_attn_func(*leaves, *slices, backend="fa4")
    grads = torch.autograd.grad(out, leaves, dout)
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_out, _, _ = ref_attn_dense(*ref, *slices)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads, torch.autograd.grad(ref_out, ref, dout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert fake_fa4["fwd"] == fake_fa4["bwd"] == 1 and fake_fa4["mask_rows"] > 0


def test_a_bad_mode_names_the_variable(monkeypatch):
    monkeypatch.setenv(decompose.ENV, "sometimes")
    with pytest.raises(ValueError, match=decompose.ENV):
        decompose.enabled("fwd")


def test_full_rectangles_are_native_whatever_their_shape():
    """Every row seeing every key is FA4's plain (non-causal) call, also when Sq != Sk: the
    answers-times-prompt part of a shared question."""
    from magi_ffa.backends.fa4.native import recognise_native

    lo, hi = np.zeros((1, 7), np.int32), np.full((1, 7), 3, np.int32)
    found = recognise_native(lo, hi, 7, 3)
    assert found is not None and not found.causal and not found.varlen and found.window_left is None


@pytest.mark.parametrize("mode,calls", [("0", 1), ("bwd", 3), ("all", 3)])
@pytest.mark.parametrize("fresh", [True, False], ids=["one-call", "accumulating"])
def test_row_layers_match_float64_reference(fake_fa4, monkeypatch, mode, calls, fresh):
    """A staircase's row layers run in both directions unless decomposition is off, fresh (the user's
    call) and accumulated after another stage (the runtime's: fp64 accumulators, rows seen before)."""
    monkeypatch.setenv(decompose.ENV, mode)
    q, k, v, dout = _inputs(27, 28, seed=5)
    first = ([[0, 27]], [[27, 28]], [0])  # a stage before: every row sees a key the staircase does not
    slices = STAIRCASE if fresh else tuple(a + b for a, b in zip(first, STAIRCASE))
    out = lse = None
    if not fresh:
        out, lse, _ = ffa_forward(q, k, v, *first, softmax_scale=0.3, backend="fa4")
    out, lse, _ = ffa_forward(q, k, v, *STAIRCASE, softmax_scale=0.3, out=out, lse=lse, backend="fa4")
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_out, ref_lse, _ = ref_attn_dense(*ref, *slices, softmax_scale=0.3)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    seen = torch.isfinite(ref_lse)
    assert torch.equal(seen, torch.isfinite(lse))  # rows 16-18 see nothing when the staircase is alone
    torch.testing.assert_close(lse[seen], ref_lse[seen], atol=1e-6, rtol=1e-6)
    grads = None
    for stage in ([first] if not fresh else []) + [STAIRCASE]:
        grads = ffa_backward(dout, q, k, v, out, lse, *stage, softmax_scale=0.3,
                             **(dict(zip(("dq", "dk", "dv"), grads)) if grads else {}), backend="fa4")
    for a, b in zip(grads, torch.autograd.grad(ref_out, ref, dout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    stage_calls = 0 if fresh else 1
    assert (fake_fa4["fwd"], fake_fa4["bwd"]) == (calls + stage_calls, calls + stage_calls)
    assert (fake_fa4["mask_rows"] == 0) is (mode != "0")
