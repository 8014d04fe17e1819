"""Which masks the fa4 backend hands to FA4's own masking (backends/fa4/native.py): every mask it
recognises must mean exactly the dense mask under FA4's documented semantics (the stand-in's
`_native_visible`, written from FA4's docs, not from native.py), and the common masks must be
recognised."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _fake_fa4 import _native_visible
from magi_ffa.backends.fa4.block_sparse import row_intervals
from magi_ffa.backends.fa4.native import recognise_native
from magi_ffa.testing import make_dense_mask, random_slices, varlen_slices


def _recognise(qr, kr, ts, sq, sk):
    lo, hi = row_intervals(qr, kr, ts, sq)
    return recognise_native(lo, hi, sq, sk)


def _means(native, sq, sk):
    cu_q, cu_k = native.cu_seqlens_q, native.cu_seqlens_k
    if native.batch > 1:  # FA4's batch layout: B sequences of S / B rows and keys each
        assert not native.varlen and sq == sk and sq % native.batch == 0
        cu_q = cu_k = torch.arange(0, sq + 1, sq // native.batch)
    return _native_visible(sq, sk, native.causal, native.window_left, native.window_right, cu_q, cu_k)


def _window(s, left, right):
    """Row r sees keys [r - left, r + right] (None: unbounded), one slice per row."""
    lo = [0 if left is None else max(0, r - left) for r in range(s)]
    hi = [s if right is None else min(s, r + right + 1) for r in range(s)]
    return [[r, r + 1] for r in range(s)], [[a, b] for a, b in zip(lo, hi)], [0] * s


def _expected_native():
    yield "full", ([[0, 24]], [[0, 24]], [0]), 24, 24
    yield "causal", ([[0, 24]], [[0, 24]], [1]), 24, 24
    yield "inv-causal", ([[0, 24]], [[0, 24]], [2]), 24, 24  # row r sees [r, S): a window (0, None)
    yield "bi-causal", ([[0, 24]], [[0, 24]], [3]), 24, 24  # the diagonal alone: a window (0, 0)
    yield "causal-split", ([[0, 10], [10, 24]], [[0, 10], [0, 24]], [1, 1]), 24, 24
    yield "swa-as-ffa-slices", ([[0, 8], [8, 16], [8, 16], [16, 24], [16, 24]],
                                [[0, 8], [8, 16], [1, 8], [16, 24], [9, 16]], [1, 1, 2, 1, 2]), 24, 24
    for left, right in ((3, 0), (3, 2), (None, 2), (0, 5), (4, None), (0, 0)):
        yield f"window-{left}-{right}", _window(24, left, right), 24, 24
    yield "varlen-causal", varlen_slices([5, 1, 9, 9], 1), 24, 24
    yield "varlen-full-shuffled", ([[6, 15], [0, 6], [15, 24]], [[6, 15], [0, 6], [15, 24]], [0] * 3), 24, 24
    # documents with rows that see nothing and keys nobody reads (documents without keys / rows)
    yield "varlen-with-gap", ([[0, 5], [7, 12]], [[0, 5], [7, 12]], [1, 1]), 12, 12
    yield "empty-rows", ([[0, 4]], [[0, 4]], [1]), 8, 8
    yield "causal-q-shorter", ([[0, 8]], [[0, 12]], [1]), 8, 12  # bottom-right aligned
    yield "pairs-as-windows", ([[r, r + 1] for r in range(6)], [[r - r % 2, r + 1] for r in range(6)],
                               [0] * 6), 6, 6  # causal documents of two rows
    # a runtime host stage: each document's local chunks back to back, sliced per chunk
    yield "host-stage", ([[0, 3], [3, 6], [6, 8], [8, 11]], [[0, 3], [0, 6], [6, 8], [6, 11]], [1] * 4), 11, 11
    # a remote stage: rows of later chunks see earlier chunks of their document, received back to back
    yield "remote-stage", ([[2, 5], [5, 8]], [[0, 2], [3, 6]], [0, 0]), 8, 6


@pytest.mark.parametrize("name,slices,sq,sk", list(_expected_native()), ids=lambda x: x if isinstance(x, str) else "")
def test_common_masks_run_natively_and_mean_the_same(name, slices, sq, sk):
    native = _recognise(*slices, sq, sk)
    assert native is not None, name
    assert torch.equal(_means(native, sq, sk), make_dense_mask(*slices, sq, sk))


def _not_native():
    yield "varlen-mixed-types", ([[0, 5], [5, 12]], [[0, 5], [5, 12]], [0, 1]), 12, 12
    yield "block-causal", ([[0, 4], [4, 8], [8, 12]], [[0, 4], [0, 8], [0, 12]], [0, 0, 0]), 12, 12
    yield "two-runs", ([[4, 8], [4, 8]], [[0, 1], [4, 8]], [0, 1]), 8, 8
    yield "window-on-more-keys", ([[r, r + 1] for r in range(6)], [[r, r + 3] for r in range(6)], [0] * 6), 6, 8
    yield "remote-overlapping-keys", ([[0, 4], [4, 8]], [[0, 2], [0, 6]], [0, 0]), 8, 6
    yield "keys-going-back", ([[0, 4], [4, 8]], [[4, 6], [0, 2]], [0, 0]), 8, 6
    yield "nothing-visible", ([[0, 4]], [[0, 0]], [0]), 4, 4
    # 64 one-row documents (a shifted diagonal): FA4 would give each its own tile
    yield "too-many-documents", ([[0, 64]], [[1, 65]], [3]), 64, 65


@pytest.mark.parametrize("name,slices,sq,sk", list(_not_native()), ids=lambda x: x if isinstance(x, str) else "")
def test_other_masks_keep_the_block_lists(name, slices, sq, sk):
    assert _recognise(*slices, sq, sk) is None, name


def _random_documents(rng):
    """Slices of random documents in order, some without rows or keys, all full or all causal (causal
    documents have at least as many keys as rows), each document cut into random row pieces."""
    causal = rng.random() < 0.5
    qr, kr, ts, q, k = [], [], [], 0, 0
    for _ in range(rng.randint(1, 5)):
        lq, lk = rng.randint(0, 5), rng.randint(0, 5)
        if causal:
            lk = max(lk, lq)
        if lq and lk:
            cut = rng.randint(0, lq)  # two row pieces of one document
            for a, b in ((0, cut), (cut, lq)):
                if b > a:
                    qr.append([q + a, q + b]), ts.append(int(causal))
                    kr.append([k, k + lk - (lq - b)] if causal else [k, k + lk])
        q, k = q + lq, k + lk
    return (qr, kr, ts), max(q, 1), max(k, 1)


def test_whatever_is_recognised_means_the_dense_mask():
    rng = random.Random(3)
    seen = 0
    for case in range(500):
        s = rng.randint(1, 20)
        sq = sk = s
        kind = case % 5
        if kind == 0:
            sq, sk = s, rng.randint(1, 20)
            slices = random_slices(rng, sq, sk, rng.randint(1, 4))
        elif kind == 1:
            lens = [rng.randint(1, 6) for _ in range(rng.randint(1, 4))]
            slices = varlen_slices(lens, rng.choice([0, 1]))
            sq = sk = sum(lens)
        elif kind == 2:
            slices = _window(s, rng.choice([None, *range(4)]), rng.choice([None, *range(4)]))
        elif kind == 3:  # a window with one row nudged: must be refused or still mean the same
            qr, kr, ts = _window(s, rng.randint(0, 3), rng.randint(0, 3))
            r = rng.randrange(s)
            kr[r] = [kr[r][0], max(kr[r][0] + 1, kr[r][1] - 1)]
            slices = (qr, kr, ts)
        else:
            slices, sq, sk = _random_documents(rng)
        if not slices[0]:
            continue
        native = _recognise(*slices, sq, sk)
        if native is not None:
            seen += 1
            assert torch.equal(_means(native, sq, sk), make_dense_mask(*slices, sq, sk)), (case, slices)
        elif kind == 4 and sum(q[1] - q[0] for q in slices[0]) > 0:
            raise AssertionError(f"documents in order were not recognised: {slices} {sq} {sk}")
    assert seen > 250  # the windows and documents above were recognised


@pytest.mark.parametrize("name,slices,sq,sk", [c for c in _expected_native() if c[0] in (
    "varlen-with-gap", "empty-rows", "remote-stage", "varlen-causal")], ids=lambda x: x if isinstance(x, str) else "")
def test_documents_without_keys_have_no_used_rows(name, slices, sq, sk):
    """FA4 computes a document's first ``seqused_q`` rows: the rows left out are exactly the rows
    that see no key, and a mask without such rows passes no seqused_q at all."""
    native = _recognise(*slices, sq, sk)
    empty = ~make_dense_mask(*slices, sq, sk).any(1)
    if not empty.any():
        assert native.seqused_q is None
        return
    cq = native.cu_seqlens_q.tolist()
    computed = torch.zeros(sq, dtype=torch.bool)
    for a, n in zip(cq[:-1], native.seqused_q.tolist()):
        computed[a:a + n] = True
    assert torch.equal(computed, ~empty), name
    assert any(t is native.seqused_q for t in native.device_tensors)
    assert native.fa4_kwargs()["seqused_q"] is native.seqused_q


def _window_documents(lens, left):
    """Documents back to back on the diagonal, row r of a document starting at a seeing
    [max(a, r - left), r + 1), one slice per row."""
    qr, kr, a = [], [], 0
    for n in lens:
        for r in range(a, a + n):
            qr.append([r, r + 1]), kr.append([max(a, r - left), r + 1])
        a += n
    return qr, kr, [0] * len(qr)


def test_sliding_windows_in_documents_run_natively_unless_switched_off(monkeypatch):
    from magi_ffa.backends.fa4 import native as nat

    cases = {"varlen-window": ([5, 9, 10], 3),
             # a rotated sequential dispatch's wrap rank: the sequence's start (shorter than the
             # window: causal), then its end (the window cut at the piece's first row)
             "rotated-host-stage": ([4, 20], 6)}
    for name, (lens, left) in cases.items():
        slices, s = _window_documents(lens, left), sum(lens)
        monkeypatch.setattr(nat, "VARLEN_WINDOWS", False)
        assert _recognise(*slices, s, s) is None, name  # switched off: block lists
        monkeypatch.setattr(nat, "VARLEN_WINDOWS", True)  # the default
        native = _recognise(*slices, s, s)
        assert native is not None and native.window_left == left and native.window_right == 0, name
        assert native.cu_seqlens_q.tolist() == [0, *np.cumsum(lens).tolist()], name
        assert torch.equal(_means(native, s, s), make_dense_mask(*slices, s, s)), name


def test_window_documents_that_differ_keep_the_block_lists(monkeypatch):
    from magi_ffa.backends.fa4 import native as nat

    monkeypatch.setattr(nat, "VARLEN_WINDOWS", True)
    a, b = _window_documents([8], 2), _window_documents([8], 3)  # two windows in one mask
    two = (a[0] + [[q + 8, q + 9] for q, _ in b[0]], a[1] + [[k0 + 8, k1 + 8] for k0, k1 in b[1]], a[2] + b[2])
    assert _recognise(*two, 16, 16) is None
    qr, kr, ts = _window_documents([6, 6], 2)
    kr[3] = [kr[3][0] + 1, kr[3][1]]  # one row's window narrower
    assert _recognise(qr, kr, ts, 12, 12) is None
    rng = random.Random(5)
    seen = 0
    for _ in range(300):  # random documents and windows, some rows nudged: recognised means the dense mask
        lens = [rng.randint(1, 7) for _ in range(rng.randint(1, 4))]
        qr, kr, ts = _window_documents(lens, rng.randint(1, 5))
        if rng.random() < 0.5:
            r = rng.randrange(len(kr))
            kr[r] = [min(kr[r][1] - 1, kr[r][0] + rng.choice([-1, 1])) if kr[r][0] > 0 else kr[r][0], kr[r][1]]
        s = sum(lens)
        native = _recognise(qr, kr, ts, s, s)
        if native is not None:
            seen += 1
            assert torch.equal(_means(native, s, s), make_dense_mask(qr, kr, ts, s, s)), (lens, kr)
    assert seen > 100


def test_documents_of_one_length_run_as_a_batch_unless_switched_off(monkeypatch):
    from magi_ffa.backends.fa4 import native as nat

    for causal in (0, 1):
        slices = varlen_slices([6] * 4, causal)
        native = _recognise(*slices, 24, 24)
        assert native.batch == 4 and not native.varlen and native.causal == bool(causal)
        assert torch.equal(_means(native, 24, 24), make_dense_mask(*slices, 24, 24))
        monkeypatch.setattr(nat, "BATCHED_DOCUMENTS", False)
        native = _recognise(*slices, 24, 24)
        assert native.batch == 1 and native.varlen and native.cu_seqlens_q.tolist() == [0, 6, 12, 18, 24]
        monkeypatch.setattr(nat, "BATCHED_DOCUMENTS", True)  # the default
    # not one length, a gap, a shorter last document, keys beside the rows: varlen documents
    for slices, sq, sk in ((varlen_slices([6, 6, 5], 1), 17, 17),
                           (([[0, 6], [12, 18]], [[0, 6], [12, 18]], [1, 1]), 18, 18),
                           (([[0, 6], [6, 12]], [[0, 6], [7, 13]], [0, 0]), 12, 13)):
        native = _recognise(*slices, sq, sk)
        assert native is not None and native.batch == 1 and native.varlen
        assert torch.equal(_means(native, sq, sk), make_dense_mask(*slices, sq, sk))


def test_a_native_mask_never_builds_block_lists():
    """The translation of a mask FA4 runs natively (a training batch's varlen documents) skips the
    tile classes and block lists, half of its host time at 32k rows; a mask that needs them builds
    them on first use, the same as ever."""
    from magi_ffa.backends.fa4.block_sparse import build_slice_block_mask

    qr, kr, ts = varlen_slices([100, 37, 250], 1)
    native = build_slice_block_mask(qr, kr, ts, 387, 387, (16, 16))
    assert native.native is not None and native.device_tensors == native.native.device_tensors
    assert not {"_classes", "fwd", "bwd", "lo", "hi"} & set(vars(native))
    qr, kr, ts = [[0, 40], [40, 64]], [[8, 30], [0, 64]], [1, 2]  # two diagonals: not native
    lists = build_slice_block_mask(qr, kr, ts, 64, 64, (16, 16))
    assert lists.native is None and "fwd" not in vars(lists)
    dense = make_dense_mask(qr, kr, ts, 64, 64)
    for i in range(4):
        for j in range(4):
            tile = dense[16 * i:16 * (i + 1), 16 * j:16 * (j + 1)]
            assert bool(lists.full[i, j]) == bool(tile.all()) and bool(lists.partial[i, j]) == bool(
                tile.any() and not tile.all())
    assert len(lists.device_tensors) == 10 and int(lists.fwd.full_cnt.sum()) == int(lists.full.sum())
