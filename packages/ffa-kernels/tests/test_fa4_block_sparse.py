"""The FA4 backend's mask translation, exhaustively on small shapes against the dense mask."""

from __future__ import annotations

import random

import pytest
import torch
from magi_ffa.backends.fa4.block_sparse import build_slice_block_mask, row_intervals
from magi_ffa.testing import make_dense_mask, overlapping_slices, random_slices, varlen_slices


def _cases():
    rng = random.Random(0)
    for case in range(120):
        sq, sk = rng.randint(1, 40), rng.randint(1, 40)
        n = rng.randint(0, 6)
        if case % 3 == 0:
            slices = random_slices(rng, sq, sk, n)
        elif case % 3 == 1:
            slices = overlapping_slices(rng, sq, sk, n)
        else:
            lens = [rng.randint(1, 9) for _ in range(rng.randint(1, 5))]
            slices = varlen_slices(lens, rng.randrange(4))
            sq = sk = sum(lens)
        block = (rng.choice([1, 2, 3, 4, 8]), rng.choice([1, 2, 4, 5, 8]))
        yield pytest.param(sq, sk, *slices, block, id=f"case{case}-{sq}x{sk}-b{block[0]}x{block[1]}")


def _unpack(cnt, idx, rows, cols):
    out = torch.zeros(rows, cols, dtype=torch.bool)
    for r in range(rows):
        c = int(cnt[0, 0, r])
        out[r, idx[0, 0, r, :c].long()] = True
        assert torch.all(idx[0, 0, r, :c][1:] > idx[0, 0, r, :c][:-1]), "indices not ascending"
    return out


@pytest.mark.parametrize("sq,sk,qr,kr,ts,block", list(_cases()))
def test_translation_matches_dense_mask(sq, sk, qr, kr, ts, block):
    dense = make_dense_mask(qr, kr, ts, sq, sk)
    bm = build_slice_block_mask(qr, kr, ts, sq, sk, block)
    # the mask function reproduces every cell
    q_idx = torch.arange(sq)[:, None]
    k_idx = torch.arange(sk)[None, :]
    assert torch.equal(bm.cell_mask(q_idx, k_idx), dense)
    # K is minimal: the largest number of disjoint visible runs in one row
    padded = torch.nn.functional.pad(dense.int(), (1, 0))
    runs = (padded[:, 1:] > padded[:, :-1]).sum(-1)
    assert bm.num_intervals == max(1, int(runs.max()) if sq else 1)
    # every tile is classified by its content: full, partial, or skipped
    nbm, nbn = -(-sq // block[0]), -(-sk // block[1])
    assert bm.partial.shape == bm.full.shape == (nbm, nbn)
    for i in range(nbm):
        for j in range(nbn):
            tile = dense[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]]
            assert bool(bm.full[i, j]) == bool(tile.all()), (i, j)
            assert bool(bm.partial[i, j]) == bool(tile.any() and not tile.all()), (i, j)
    # rows that see nothing, and the list of the others (what merges run over), from the dense mask
    sees = dense.any(1)
    if sees.all():
        assert bm.empty_rows is None and bm.seeing_rows is None
    else:
        assert torch.equal(bm.empty_rows, ~sees)
        assert bm.seeing_rows.dtype == torch.int32 and bm.seeing_rows.tolist() == sees.nonzero().flatten().tolist()
    # the packed lists say the same, forward per q block and backward per k block
    assert torch.equal(_unpack(bm.fwd.mask_cnt, bm.fwd.mask_idx, nbm, nbn), bm.partial)
    assert torch.equal(_unpack(bm.fwd.full_cnt, bm.fwd.full_idx, nbm, nbn), bm.full)
    assert torch.equal(_unpack(bm.bwd.mask_cnt, bm.bwd.mask_idx, nbn, nbm), bm.partial.T)
    assert torch.equal(_unpack(bm.bwd.full_cnt, bm.bwd.full_idx, nbn, nbm), bm.full.T)
    # int32 and packed row-major, size-1 dimensions included: FA4 checks the last stride is 1
    # (torch's is_contiguous() does not look at the strides of size-1 dimensions)
    for t in (bm.lo, bm.hi, *(getattr(lists, f) for lists in (bm.fwd, bm.bwd)
                              for f in ("mask_cnt", "mask_idx", "full_cnt", "full_idx"))):
        assert t.dtype == torch.int32 and t.stride() == torch.empty(t.shape).stride(), t.stride()


def test_common_masks_need_one_interval_per_row():
    for t in range(4):
        qr, kr, ts = varlen_slices([100, 37, 250], t)
        lo, hi = row_intervals(qr, kr, ts, 387)
        assert lo.shape == (1, 387)
    # sliding window as FFA slices: a causal band (bi-causal) plus the full part below it
    lo, hi = row_intervals([[0, 64], [64, 256]], [[0, 64], [0, 256]], [1, 3], 256)
    assert lo.shape[0] == 1


def test_two_disjoint_runs_per_row():
    # a shared prefix plus a causal block further right: two separate key runs per row
    lo, hi = row_intervals([[8, 16], [8, 16]], [[0, 2], [8, 16]], [0, 1], 16)
    assert lo.shape == (2, 16)
    assert lo[:, 8].tolist() == [0, 8] and hi[:, 8].tolist() == [2, 9]
    assert lo[:, 0].tolist() == [0, 0] and hi[:, 0].tolist() == [0, 0]  # uncovered row: empty


def test_full_tiles_at_a_short_last_block():
    bm = build_slice_block_mask([[0, 10]], [[0, 10]], [0], 10, 10, (4, 4))
    assert bm.full.all() and not bm.partial.any()


def test_empty_mask_and_bad_block_size():
    bm = build_slice_block_mask([], [], [], 5, 7, (2, 2))
    assert not bm.full.any() and not bm.partial.any() and int(bm.fwd.mask_cnt.sum()) == 0
    with pytest.raises(ValueError, match="block_size"):
        build_slice_block_mask([[0, 4]], [[0, 4]], [0], 4, 4, (0, 4))


def test_uploads_take_host_data_and_pack_every_stride():
    """magi_ffa.transfer.to_device: numpy or CPU input, a packed row-major result whose size-1
    dimensions have canonical strides too (FA4 checks the last stride); device input is refused
    (it would be read back to the host)."""
    import numpy as np
    import pytest
    from magi_ffa.transfer import to_device

    strided = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::3][None]  # [1, 4, 2], not contiguous
    t = to_device(strided, None)
    assert t.stride() == (8, 2, 1) and t.tolist() == strided.tolist()
    one = to_device(torch.arange(5, dtype=torch.int32)[None, None, :, None], None)
    assert one.stride() == (5, 5, 1, 1)
    with pytest.raises(ValueError, match="host data"):
        to_device(torch.empty(2, device="meta"), None)


@pytest.mark.parametrize("seed", range(10))
def test_slices_on_disjoint_rows_fill_the_same_intervals_as_the_row_expansion(monkeypatch, seed):
    """row_intervals' slice-by-slice fill (slices on disjoint rows, e.g. varlen documents) gives what
    expanding every row gives: all four types, keys shorter and longer than queries, gaps, empty
    slices, any order; overlapping rows still merge through the expansion."""
    import numpy as np
    from magi_ffa.backends.fa4 import block_sparse

    rng = np.random.default_rng(seed)
    sq = 300
    cuts = np.sort(rng.choice(np.arange(1, sq), size=12, replace=False))
    edges = [0, *cuts.tolist(), sq]
    qr, kr, ts = [], [], []
    for a, b in zip(edges, edges[1:]):
        if rng.random() < 0.2:  # rows no slice covers
            continue
        ks = int(rng.integers(0, 200))
        qr.append([a, b])
        kr.append([ks, ks + int(rng.integers(0, 2 * (b - a) + 2))])  # empty, shorter or longer keys
        ts.append(int(rng.integers(0, 4)))
    perm = rng.permutation(len(qr))
    qr, kr, ts = [qr[i] for i in perm], [kr[i] for i in perm], [ts[i] for i in perm]
    filled = row_intervals(qr, kr, ts, sq)
    monkeypatch.setattr(block_sparse, "FILL_SLICES_MAX", 0)  # every row expanded
    expanded = row_intervals(qr, kr, ts, sq)
    assert all(np.array_equal(f, e) and f.dtype == e.dtype for f, e in zip(filled, expanded))
    assert (filled[1] > filled[0]).any() and (filled[1] <= filled[0]).any()  # rows that see keys, and rows that do not
    # a slice overlapping another's rows is merged by the expansion whichever the threshold
    monkeypatch.setattr(block_sparse, "FILL_SLICES_MAX", 512)
    lo, hi = row_intervals([*qr, [0, sq]], [*kr, [0, 1]], [*ts, 0], sq)
    monkeypatch.setattr(block_sparse, "FILL_SLICES_MAX", 0)
    lo2, hi2 = row_intervals([*qr, [0, sq]], [*kr, [0, 1]], [*ts, 0], sq)
    assert np.array_equal(lo, lo2) and np.array_equal(hi, hi2)
