"""bench_dist.py accepts any world size: a 4-process gloo run on tiny CPU shapes (issue #12).

Runs the real launcher (torch.distributed.run) so the benchmark's entry point, argument parsing,
timing across ranks and report writing are all exercised before a big machine is used.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_dist.py"
WORLD = 4


@pytest.mark.dist
def test_bench_dist_cpu_world4(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MAGI_FFA_WORKLIST_IDENTITY_CACHE="1")
    for var in ("CUDA_VISIBLE_DEVICES", "MAGI_ATTENTION_KERNEL_BACKEND", "MAGI_ATTENTION_FA4_BACKEND"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={WORLD}", str(BENCH), "--device", "cpu", "--quick",
           "--comm-stream-priority", "0", "--comm-copy-engine", "0", "--layers", "2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    log = proc.stdout + proc.stderr
    errors = [ln for ln in log.splitlines() if "Error" in ln or "error" in ln][:20]
    assert proc.returncode == 0, "\n".join(errors) + "\n...\n" + log[-4000:]
    # each magi measurement says whether the host shortcuts (FA4 replay, native graphs) were used
    assert log.count("launch counts:") == 4, log[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_dist.csv")))
    masks = {"full", "causal", "varlen_causal", "sliding_window"}
    assert {r["mask"] for r in rows} == masks
    assert all(r["world_size"] == str(WORLD) for r in rows)
    for mask in masks:
        for method in ("magi", "ffa_single", "ffa_rank", "ffa_global", "ulysses"):  # hq = hk = 4 divides world
            got = {r["direction"]: r for r in rows if r["mask"] == mask and r["method"] == method}
            assert set(got) == {"fwd", "bwd"}, (mask, method, log[-2000:])
            for r in got.values():
                assert float(r["time_ms"]) > 0 and float(r["tflops_per_gpu"]) > 0, r
                assert int(r["area"]) > 0, r
        magi = [r for r in rows if r["mask"] == mask and r["method"] == "magi"]
        assert all(float(r[c]) > 0 for r in magi for c in ("efficiency", "efficiency_rank", "efficiency_global"))
    # ring attention has no CPU kernels: skipped with the reason printed and recorded
    assert not any(r["method"] == "ring" for r in rows)
    assert "skip ring full" in log and "needs CUDA" in log
    md = (tmp_path / "bench_dist.md").read_text()
    assert "world size: 4" in md and "git commit:" in md and "card:" in md
    assert "ffa kernel backend: auto" in md
    assert "layers per step: 2" in md  # two stacked calls per step, each layer with its own K/V
    # the native collectives' A/B switches are recorded (gloo runs a2a-v: they change nothing here)
    assert "(comm stream priority 0) (copy engine casts 0)" in md
    # and the library environment variables of the run (here one that keeps its default)
    assert "MAGI_FFA_WORKLIST_IDENTITY_CACHE=1" in md.split("library environment:")[1].splitlines()[0]
    assert "## skipped" in md and "efficiency" in md
    # the full mask's area is exact: T*T cells at every T
    full = [r for r in rows if r["mask"] == "full" and r["method"] == "magi"]
    assert all(int(r["area"]) == int(r["total_seqlen"]) ** 2 for r in full)


@pytest.mark.dist
def test_bench_dist_fresh_masks_make_a_key_every_step(tmp_path):
    """--fresh-masks: every step packs the varlen documents in a new order (a key and runtime of its
    own, as varlen training meets them); the area stays that of the fixed mask. --pin-cpus pins each
    rank to its block of CPUs, which the table records; --ffn-mult puts a feed-forward block after
    each layer and --prefetch-keys prefetches the next step's key, which it records too."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ("CUDA_VISIBLE_DEVICES", "MAGI_ATTENTION_KERNEL_BACKEND", "MAGI_ATTENTION_FA4_BACKEND"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(BENCH),
           "--device", "cpu", "--quick", "--masks", "varlen_causal", "causal", "--methods", "magi", "ffa_single",
           "--warmup", "1", "--repeats", "3", "--fresh-masks", "--prefetch-keys", "--pin-cpus", "--ffn-mult", "2", "--step-times", "--out",
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert log.count("fresh masks: 4 keys in 4 steps") == 1, log[-2000:]  # varlen only; causal has one mask
    # --step-times: every step of every magi and ffa_single measurement (1 warm-up + 3 timed), on rank 0
    assert log.count("(warm-up): fwd") == 4 and log.count("(timed): fwd") == 12, log[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_dist.csv")))
    magi = [r for r in rows if r["method"] == "magi"]
    assert {(r["mask"], r["direction"]) for r in magi} == {(m, d) for m in ("varlen_causal", "causal")
                                                           for d in ("fwd", "bwd")}
    assert all(float(r["time_ms"]) > 0 and float(r["efficiency"]) > 0 for r in magi)
    md = (tmp_path / "bench_dist.md").read_text()
    assert "fresh masks: varlen masks" in md and "prefetching the next step's key" in md
    assert "feed-forward blocks: x + gelu(x W1) W2 after each layer, 128 -> 256 -> 128" in md, md
    allowed = sorted(os.sched_getaffinity(0))  # the ranks inherit this; rank 0 keeps the first half
    assert f"cpus: pinned, rank 0 to {max(1, len(allowed) // 2)} cpus from {allowed[0]}" in md, md


def test_feed_forward_blocks_between_stacked_layers():
    """_common.feed_forward_layers: block i is x + gelu(x W1) W2 over a token's flattened heads, after
    layer i's attention; its weights are leaves that get gradients (float64 reference)."""
    import torch

    sys.path.insert(0, str(BENCH.parent))
    from _common import feed_forward_layers, stack_layers

    layers, h, d, n = 3, 2, 4, 5
    blocks, weights = feed_forward_layers(layers, h * d, 3, torch.device("cpu"), torch.float32, seed=1)
    assert [tuple(w.shape) for w in weights] == [(8, 24), (24, 8)] * layers and all(w.requires_grad for w in weights)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, h, d, generator=gen).requires_grad_() for _ in range(3))

    def attn(x, k_, v_):  # any differentiable stand-in for attention
        return x * 0.5 + k_ - v_ * 0.25

    fwd, leaves = stack_layers(attn, q, k, v, layers, (blocks, weights))
    assert leaves[-len(weights):] == weights
    out = fwd()
    x = q.detach().double()
    for i in range(layers):
        x = attn(x, k.detach().double(), v.detach().double()).reshape(n, -1)
        w1, w2 = (w.detach().double() for w in weights[2 * i:2 * i + 2])
        x = (x + torch.nn.functional.gelu(x @ w1) @ w2).view(n, h, d)
    torch.testing.assert_close(out.double(), x, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)


def test_feed_forward_blocks_on_sdpas_layout():
    """torch's ring runs on [1, H, S, D]: its blocks see each token's heads through a transpose, and
    give what the blocks give on [S, H, D] (the ring baseline failed with --ffn-mult before)."""
    import torch

    sys.path.insert(0, str(BENCH.parent))
    import bench_dist
    from _common import feed_forward_layers

    blocks, _ = feed_forward_layers(1, 3 * 4, 2, torch.device("cpu"), torch.float64, seed=2)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    got = bench_dist._tokens_first(blocks[0])(x.transpose(0, 1).unsqueeze(0).contiguous())
    assert got.shape == (1, 3, 7, 4) and torch.equal(got[0].transpose(0, 1), blocks[0](x))


@pytest.mark.parametrize("seed", range(4))
def test_rank_work_mask_cuts_the_mask_into_the_ranks_cells(seed):
    """bench_dist.rank_work_mask (the ffa_rank peer's mask): for chunks dealt to ranks in a random
    order, each rank's slices over (local rows x global keys) are exactly the global mask's rows at
    its positions, on random overlapping-free slices of all four types with empty rows, and the
    ranks' areas sum to the mask's."""
    import numpy as np

    sys.path.insert(0, str(BENCH.parent))
    import bench_dist
    from magi_attention.common import AttnMask

    rng = np.random.default_rng(seed)
    T, chunk, world = 96, 8, 3
    qs, ks, ts = [], [], []
    bounds = np.sort(rng.choice(np.arange(1, T), size=7, replace=False)).tolist()
    for lo, hi in zip([0] + bounds, bounds + [T]):  # row bands, each with one slice on random keys
        if rng.random() < 0.2:
            continue  # rows no slice covers
        k0 = int(rng.integers(0, T - 1))
        k1 = int(rng.integers(k0 + 1, T + 1))
        qs.append((lo, hi))
        ks.append((k0, k1))
        ts.append(int(rng.integers(0, 4)))
    whole = AttnMask.from_ranges(qs, ks, ts, T, T).mask_tensor.numpy().astype(bool)
    order = rng.permutation(T // chunk)
    areas = 0
    for r in range(world):
        mine = sorted(order[r::world])
        if r == 1:
            mine = mine[::-1]  # a rank's chunks need not be in global order
        pos = [c * chunk + i for c in mine for i in range(chunk)]
        own = bench_dist.rank_work_mask((qs, ks, ts), pos)
        got = (AttnMask.from_ranges(*own, len(pos), T).mask_tensor.numpy().astype(bool)
               if own[0] else np.zeros((len(pos), T), dtype=bool))
        np.testing.assert_array_equal(got, whole[pos], err_msg=f"rank {r}")
        areas += bench_dist.mask_area(*own)
    assert areas == bench_dist.mask_area(qs, ks, ts) == whole.sum() > 0


def test_keys_of_their_own_keep_the_cells():
    """bench_dist.keys_of_their_own: pieces of one document held by one rank (overlapping key ranges)
    read copies of their keys; gathering the copies' columns back gives the original cells, each once,
    and the copies' ranges follow one another in row order (FA4 varlen documents)."""
    import numpy as np

    sys.path.insert(0, str(BENCH.parent))
    import bench_dist
    from magi_attention.common import AttnMask

    # a rank's rows: two chunks of one document (keys 0..40), then a piece of the next document
    mask = ([(8, 16), (0, 8), (16, 20)], [(0, 40), (0, 16), (40, 52)], [1, 1, 1])
    (qs, ks, ts), rows = bench_dist.keys_of_their_own(mask)
    assert qs == [(0, 8), (8, 16), (16, 20)] and ks == [(0, 16), (16, 56), (56, 68)]
    assert rows.tolist() == list(range(16)) + list(range(40)) + list(range(40, 52))
    packed = AttnMask.from_ranges(qs, ks, ts, 20, len(rows)).mask_tensor.numpy()
    back = np.zeros((20, 52), dtype=np.int64)
    np.add.at(back.T, rows, packed.T)
    np.testing.assert_array_equal(back, AttnMask.from_ranges(*mask, 20, 52).mask_tensor.numpy())
    assert bench_dist.mask_area(qs, ks, ts) == bench_dist.mask_area(*mask) == back.sum()


def test_rank_work_mask_refuses_padded_positions():
    sys.path.insert(0, str(BENCH.parent))
    import bench_dist

    with pytest.raises(ValueError, match="positions repeat"):
        bench_dist.rank_work_mask(([(0, 8)], [(0, 8)], [1]), [0, 1, 2, 3, 3, 3])
