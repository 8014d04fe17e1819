"""magi_attention.visualize: exact dense masks, stage maps that partition the mask, PNG output."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _blocks import DOCS
from magi_attention.errors import MagiAttentionError
from magi_attention.visualize import (
    dense_mask,
    main,
    parse_slices,
    plan_mask,
    rank_map,
    render_mask,
    stage_map,
)
from magi_ffa.testing import make_dense_mask


def _random_mask(rng: random.Random, total: int, n: int):
    qr, kr, ts = [], [], []
    for _ in range(n):
        qs = rng.randrange(0, total - 1)
        ks = rng.randrange(0, total - 1)
        qr.append((qs, rng.randrange(qs + 1, total + 1)))
        kr.append((ks, rng.randrange(ks + 1, total + 1)))
        ts.append(rng.randrange(4))
    return qr, kr, ts


@pytest.mark.parametrize("seed", range(6))
def test_dense_mask_matches_ffa_reference(seed):
    rng = random.Random(seed)
    total = rng.choice([17, 40, 63])
    qr, kr, ts = _random_mask(rng, total, rng.randint(1, 4))
    ref = make_dense_mask(torch.tensor(qr), torch.tensor(kr), torch.tensor(ts), total, total)
    assert np.array_equal(dense_mask(qr, kr, ts, total) > 0, ref.numpy())


@pytest.mark.parametrize("seed,cp,degree", [(0, 2, 1), (1, 2, 2), (2, 3, 2), (3, 4, 3), (4, 4, 1)])
def test_stage_maps_partition_the_mask(seed, cp, degree):
    """Over all ranks and stages every visible cell is computed exactly once, by its row's owner."""
    rng = random.Random(seed)
    total = rng.choice([50, 96, 131])
    # document-style slices (cell-disjoint) plus one random extra document pair
    cuts = sorted(rng.sample(range(1, total), 3))
    bounds = [0, *cuts, total]
    qr = [(s, e) for s, e in zip(bounds, bounds[1:])]
    kr = [(s, e) for s, e in zip(bounds, bounds[1:])]
    ts = [rng.randrange(4) for _ in qr]
    qr2, kr2, ts2, padded, meta, plan = plan_mask(qr, kr, ts, total, cp, 4, degree=degree,
                                                  min_chunk_size=4)
    assert padded % (4 * cp) == 0 and padded >= total
    mask = dense_mask(qr2, kr2, ts2, padded) > 0
    owner = rank_map(meta)
    assert sorted(np.bincount(owner, minlength=cp).tolist()) == [padded // cp] * cp
    seen = np.zeros_like(mask, dtype=int)
    for r in range(cp):
        st = stage_map(plan.rank_plan(r), padded)
        assert (st <= plan.num_stages).all()
        assert not ((st >= 0) & (owner[:, None] != r)).any(), "rank computes rows it does not own"
        seen += st >= 0
    assert np.array_equal(seen, mask.astype(int))


def test_render_mask_writes_png(tmp_path):
    path = tmp_path / "m.png"
    fig = render_mask([(0, 30), (30, 64)], [(0, 30), (0, 64)], ["causal", "bi_causal"], 64,
                      cp_size=2, chunk_size=8, degree=2, path=path, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) >= 4  # mask, partition, one stage panel per rank
    single = render_mask([(0, 10)], [(0, 10)], "causal", 10)
    assert len([a for a in single.axes if a.get_visible() and a.has_data()]) == 1


def test_bad_input_is_a_clear_error():
    with pytest.raises(MagiAttentionError, match="render_mask.*total_seqlen=10"):
        render_mask([(0, 20)], [(0, 20)], "full", 10)
    with pytest.raises(MagiAttentionError, match="needs chunk_size"):
        render_mask([(0, 8)], [(0, 8)], "full", 8, cp_size=2)
    with pytest.raises(MagiAttentionError, match="cp_size"):
        plan_mask([(0, 8)], [(0, 8)], "full", 8, 0, 4)
    with pytest.raises(MagiAttentionError, match="not a mask type"):
        dense_mask([(0, 8)], [(0, 8)], "diagonal", 8)
    with pytest.raises(MagiAttentionError, match="QS:QE/KS:KE/TYPE"):
        parse_slices("0:8/0:8")
    assert parse_slices("0:8/0:4/causal, 8:9/0:9/full") == (
        [(0, 8), (8, 9)], [(0, 4), (0, 9)], ["causal", "full"])


def test_cli_show_mask(tmp_path, capsys):
    from magi_attention.cli import main as cli_main

    out = tmp_path / "sq.png"
    assert cli_main(["show-mask", "--mask", "shared-question", "--seqlen", "96",
                     "--world-size", "2", "--chunk-size", "8", "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["--slices", "0:10/0:5/foo", "-o", str(tmp_path / "x.png")]) == 2
    assert "not a mask type" in capsys.readouterr().err


def test_committed_pictures_exist_and_are_used():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mmp", DOCS / "scripts" / "make_mask_pictures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    page = (DOCS / "masks.md").read_text()
    names = [f"type_{t}.png" for t in mod.TYPES] + [f"{c}.png" for c in mod.COMPOSITES]
    for name in names:
        png = DOCS / "img" / "masks" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 100_000, name
        assert f"img/masks/{name}" in page, name
