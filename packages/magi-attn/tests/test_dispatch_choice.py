"""CostAwareDispatchAlg: the cheapest of several dispatch solutions by planned per-rank work.

Pure functions of the mask (no process group): each candidate is solved and planned for every
rank. Under the area model the choice must be the candidate whose busiest rank has the least host +
weighted remote area; a wrong weighting or a wrong rank would pick another candidate on these
masks. Coarser chunk factors join the candidates. The tile model (the default) counts the tiles a
kernel visits, checked cell by cell against a dense mask, and overrides the area choice only by a
margin.
"""

import numpy as np
import pytest
from magi_attention import _compat
from magi_attention.config import (
    UNTURNED_CANDIDATES,
    CostAwareDispatchAlg,
    DistAttnConfig,
    SequentialDispatchAlg,
)
from magi_attention.errors import MagiAttentionError
from magi_attention.meta import dispatch_choice
from magi_attention.meta.dispatch_choice import (
    _tiles_by_call,
    planned_time,
    planned_work,
    slice_tiles,
    solve_dispatch,
)
from magi_attention.runtime.runtime_mgr import _overlap_params

T, CHUNK = 4096, 128


def _masks():
    window = 512
    sliding = ([[0, window]] + [[s, s + CHUNK] for s in range(window, T, CHUNK)],
               [[0, window]] + [[s + CHUNK - window, s + CHUNK] for s in range(window, T, CHUNK)],
               [1] + [3] * ((T - window) // CHUNK))
    causal = ([[0, T]], [[0, T]], [1])
    # long-tailed causal documents (one draw of bench_dist's generator at this size)
    cu = [0, 141, 323, 779, 1724, 1898, 2059, 2249, 2389, 2706, 2841, 3033, T]
    docs = ([[a, b] for a, b in zip(cu, cu[1:])], [[a, b] for a, b in zip(cu, cu[1:])], [1] * (len(cu) - 1))
    return {"sliding window": sliding, "causal": causal, "documents": docs}


def _costs(mask, cp, remote_cost):
    """Busiest rank's planned work of each single candidate."""
    qr, kr, tm = mask
    params = _overlap_params(DistAttnConfig())
    out = {}
    for name in UNTURNED_CANDIDATES:
        meta = _compat.solver.make_dispatch_meta(qr, kr, tm, T, CHUNK, cp, name)
        plan = _compat.solver.make_dist_attn_plan(qr, kr, tm, meta, params)
        out[name] = (max(planned_work(plan, cp, remote_cost)), meta)
    return out


@pytest.mark.parametrize("cp", [2, 4])
@pytest.mark.parametrize("mask, expected", [("sliding window", "sequential"), ("causal", "min_heap")])
def test_cost_aware_picks_the_least_loaded_plan(cp, mask, expected):
    qr, kr, tm = _masks()[mask]
    alg = CostAwareDispatchAlg(chunk_factors=(1,), candidates=UNTURNED_CANDIDATES, cost_model="area")
    costs = _costs(_masks()[mask], cp, alg.remote_cost)
    best = min(costs, key=lambda n: costs[n][0])
    assert best == expected, {n: c for n, (c, _) in costs.items()}
    chosen = solve_dispatch(alg, qr, kr, tm, T, CHUNK, cp, _overlap_params(DistAttnConfig()))
    assert [list(p) for p in chosen.partitions] == [list(p) for p in costs[expected][1].partitions]
    # the choice differs between the two masks: the cost decides, not a fixed algorithm
    other = "min_heap" if expected == "sequential" else "sequential"
    assert [list(p) for p in chosen.partitions] != [list(p) for p in costs[other][1].partitions]


def test_one_candidate_is_that_algorithm_and_bad_arguments_raise():
    qr, kr, tm = _masks()["causal"]
    params = _overlap_params(DistAttnConfig())
    only = solve_dispatch(CostAwareDispatchAlg(candidates=("sequential",)), qr, kr, tm, T, CHUNK, 2, params)
    seq = solve_dispatch(SequentialDispatchAlg(), qr, kr, tm, T, CHUNK, 2, params)
    assert [list(p) for p in only.partitions] == [list(p) for p in seq.partitions]
    with pytest.raises(MagiAttentionError, match="candidates"):
        CostAwareDispatchAlg(candidates=("fastest",))
    with pytest.raises(MagiAttentionError, match="candidates"):
        CostAwareDispatchAlg(candidates=())
    with pytest.raises(MagiAttentionError, match="remote_cost"):
        CostAwareDispatchAlg(remote_cost=0.0)
    with pytest.raises(MagiAttentionError, match="cost_model"):
        CostAwareDispatchAlg(cost_model="seconds")


def _grid_choice(mask, cp, alg):
    """The (chunk, candidate) of least busiest work, factors outer and candidates inner, first on
    ties: what solve_dispatch must return, computed here from the plans."""
    qr, kr, tm = mask
    params = _overlap_params(DistAttnConfig())
    best = None
    for f in alg.chunk_factors:
        if T % (CHUNK * f * cp):
            continue
        for name in alg.candidates:
            meta = _compat.solver.make_dispatch_meta(qr, kr, tm, T, CHUNK * f, cp, name)
            plan = _compat.solver.make_dist_attn_plan(qr, kr, tm, meta, params)
            work = max(planned_work(plan, cp, alg.remote_cost))
            if best is None or work < best[0]:
                best = (work, meta)
    return best[1]


@pytest.mark.parametrize("cp", [2, 4])
def test_chunk_factors_join_the_candidates(cp):
    mask = _masks()["documents"]
    # the grid below solves each with magi_solver and weighs it by area
    alg = CostAwareDispatchAlg(candidates=UNTURNED_CANDIDATES, cost_model="area")
    params = _overlap_params(DistAttnConfig())
    chosen = solve_dispatch(alg, *mask, T, CHUNK, cp, params)
    want = _grid_choice(mask, cp, alg)
    assert chosen.chunk_size == want.chunk_size
    assert [list(p) for p in chosen.partitions] == [list(p) for p in want.partitions]
    # on these documents a coarser chunking is cheaper than every candidate at the key's chunk size
    fine = solve_dispatch(CostAwareDispatchAlg(chunk_factors=(1,), cost_model="area"), *mask, T, CHUNK, cp, params)
    assert fine.chunk_size == CHUNK
    assert chosen.chunk_size > CHUNK
    plan = lambda m: _compat.solver.make_dist_attn_plan(*mask, m, params)  # noqa: E731
    assert max(planned_work(plan(chosen), cp, alg.remote_cost)) < max(planned_work(plan(fine), cp, alg.remote_cost))


def test_chunk_factors_that_do_not_divide_are_skipped_and_bad_ones_raise():
    qr, kr, tm = _masks()["documents"]
    params = _overlap_params(DistAttnConfig())
    # 3 * CHUNK * 2 does not divide T: the key's chunk size is used
    only_odd = solve_dispatch(CostAwareDispatchAlg(chunk_factors=(3,)), qr, kr, tm, T, CHUNK, 2, params)
    assert only_odd.chunk_size == CHUNK
    for bad in ((), (0,), (1, -2), [1, 2], (True,), (1.5,)):
        with pytest.raises(MagiAttentionError, match="chunk_factors"):
            CostAwareDispatchAlg(chunk_factors=bad)


@pytest.mark.parametrize("cp", [2, 3, 4])
def test_rotated_sequential_turns_the_split(cp):
    from magi_attention.meta.dispatch_choice import rotated_sequential

    total = T - T % (CHUNK * cp)
    seq = _compat.solver.make_dispatch_meta([[0, total]], [[0, total]], [1], total, CHUNK, cp, "sequential")
    n, m = seq.num_chunks, seq.num_chunks // cp
    for shift in (0, 1, m - 1):
        turned = rotated_sequential(seq, shift)
        parts = [list(p) for p in turned.partitions]
        assert sorted(c for p in parts for c in p) == list(range(n))  # every chunk once
        for r, p in enumerate(parts):  # m chunks per rank: [shift + r*m, shift + (r+1)*m) mod n, ascending
            assert p == sorted((shift + r * m + j) % n for j in range(m))
        # a valid dispatch: the permutation and its inverse agree
        perm, unperm = list(turned.perm_idxs), list(turned.unperm_idxs)
        assert [perm[i] for i in unperm] == list(range(len(perm)))
    assert [list(p) for p in rotated_sequential(seq, 0).partitions] == [list(p) for p in seq.partitions]


def test_a_rotation_balances_a_sliding_window_at_cp2_and_leaves_causal_alone():
    params = _overlap_params(DistAttnConfig())
    with_rot = CostAwareDispatchAlg(chunk_factors=(1,), cost_model="area")  # the default candidates include the turn
    assert "rotated_sequential" in with_rot.candidates
    plain = CostAwareDispatchAlg(chunk_factors=(1,), candidates=UNTURNED_CANDIDATES, cost_model="area")

    def busiest(mask, alg):
        meta = solve_dispatch(alg, *mask, T, CHUNK, 2, params)
        return max(planned_work(_compat.solver.make_dist_attn_plan(*mask, meta, params), 2, alg.remote_cost)), meta

    sliding = _masks()["sliding window"]
    (w_rot, m_rot), (w_seq, _) = busiest(sliding, with_rot), busiest(sliding, plain)
    assert w_rot < w_seq  # the sequential rank with the window's light start no longer idles
    assert any(0 in p and m_rot.num_chunks - 1 in p for p in m_rot.partitions)  # one holds start and end
    causal = _masks()["causal"]
    assert [list(p) for p in busiest(causal, with_rot)[1].partitions] == \
        [list(p) for p in busiest(causal, plain)[1].partitions]


def test_rotated_sequential_with_one_chunk_per_rank_is_sequential():
    params = _overlap_params(DistAttnConfig())
    alg = CostAwareDispatchAlg(candidates=("rotated_sequential",), chunk_factors=(1,))
    meta = solve_dispatch(alg, [[0, 16]], [[0, 16]], [1], 16, 8, 2, params)  # 2 chunks, 2 ranks: no turn
    assert [list(p) for p in meta.partitions] == [[0], [1]]
    # one rank: whatever the candidates, the sequential solution (the solver knows no rotation)
    one = solve_dispatch(alg, [[0, 16]], [[0, 16]], [1], 16, 16, 1, params)
    assert [list(p) for p in one.partitions] == [[0]]


@pytest.mark.parametrize("cp", [2, 3])
def test_a_refined_dispatch_keeps_every_token_where_it_was(cp):
    """refined_dispatch_meta: chunks cut finer, each token on the same rank at the same local place."""
    docs = [[0, 40 * cp], [40 * cp, 70 * cp], [70 * cp, 96 * cp]]  # min_heap scatters their chunks
    meta = _compat.solver.make_dispatch_meta(docs, docs, [1, 1, 1], 96 * cp, 24, cp, "min_heap")
    assert any(list(p) != list(range(p[0], p[0] + len(p))) for p in meta.partitions)
    fine = dispatch_choice.refined_dispatch_meta(meta, 8)
    assert fine.chunk_size == 8 and fine.num_chunks == 12 * cp
    for r in range(cp):
        assert np.array_equal(fine.position_ids(r), meta.position_ids(r)), r
    assert sum(fine.__getstate__()[5]) == sum(meta.__getstate__()[5])  # the chunk areas split, not lost
    assert dispatch_choice.refined_dispatch_meta(meta, 24) is meta
    with pytest.raises(MagiAttentionError, match="chunk_size=16 must divide"):
        dispatch_choice.refined_dispatch_meta(meta, 16)


# ------------------------------------------------------------------------------------ the tile model
def _dense_tiles(q, k, t, tile):
    """(tiles, q tiles) of one slice counted on its dense mask, tiled from the slice's own start."""
    lq, lk = q[1] - q[0], k[1] - k[0]
    if lq <= 0 or lk <= 0:
        return 0, 0
    r = np.arange(lq)[:, None]
    c = np.arange(lk)[None, :]
    lo = r if t in (2, 3) else 0  # inverse causal and bi-causal: top-left aligned start
    hi = lk - lq + r + 1 if t in (1, 3) else lk  # causal and bi-causal: bottom-right aligned end
    visible = (c >= lo) & (c < hi)
    nq, nk = -(-lq // tile), -(-lk // tile)
    padded = np.zeros((nq * tile, nk * tile), dtype=bool)
    padded[:lq, :lk] = visible
    return int(padded.reshape(nq, tile, nk, tile).any(axis=(1, 3)).sum()), nq


def test_slice_tiles_match_a_dense_count_for_every_mask_type():
    rng = np.random.default_rng(7)
    for tile in (4, 16):
        q, k, t = [], [], []
        for _ in range(60):  # slices of all four types, lq above, below and at lk, some empty
            a, c = rng.integers(0, 50, size=2)
            q.append([a, a + int(rng.integers(0, 70))])
            k.append([c, c + int(rng.integers(0, 70))])
            t.append(int(rng.integers(0, 4)))
        want = [_dense_tiles(qi, ki, ti, tile) for qi, ki, ti in zip(q, k, t)]
        assert slice_tiles(q, k, t, tile) == (sum(w[0] for w in want), sum(w[1] for w in want))
        for i in range(len(q)):  # and slice by slice: no slice borrows another's tiles
            assert slice_tiles([q[i]], [k[i]], [t[i]], tile) == want[i], (q[i], k[i], t[i])
    assert slice_tiles(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), 8) == (0, 0)


def test_slice_tiles_closed_form_matches_the_dense_count_on_a_full_grid():
    """Every (lq, lk) up to 3 tiles and a bit, every type, three tile sizes: the closed form per slice
    (``_slices_tiles``) against the dense mask, slice by slice."""
    for tile in (1, 3, 8):
        top = 3 * tile + 2
        q, k, t, want = [], [], [], []
        for lq in range(top):
            for lk in range(top):
                for ty in range(4):
                    q.append([5, 5 + lq])
                    k.append([2, 2 + lk])
                    t.append(ty)
                    want.append(_dense_tiles(q[-1], k[-1], ty, tile))
        tiles, q_tiles = _tiles_by_call(q, k, t, np.arange(len(t)), len(t), tile)  # one call per slice
        got = [(int(a), int(b)) for a, b in zip(tiles, q_tiles)]
        bad = [(qi, ki, ti, g, w) for qi, ki, ti, g, w in zip(q, k, t, got, want) if g != w]
        assert not bad, bad[:5]


def test_tiles_by_call_count_each_call_as_slice_tiles_does():
    rng = np.random.default_rng(7)
    calls = []
    for n in (5, 0, 1, 17, 3):  # a call without slices among them
        q = np.sort(rng.integers(0, 300, size=(n, 2)), axis=1)
        k = np.sort(rng.integers(0, 300, size=(n, 2)), axis=1)  # some empty (equal ends), some overlapping
        calls.append((q, k, rng.integers(0, 4, size=n)))
    q, k, t = (np.concatenate([c[i] for c in calls]) for i in range(3))
    of = np.repeat(np.arange(len(calls)), [len(c[2]) for c in calls])
    tiles, q_tiles = _tiles_by_call(q, k, t, of, len(calls), 16)
    assert [(int(a), int(b)) for a, b in zip(tiles, q_tiles)] == [slice_tiles(*c, 16) for c in calls]
    assert sum(tiles) > 0 and tiles[1] == q_tiles[1] == 0
    none = np.zeros((0, 2), dtype=np.int64)
    assert [len(x) for x in _tiles_by_call(none, none, none[:, 0], none[:, 0], 0)] == [0, 0]


def test_planned_time_counts_every_call_and_received_token():
    qr, kr, tm = _masks()["documents"]
    params = _overlap_params(DistAttnConfig())
    meta = _compat.solver.make_dispatch_meta(qr, kr, tm, T, CHUNK, 2, "min_heap")
    plan = _compat.solver.make_dist_attn_plan(qr, kr, tm, meta, params)
    for r, cost in enumerate(planned_time(plan, 2)):
        rp = plan.rank_plan(r)
        want = 0.0
        for calc in [rp.host_calc, *(s.calc for s in rp.stages)]:
            if calc.area:
                tiles, q_tiles = slice_tiles(*calc.as_arrays())
                want += tiles + dispatch_choice.ROW_TILE_COST * q_tiles + dispatch_choice.CALL_COST
        want += dispatch_choice.RECV_TOKEN_COST * sum(int(s.num_recv_tokens) for s in rp.stages)
        assert cost == pytest.approx(want)
        assert any(s.num_recv_tokens for s in rp.stages)  # the received tokens term is exercised


@pytest.mark.parametrize("cp", [2, 4])
def test_plans_read_flat_from_the_solver_or_walked_give_the_same_costs(monkeypatch, cp):
    """The solver's flat_calls (interface 1.1) and the walk over an older solver's plan objects
    read the same calls, so both give the same work and time, bit for bit."""
    from magi_attention.meta.dispatch_choice import _PlanCalls, _times

    if not _compat.offers(_compat.solver, ">=1.1"):
        pytest.skip("magi_solver without DistAttnPlan.flat_calls (< 1.1)")
    params = _overlap_params(DistAttnConfig())
    plans = []
    for mask in _masks().values():
        for alg in ("min_heap", "sequential"):
            meta = _compat.solver.make_dispatch_meta(*mask, T, CHUNK, cp, alg)
            plans.append(_compat.solver.make_dist_attn_plan(*mask, meta, params))
    flat = [_PlanCalls(p, cp) for p in plans]
    monkeypatch.setattr(_compat.solver, "INTERFACE_VERSION", "1.0")
    walked = [_PlanCalls(p, cp) for p in plans]
    for a, b in zip(flat, walked):
        for field in ("area", "recv", "q", "k", "types", "call"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
        assert a.work(1.75) == b.work(1.75)
    assert _times(flat) == _times(walked)
    assert any((a.area == 0).any() for a in flat)  # empty calls (left out of the slices) are exercised


def test_costs_of_many_plans_at_once_equal_each_alone():
    """The choice weighs all its candidates in one numpy pass, their calls padded to the most
    stages: plans of 1 to 3 stages (and empty calls) weighed together give each one's own costs,
    bit for bit."""
    from magi_attention.config import OverlapConfig
    from magi_attention.meta.dispatch_choice import _PlanCalls, _times, _works

    pcs = []
    for degree in (1, 2, 3):
        params = _overlap_params(DistAttnConfig(overlap_config=OverlapConfig(degree=degree)))
        for mask in _masks().values():
            meta = _compat.solver.make_dispatch_meta(*mask, T, CHUNK, 2, "min_heap")
            pcs.append(_PlanCalls(_compat.solver.make_dist_attn_plan(*mask, meta, params), 2))
    assert len({pc.area.shape for pc in pcs}) > 1  # the padding is exercised
    assert _times(pcs) == [_times([pc])[0] for pc in pcs]
    assert _works([pc.area for pc in pcs], 1.75).tolist() == [pc.work(1.75) for pc in pcs]
    host, remote = pcs[-1].area[:, 0], pcs[-1].area[:, 1:].sum(1)  # the work's definition, in Python floats
    assert pcs[-1].work(1.75) == [float(h) + 1.75 * float(r) for h, r in zip(host.tolist(), remote.tolist())]


def _long_tailed_documents(total):
    """Causal documents drawn as bench_dist draws them (``benchmarks/_common.doc_lengths``): a few
    long ones among many short ones, the shape that fooled the area model at 128k on 2 x H200."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_bench_common", Path(__file__).parents[1] / "benchmarks" / "_common.py")
    bench_common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_common)
    lengths = bench_common.doc_lengths(total, seed=0, base=256, cap=total // 4)
    cu = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    ranges = [[a, b] for a, b in zip(cu, cu[1:])]
    return ranges, ranges, [1] * len(ranges)


def test_the_tile_model_overrides_the_area_choice_only_by_its_margin(monkeypatch):
    total, chunk = 131072, 512
    mask = _long_tailed_documents(total)
    params = _overlap_params(DistAttnConfig())

    def choose(**kw):
        return solve_dispatch(CostAwareDispatchAlg(**kw), *mask, total, chunk, 2, params)

    def busiest_tiles(meta):
        return max(planned_time(_compat.solver.make_dist_attn_plan(*mask, meta, params), 2))

    by_area, by_tiles = choose(cost_model="area"), choose()
    assert [list(p) for p in by_tiles.partitions] != [list(p) for p in by_area.partitions]
    assert busiest_tiles(by_tiles) < (1 - dispatch_choice.TILE_MARGIN) * busiest_tiles(by_area)
    monkeypatch.setattr(dispatch_choice, "TILE_MARGIN", 1.0)  # no plan is that much cheaper: the area choice
    assert [list(p) for p in choose().partitions] == [list(p) for p in by_area.partitions]
    # where the models nearly agree (causal: equal halves of one triangle) the area choice stands
    monkeypatch.setattr(dispatch_choice, "TILE_MARGIN", 0.05)
    causal = ([[0, total]], [[0, total]], [1])
    area_causal = solve_dispatch(CostAwareDispatchAlg(cost_model="area"), *causal, total, chunk, 2, params)
    tiles_causal = solve_dispatch(CostAwareDispatchAlg(), *causal, total, chunk, 2, params)
    assert [list(p) for p in tiles_causal.partitions] == [list(p) for p in area_causal.partitions]


def test_the_dispatch_choice_benchmark_runs_and_dumps_every_choice(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "bench_dispatch_choice.py"
    dump = tmp_path / "choices.txt"
    proc = subprocess.run([sys.executable, str(script), "--seqlens", "8192", "--cps", "2", "4", "--dump", str(dump)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| 8192 |")]
    assert len(rows) == 2 * 7  # causal, sliding window, 4 varlen draws, random slices; at each cp
    assert all(float(r.split("|")[4]) > 0 for r in rows)
    lines = dump.read_text().splitlines()
    assert len(lines) == 14 and all(ln.startswith("8192 ") for ln in lines)


def test_the_new_key_host_cost_tool_runs_and_times_every_piece():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "new_key_host_cost.py"
    proc = subprocess.run([sys.executable, str(script), "--seqlens", "4096", "8192", "--cp", "2", "--keys", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[float(x) for x in ln.split("|")[2:7]] for ln in proc.stdout.splitlines()
            if ln.startswith(("| 4096 |", "| 8192 |"))]
    assert len(rows) == 2 and all(min(r) >= 0 and r[0] > 0 and r[4] > 0 for r in rows)
    assert all(r[4] == pytest.approx(sum(r[:4]), abs=0.03) for r in rows)  # the total: the pieces (rounded)
