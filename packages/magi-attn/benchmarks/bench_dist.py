"""Distributed attention throughput: magi_attention vs single-GPU FFA, torch ring attention, Ulysses.

Launch (any world size; NCCL on GPUs, gloo with ``--device cpu`` for a smoke test):

    python -m torch.distributed.run --standalone --nproc-per-node N \
        packages/magi-attn/benchmarks/bench_dist.py [--quick] [--device cpu] --out DIR

For each mask (full, causal, varlen causal with long-tailed documents, sliding window) and total
length T it times forward and backward of

- ``magi``: key -> dispatch (untimed) -> calc_attn (timed) on the cp group; with ``--fresh-masks``
  the varlen mask packs the same documents in a new order every step (a new key and runtime each
  step, as in varlen training whose batches are packed anew), and the key's creation and the
  inputs' dispatch are timed with the forward;
- ``ffa_single``: single-device flex_flash_attn_func on a sequence of length T/cp with the
  analogous mask (same mask kind; varlen: same document-length law; sliding window: same
  absolute window), run on every rank at once (each on its own device);
- ``ffa_rank``: single-device flex_flash_attn_func on exactly the work magi gives this rank: its
  dispatched rows against the global K/V (varlen: each document piece against a copy of its keys,
  ``keys_of_their_own``), the global slices cut to those rows (``rank_work_mask``), one call, no
  communication; timed on every rank at once and averaged over the ranks, so the ranks'
  imbalance counts against magi (each rank's times are printed);
- ``ffa_global``: single-device flex_flash_attn_func on the whole mask (strong scaling: what one
  GPU does alone with the same documents);
- ``ring``: torch's ``context_parallel`` ring attention over SDPA (full and causal only, CUDA only);
- ``ulysses``: all-to-all of heads, single-device FFA over the whole sequence with the global mask
  on the local heads, all-to-all back (needs hq and hk divisible by the world size).

FLOPs come from the exact mask area: forward 4 * area * d * hq, backward 2.5x that, times
``--layers`` (calls stacked per step as in a model: each layer's output is the next one's query,
each layer has its own K/V). TFLOP/s per GPU = FLOPs / world_size / time, where time is the slowest rank's median.
Scaling efficiency = magi TFLOP/s per GPU / a single-device peer's TFLOP/s: ``efficiency`` against
ffa_single, ``efficiency_rank`` against ffa_rank (the same per-GPU work, cell for cell: what the
runtime's splitting, communication, merging and imbalance cost), ``efficiency_global`` against
ffa_global. Why three: ffa_single's mask is another draw of the law, whose documents are long for
its length (at 64k its area per token is 1.7x the rank's share), so its rate says how fast denser work
runs, not what the runtime costs. On CUDA, each method's peak
reserved memory on rank 0 (CSV ``peak_reserved_gib``; the caching allocator's, graph pools included)
is logged with its times.
Results: CSV, a markdown table (card, date, git commit, command, world size) and, when matplotlib
imports, one PNG per mask, all under --out (written by rank 0).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import _common
import numpy as np
import torch
import torch.distributed as dist
from _common import (
    between_layers,
    count_delta,
    doc_lengths,
    feed_forward_layers,
    launch_counts,
    leaf,
    measure,
    pin_cpus,
    stack_layers,
)

MASKS = ("full", "causal", "varlen_causal", "sliding_window")
METHODS = ("magi", "ffa_single", "ffa_rank", "ffa_global", "ring", "ulysses")
#: the CSV note of each single-device peer's rows
PEER_NOTES = {"ffa_single": "single device, T={Tl}",
              "ffa_rank": "single device, each rank's own cells of the T={T} mask, mean over ranks",
              "ffa_global": "single device, the whole T={T} mask"}
#: single-device peers -> the CSV column of magi's efficiency against each
PEER_EFFICIENCY = {"ffa_single": "efficiency", "ffa_rank": "efficiency_rank", "ffa_global": "efficiency_global"}
BWD_FACTOR = 2.5


# ------------------------------------------------------------------------------------ masks
def doc_law(T: int) -> dict:
    """The long-tailed document-length law of the varlen masks at T tokens (``build_mask``'s
    ``doc_base`` / ``doc_cap``): what every benchmark of a varlen mask draws from."""
    return dict(doc_base=max(8, min(256, T // 128)), doc_cap=T // 4)


def build_mask(kind: str, T: int, *, window: int, doc_base: int, doc_cap: int, seed: int = 0,
               order_seed: int | None = None):
    """(q_ranges, k_ranges, type codes) of a named mask over T tokens; ``order_seed`` shuffles a
    varlen mask's documents (the same lengths, so the same area and tiles, in another order)."""
    from magi_attention.api.functools import cu_seqlens_slices

    if kind == "full":
        return [(0, T)], [(0, T)], [0]
    if kind == "causal":
        return [(0, T)], [(0, T)], [1]
    if kind == "varlen_causal":
        lengths = doc_lengths(T, seed, doc_base, doc_cap)
        if order_seed is not None:
            lengths = [lengths[i] for i in np.random.default_rng(order_seed).permutation(len(lengths))]
        cu = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        qs, ks, ts, _, _ = cu_seqlens_slices(cu, cu, causal=True)
        return qs, ks, ts
    if kind == "sliding_window":
        qs, ks, ts, _, _ = cu_seqlens_slices([0, T], [0, T], window_size=(min(window, T), 0))
        return qs, ks, ts
    raise ValueError(f"build_mask(): unknown mask {kind!r}; expected one of {MASKS}")


def mask_area(qr, kr, tm) -> int:
    """Exact number of visible cells (slices are cell-disjoint)."""
    from magi_solver import slice_area

    return sum(int(slice_area(q[0], q[1], k[0], k[1], int(t))) for q, k, t in zip(qr, kr, tm))


def fwd_flops(area: int, d: int, hq: int) -> float:
    return 4.0 * area * d * hq


# ------------------------------------------------------------------------------------ timing
class Timer:
    """Times forward and backward of ``layers`` stacked attention calls (``_common.stack_layers``),
    with ``blocks`` (``_common.feed_forward_layers``) between them if given; median over repeats, max
    over ranks."""

    def __init__(self, device: torch.device, warmup: int, repeats: int, layers: int = 1,
                 blocks: tuple[list, list] | None = None):
        self.device, self.warmup, self.repeats, self.layers = device, warmup, repeats, layers
        self.blocks = blocks
        self.cuda = device.type == "cuda"

    def measure(self, attn, q, k, v, dout, heads_first: bool = False,
                over_ranks: str = "max"):
        """(fwd seconds, bwd seconds) of all layers of ``attn(q, k, v) -> out`` (leaves q, k, v):
        slowest rank's median of ``repeats`` runs (``over_ranks="each"``: every rank's, per direction).
        ``heads_first``: the tensors are [1, H, S, D] (SDPA's layout, torch's ring) and the blocks see
        each token's heads as a model's would, through a transpose each way (as a model calling SDPA
        transposes around it)."""
        blocks = self.blocks
        if blocks is not None and heads_first:
            blocks = ([_tokens_first(b) for b in blocks[0]], blocks[1])
        fwd, leaves = stack_layers(attn, q, k, v, self.layers, blocks)
        return measure(fwd, leaves, dout, self.device, self.warmup, self.repeats, over_ranks)


def _tokens_first(block):
    """``block`` (over [S, H, D]) applied to a [1, H, S, D] tensor, the result in that layout again."""
    return lambda x: block(x[0].transpose(0, 1)).transpose(0, 1).unsqueeze(0)


# ------------------------------------------------------------------------------------ methods
def run_magi(cfg, mask, q, k, v, do, timer, mask_of_step=None):
    """(fwd s, bwd s) of ``cfg.layers`` stacked calc_attn calls on ``mask``; with ``mask_of_step``
    (``--fresh-masks``: ``build_mask`` of ``mask`` short of its ``order_seed``) each step makes the key
    of ``mask_of_step(order_seed=step + 1)`` and dispatches the inputs with it, inside the timed
    forward."""
    from magi_attention.api import calc_attn, dispatch

    make_key = functools.partial(_magi_key, cfg, q, k)
    if mask_of_step is not None:
        return _run_magi_fresh(cfg, make_key, mask_of_step, q, k, v, do, timer)
    T = q.shape[0]
    key = make_key(*mask)
    lq, lk, lv = (leaf(dispatch(x, key)) for x in (q, k, v))
    ldo = dispatch(do, key)
    if cfg.dispatch_alg.startswith("cost_aware") and dist.get_rank() == 0:
        from magi_attention.runtime.cache import dist_attn_runtime_dict_mgr

        meta = dist_attn_runtime_dict_mgr.get_mgr(key).dispatch_meta
        print(f"  {cfg.dispatch_alg} dispatch at T={T}: chunk {meta.chunk_size}, rank 0 holds "
              f"{len(meta.partitions[0])} chunks", flush=True)
    return timer.measure(lambda q_, k_, v_: calc_attn(q_, k_, v_, key)[0], lq, lk, lv, ldo)


def _magi_key(cfg, q, k, qr, kr, tm, prefetch=False):
    """magi's key of the mask (qr, kr, tm) over q's length, with the run's dispatch and overlap
    settings (``prefetch``: api.prefetch_flex_key's, built on a background thread)."""
    from magi_attention.api import (
        DistAttnConfig,
        OverlapConfig,
        compute_pad_size,
        magi_attn_flex_key,
        prefetch_flex_key,
    )

    T, world = q.shape[0], dist.get_world_size()
    pad = compute_pad_size(T, world, cfg.chunk_size)
    dcfg = DistAttnConfig(dispatch_config=dispatch_config(cfg.dispatch_alg),
                          **({"overlap_config": OverlapConfig(degree=cfg.degree)} if cfg.degree else {}))
    return (prefetch_flex_key if prefetch else magi_attn_flex_key)(
        qr, kr, tm, T, T, q.shape[1], k.shape[1], q.shape[2], pad, cfg.chunk_size, dist.group.WORLD, dcfg)


def _run_magi_fresh(cfg, make_key, mask_of_step, q, k, v, do, timer):
    """run_magi with a new mask every step: the step's key, the dispatch of the global q, k, v leaves
    (once, as a model dispatches its input), then the stacked layers, each on K/V of its own (clones
    of the dispatched ones, as a model's layers project their own: tensors at their own addresses, so
    no host-side shortcut keyed by addresses meets a layer's call twice, as in training). With
    ``cfg.prefetch_keys``, each step's forward ends by prefetching the next step's key
    (``prefetch_flex_key``), whose runtime is then built while the step's backward runs."""
    from magi_attention.api import calc_attn, dispatch

    keys = []
    leaves = [leaf(x) for x in (q, k, v)]
    ldo = dispatch(do, make_key(*mask_of_step(order_seed=0)))  # the local gradient's shape is every key's
    after, weights = between_layers(timer.blocks, cfg.layers)

    def fwd():
        step = len(keys)
        keys.append(make_key(*mask_of_step(order_seed=step + 1)))
        x, lk, lv = (dispatch(t, keys[-1]) for t in leaves)
        for layer, block in zip(range(cfg.layers), after):
            k_, v_ = (lk, lv) if layer == 0 else (lk.clone(), lv.clone())
            x = block(calc_attn(x, k_, v_, keys[-1])[0])
        if cfg.prefetch_keys:
            make_key(*mask_of_step(order_seed=step + 2), prefetch=True)
        return x

    times = measure(fwd, leaves + list(weights), ldo, timer.device, timer.warmup, timer.repeats)
    if dist.get_rank() == 0:  # every step a key of its own, so a runtime of its own
        print(f"[bench_dist]   fresh masks: {len(set(keys))} keys in {len(keys)} steps", flush=True)
    return times


#: 0/1 flags that set a module-level switch of the library for an A/B, by (module, the results header's
#: line that records them): flag -> (attribute, its label on that line, what 1 and 0 mean); left out,
#: the library's default holds
_SWITCHES_BY_MODULE = {
    ("magi_grpcoll.impl.native", "group collectives"): {
        "--comm-copy-engine": ("COPY_ENGINE_CASTS", "copy engine casts",
                               "native casts through the copy engines (1) or the chunk-copy kernel (0)"),
        "--comm-record-streams": ("RECORD_STREAMS", "record streams",
                                  "native ops mark their tensors used on the comm stream (1) or hold them "
                                  "until the wait (0: stable addresses, more graph replays)"),
        "--native-fold-at-wait": ("FOLD_AT_WAIT", "fold at wait",
                                  "native reduces asked to fold at the wait (the hidden tail's, under "
                                  "MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE) push every row and fold at the wait (1) "
                                  "or run as a2av (0)"),
        "--comm-copy-engine-reduce": ("COPY_ENGINE_REDUCE_PUSHES", "copy engine reduce pushes",
                                      "native reduces folding at the wait push through the copy engines (1) "
                                      "or the chunk-copy kernel (0)"),
    },
    ("magi_ffa.backends.fa4.native", "ffa kernel backend"): {
        "--fa4-batched-documents": ("BATCHED_DOCUMENTS", "batched documents",
                                    "the fa4 backend runs documents of one length as FA4's batch layout (1) "
                                    "or as varlen documents (0)"),
        "--fa4-varlen-windows": ("VARLEN_WINDOWS", "varlen windows",
                                 "the fa4 backend runs documents with a sliding window natively (1) or "
                                 "through block lists (0)"),
    },
    ("magi_attention.runtime.runtime_mgr", "runtime manager"): {
        "--prepare-ahead": ("PREPARE_AHEAD", "prepare ahead",
                            "a prefetched key's build also does its runtime's first-call host work (1) "
                            "or leaves it to the first call (0)"),
        "--qo-key-chunk-grid": ("QO_KEY_CHUNK_GRID", "QO comm on the key's chunk grid",
                                "under MAGI_ATTENTION_QO_COMM=1 the dynamic solver cuts the mask on the key's "
                                "chunk grid (1) or on the dispatch's chunks (0)"),
    },
    ("magi_attention.runtime.dist_attn", "runtime"): {
        "--split-host-backward": ("SPLIT_HOST_BACKWARD", "split host backward",
                                  "the backward's host stage as two calls, the block no dK/dV reduce "
                                  "touches after the remote stages (1), or one call first (0)"),
        "--host-stage-first": ("HOST_STAGE_FIRST", "host stage first",
                               "launch the host stage before issuing the K/V casts, which wait for the "
                               "inputs only (1), or issue the casts first (0)"),
    },
}
#: flag -> (module, attribute, header line, label, what 1 and 0 mean)
LIBRARY_SWITCHES = {flag: (module, attr, line, label, what)
                    for (module, line), flags in _SWITCHES_BY_MODULE.items()
                    for flag, (attr, label, what) in flags.items()}


def _switch_value(a, flag: str):
    return getattr(a, flag[2:].replace("-", "_"))


def _set_library_switches(a) -> None:
    """Apply the LIBRARY_SWITCHES flags given on the command line."""
    import importlib

    for flag, (module, name, *_) in LIBRARY_SWITCHES.items():
        value = _switch_value(a, flag)
        if value is not None:
            setattr(importlib.import_module(module), name, bool(value))


#: prefixes of the environment variables that change what the libraries do
LIBRARY_ENV_PREFIXES = ("MAGI_ATTENTION_", "MAGI_FFA_", "MAGI_GRPCOLL_")


def library_environment() -> str:
    """The library environment variables set in this run, "NAME=value" sorted ("none" if none): an A/B
    run under an environment flag (e.g. MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE=1) names it in its header."""
    found = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(LIBRARY_ENV_PREFIXES))
    return ", ".join(found) or "none"


def _record_library_switches(a, header: dict) -> None:
    """Append each LIBRARY_SWITCHES flag given, as "(label value)", to its line of the results header."""
    for flag, (*_, line, label, _what) in LIBRARY_SWITCHES.items():
        value = _switch_value(a, flag)
        if value is not None:
            header[line] = f"{header.get(line, '')} ({label} {value})".strip()


#: --dispatch-alg names: magi_attention's dispatch algorithms (a float after ':' is top_p /
#: allocation_ratio where the algorithm takes one)
DISPATCH_ALGS = ("min_heap", "sequential", "sorted_sequential_select", "topp_heap", "cost_aware",
                 "cost_aware_fine", "cost_aware_unturned", "cost_aware_area")


def dispatch_config(spec: str):
    """DispatchConfig of a --dispatch-alg spec such as ``sequential`` or ``topp_heap:0.5``."""
    from magi_attention.api import DispatchConfig
    from magi_attention.config import (
        UNTURNED_CANDIDATES,
        CostAwareDispatchAlg,
        MinHeapDispatchAlg,
        SequentialDispatchAlg,
        SortedSequentialSelectAlg,
        ToppHeapDispatchAlg,
    )

    name, _, arg = spec.partition(":")
    if name not in DISPATCH_ALGS:
        raise ValueError(f"--dispatch-alg {spec!r}: expected one of {DISPATCH_ALGS} (optionally ':<float>')")
    algs = {"min_heap": lambda: MinHeapDispatchAlg(), "sequential": lambda: SequentialDispatchAlg(),
            "sorted_sequential_select": lambda: SortedSequentialSelectAlg(allocation_ratio=float(arg or 1.0)),
            "topp_heap": lambda: ToppHeapDispatchAlg(top_p=float(arg or 0.0)),
            "cost_aware": lambda: CostAwareDispatchAlg(**({"remote_cost": float(arg)} if arg else {})),
            # the key's chunk size only (no coarser factors): the choice before chunk factors
            "cost_aware_fine": lambda: CostAwareDispatchAlg(
                chunk_factors=(1,), **({"remote_cost": float(arg)} if arg else {})),
            # without the turned sequential split (meta.dispatch_choice.rotated_sequential): the
            # choice before it was a default candidate
            "cost_aware_unturned": lambda: CostAwareDispatchAlg(
                candidates=UNTURNED_CANDIDATES, **({"remote_cost": float(arg)} if arg else {})),
            # weighed by area (host + remote_cost x remote) instead of tiles: the choice before tiles
            "cost_aware_area": lambda: CostAwareDispatchAlg(
                cost_model="area", **({"remote_cost": float(arg)} if arg else {}))}
    return DispatchConfig(alg=algs[name]())


def _ranges(mask, device):
    """(q_ranges int32 [N,2], k_ranges int32 [N,2], types int32 [N]) on ``device``."""
    qr, kr, tm = mask
    as_t = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    return as_t(qr).reshape(-1, 2), as_t(kr).reshape(-1, 2), as_t(tm).reshape(-1)


def run_ffa_single(mask, q, k, v, do, timer):
    from magi_attention.api import flex_flash_attn_func

    qr, kr, tm = _ranges(mask, q.device)
    lq, lk, lv = leaf(q), leaf(k), leaf(v)
    return timer.measure(lambda q_, k_, v_: flex_flash_attn_func(q_, k_, v_, qr, kr, tm)[0],
                         lq, lk, lv, do)


def rank_work_mask(mask, positions) -> tuple[list, list, list]:
    """(q_ranges, k_ranges, types) of the cells a rank computes in magi's calc_attn, as one call:
    the global slices of ``mask`` cut to the rows the rank holds (``positions``: each local row's
    global position, as api.get_position_ids gives them), q ranges renumbered to local rows, k ranges
    kept global. The cuts are exact (magi_solver's rectangles), so the ranks' areas sum to the mask's.
    """
    from magi_solver import AttnRectangles

    pos = np.asarray(positions, dtype=np.int64)
    if len(np.unique(pos)) != len(pos):
        raise ValueError("rank_work_mask(): positions repeat (a padded dispatch); pad-free lengths only")
    rects = AttnRectangles.from_ranges(*mask)
    cuts = np.flatnonzero(np.diff(pos) != 1) + 1  # runs of consecutive global rows
    qs, ks, ts = [], [], []
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(pos)]])):
        g0 = int(pos[lo])
        run = rects.cut_q(g0)[1].cut_q(g0 + int(hi - lo))[0]
        for qr, kr, t in run.to_slices():
            qs.append((qr.start - g0 + int(lo), qr.end - g0 + int(lo)))
            ks.append((kr.start, kr.end))
            ts.append(t.to_int_type())
    return qs, ks, ts


def keys_of_their_own(mask) -> tuple[tuple[list, list, list], np.ndarray]:
    """(``mask`` with every slice reading a copy of its keys of its own, the key rows of the copies):
    K[rows] with the returned slices has the cells of K with ``mask``. Why: a rank holding two chunks
    of one document has two pieces whose keys overlap (both start at the document's start), which FA4
    cannot run as varlen documents, so one call on the global K/V falls back to the mask function;
    with copies (made once, untimed, as magi's dispatch is) the pieces are documents back to back."""
    qs, ks, ts = mask
    order = sorted(range(len(qs)), key=lambda i: (qs[i][0], ks[i][0]))
    rows, own, cursor = [], [], 0
    for i in order:
        start, end = ks[i]
        rows.append(np.arange(start, end, dtype=np.int64))
        own.append((cursor, cursor + end - start))
        cursor += end - start
    packed = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return ([qs[i] for i in order], own, [ts[i] for i in order]), packed


def run_ffa_rank(cfg, kind, mask, q, k, v, do, timer):
    """(fwd s, bwd s) of this rank's magi work (``rank_work_mask``) as one single-device call per
    layer, averaged over the ranks; rank 0 prints each rank's times, whose spread is the dispatch's
    imbalance in kernel time. Varlen masks run on ``keys_of_their_own`` copies of the keys (FA4's
    documents); the others on the global K/V (their pieces' tiles are whole, FA4's block-sparse path)."""
    from magi_attention.api import flex_flash_attn_func, get_position_ids
    from magi_attention.meta.dispatch_choice import slice_tiles

    key = _magi_key(cfg, q, k, *mask)
    pos = get_position_ids(key).to(q.device)
    own = rank_work_mask(mask, pos.cpu().tolist())
    tiles = [None] * dist.get_world_size()  # the dispatch's tile model counts these (meta.dispatch_choice)
    dist.all_gather_object(tiles, slice_tiles(*own))
    if kind.startswith("varlen"):
        own, rows = keys_of_their_own(own)
        rows = torch.as_tensor(rows, device=q.device)
        k, v = k[rows], v[rows]
    qr, kr, tm = _ranges(own, q.device)
    lq, lk, lv = leaf(q[pos]), leaf(k), leaf(v)
    tf, tb = timer.measure(lambda q_, k_, v_: flex_flash_attn_func(q_, k_, v_, qr, kr, tm)[0],
                           lq, lk, lv, do[pos].contiguous(), over_ranks="each")
    if dist.get_rank() == 0:
        each = ", ".join(f"rank {r} {f * 1e3:.2f} / {b * 1e3:.2f} ({n} tiles, {m} q tiles)"
                         for r, (f, b, (n, m)) in enumerate(zip(tf, tb, tiles)))
        print(f"[bench_dist]   ffa_rank ms per step (fwd / bwd): {each}", flush=True)
    return sum(tf) / len(tf), sum(tb) / len(tb)


class _AllToAll(torch.autograd.Function):
    """Equal-split all_to_all_single over dim 0; its gradient is the same exchange."""

    @staticmethod
    def forward(ctx, x):
        return _exchange(x)

    @staticmethod
    def backward(ctx, g):
        return _exchange(g)


def _exchange(x: torch.Tensor) -> torch.Tensor:
    """NCCL needs both buffers contiguous; empty_like keeps a strided input's layout, so copy first."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x)
    return out


def _seq_to_heads(x: torch.Tensor, world: int) -> torch.Tensor:
    """[S, h, d] sequence shard -> [world*S, h/world, d] whole sequence, local heads."""
    s, h, d = x.shape
    y = x.reshape(s, world, h // world, d).transpose(0, 1)
    return _AllToAll.apply(y.contiguous()).reshape(world * s, h // world, d)


def _heads_to_seq(x: torch.Tensor, world: int) -> torch.Tensor:
    """Inverse of _seq_to_heads: [world*S, h/world, d] -> [S, h, d]."""
    t, hl, d = x.shape
    y = _AllToAll.apply(x.reshape(world, t // world, hl, d).contiguous())
    return y.transpose(0, 1).reshape(t // world, world * hl, d)


def run_ulysses(mask, q, k, v, do, timer):
    from magi_attention.api import flex_flash_attn_func

    world, rank = dist.get_world_size(), dist.get_rank()
    T = q.shape[0]
    qr, kr, tm = _ranges(mask, q.device)
    s = T // world
    lq, lk, lv = (leaf(x[rank * s:(rank + 1) * s]) for x in (q, k, v))
    ldo = do[rank * s:(rank + 1) * s].contiguous()

    def attn(q_, k_, v_):
        gq, gk, gv = (_seq_to_heads(x, world) for x in (q_, k_, v_))
        out = flex_flash_attn_func(gq, gk, gv, qr, kr, tm)[0]
        return _heads_to_seq(out, world)

    return timer.measure(attn, lq, lk, lv, ldo)


def run_ring(kind, q, k, v, do, timer):
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel

    world = dist.get_world_size()
    mesh = init_device_mesh(q.device.type, (world,))
    bq, bk, bv, bdo = (x.transpose(0, 1).unsqueeze(0).contiguous() for x in (q, k, v, do))
    causal = kind == "causal"
    # torch balances the ring only for causal masks (head-tail sharding); a full mask needs it off.
    options = _ring_options()
    saved = getattr(options, "enable_load_balance", None)
    if options is not None:
        options.enable_load_balance = causal
    try:
        # the buffers are sharded in place for the context's duration
        with context_parallel(mesh, buffers=[bq, bk, bv, bdo], buffer_seq_dims=[2, 2, 2, 2]):
            lq, lk, lv = leaf(bq), leaf(bk), leaf(bv)
            return timer.measure(
                lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, is_causal=causal),
                lq, lk, lv, bdo, heads_first=True)
    finally:
        if options is not None:
            options.enable_load_balance = saved


def _ring_options():
    """torch's private context-parallel options object, where this torch has one."""
    try:
        from torch.distributed.tensor.experimental import _attention
    except ImportError:
        return None
    return getattr(_attention, "_cp_options", None)


def ring_unavailable(kind: str, device: torch.device, hq: int, hk: int, T: int, world: int):
    """Why the torch ring baseline cannot run here, or None."""
    if kind not in ("full", "causal"):
        return "ring attention covers full and causal masks only"
    if device.type != "cuda":
        return "torch context_parallel ring attention needs CUDA SDPA kernels"
    if hq != hk:
        return f"ring attention over SDPA needs hq == hk (got {hq}/{hk})"
    if T % (2 * world):
        return f"ring attention load balancing needs T % (2*world) == 0 (T={T})"
    try:
        from torch.distributed.tensor.experimental import context_parallel  # noqa: F401
    except ImportError as e:
        return f"torch {torch.__version__} has no context_parallel ({e})"
    return None


def ulysses_unavailable(hq: int, hk: int, T: int, world: int):
    if hq % world or hk % world:
        return f"Ulysses needs hq and hk divisible by world size {world} (got {hq}/{hk})"
    if T % world:
        return f"Ulysses needs T divisible by world size {world} (got {T})"
    return None


# ------------------------------------------------------------------------------------ report
def git_commit() -> str:
    """GIT_COMMIT when set (a lent machine's copy of the tree may carry a stale .git), else git's."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                             capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, text=True,
                               capture_output=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()})"


FIELDS = ["mask", "total_seqlen", "world_size", "method", "direction", "time_ms",
          "tflops_per_gpu", *PEER_EFFICIENCY.values(), "area", "peak_reserved_gib", "note"]


def write_outputs(out_dir: Path, rows: list[dict], skipped: list[str], header: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "bench_dist.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = ["# bench_dist: distributed attention TFLOP/s per GPU", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["- TFLOP/s per GPU = mask-area FLOPs (fwd 4*area*d*hq, bwd 2.5x) / world size / "
              "slowest rank's median time",
              "- ffa_single: one device, sequence T/world, analogous mask (same kind; varlen: same "
              "document-length law; sliding window: same absolute window)",
              "- ffa_rank: one device, exactly the cells magi gives each rank, as one call on the global "
              "K/V (no communication); the ranks' mean time",
              "- ffa_global: one device, the whole mask",
              "- efficiency = magi TFLOP/s per GPU / ffa_single TFLOP/s; efficiency_rank against ffa_rank "
              "(the runtime's own cost: splitting, communication, merging, imbalance); efficiency_global "
              "against ffa_global (strong scaling)", ""]
    cols = list(PEER_EFFICIENCY.values())
    for kind in MASKS:
        mrows = [r for r in rows if r["mask"] == kind]
        if not mrows:
            continue
        lines += [f"## {kind}", "",
                  "| T | direction | " + " | ".join(METHODS + tuple(cols)) + " |",
                  "|---|---|" + "---|" * (len(METHODS) + len(cols))]
        for T in sorted({r["total_seqlen"] for r in mrows}):
            for direction in ("fwd", "bwd"):
                cells, effs = [], [""] * len(cols)
                for m in METHODS:
                    r = next((x for x in mrows if x["total_seqlen"] == T and x["method"] == m
                              and x["direction"] == direction), None)
                    cells.append(f"{r['tflops_per_gpu']:.4g}" if r else "-")
                    if r and m == "magi":
                        effs = [f"{r[c]:.3f}" if r[c] != "" else "" for c in cols]
                lines.append(f"| {T} | {direction} | " + " | ".join(cells + effs) + " |")
        lines.append("")
    if skipped:
        lines += ["## skipped and notes", ""] + [f"- {s}" for s in skipped] + [""]
    (out_dir / "bench_dist.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 - plots are optional
        print(f"[bench_dist] no plots: matplotlib unavailable ({type(e).__name__}: {e})")
        return
    for kind in MASKS:
        mrows = [r for r in rows if r["mask"] == kind]
        if not mrows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in METHODS:
            for direction, style in (("fwd", "-o"), ("bwd", "--s")):
                pts = sorted((r["total_seqlen"], r["tflops_per_gpu"]) for r in mrows
                             if r["method"] == m and r["direction"] == direction)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                            label=f"{m} {direction}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("total sequence length")
        ax.set_ylabel("TFLOP/s per GPU")
        ax.set_title(f"{kind}, world {header['world size']}, {header['card']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"bench_dist_{kind}.png", dpi=110)
        plt.close(fig)


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (CSV, markdown, PNG)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when available")
    p.add_argument("--quick", action="store_true", help="one length, fewer repeats")
    p.add_argument("--seqlens", type=int, nargs="+", default=None)
    p.add_argument("--masks", nargs="+", choices=MASKS, default=list(MASKS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--heads", type=int, default=None, help="hq (default 16 GPU, 4 CPU)")
    p.add_argument("--kv-heads", type=int, default=None, help="hk (default = hq; GQA e.g. 32/8)")
    p.add_argument("--head-dim", type=int, default=None, help="d (default 128 GPU, 32 CPU)")
    p.add_argument("--chunk-size", type=int, default=None, help="dispatch chunk (512 GPU, 32 CPU)")
    p.add_argument("--degree", type=int, default=None, help="overlap degree (default: library)")
    p.add_argument("--dispatch-alg", default="min_heap",
                   help=f"dispatch algorithm of magi's key: {', '.join(DISPATCH_ALGS)} (':<float>' sets "
                        f"top_p / allocation_ratio / remote_cost); default min_heap, the library's")
    p.add_argument("--fresh-masks", action="store_true",
                   help="varlen masks: a new document order every step (a new key and runtime each "
                        "step, as in varlen training); the key and the dispatch are timed with the forward")
    p.add_argument("--prefetch-keys", action="store_true",
                   help="with --fresh-masks: each step's forward ends by prefetching the next step's key "
                        "(api.prefetch_flex_key), built on a background thread during the backward")
    p.add_argument("--pin-cpus", action="store_true",
                   help="pin each rank to its block of the host's CPUs (_common.pin_cpus), for an A/B of "
                        "CPU placement on host-bound runs such as --fresh-masks")
    p.add_argument("--layers", type=int, default=1,
                   help="attention calls per step, stacked as in a model (own K/V per layer); TFLOP/s "
                        "count all of them")
    p.add_argument("--ffn-mult", type=int, default=0, metavar="M",
                   help="after each layer's attention, a residual feed-forward block over the local tokens "
                        "(hq*d -> M*hq*d -> hq*d, _common.feed_forward_layers): GPU work between the calls, as "
                        "a model has; TFLOP/s still count attention FLOPs only (default 0: none)")
    p.add_argument("--step-times", action="store_true",
                   help="print rank 0's time of every step (warm-ups included) and what the host shortcuts "
                        "(FA4 replay, graphs) did in it")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--comm-stream-priority", type=int, default=None,
                   help="CUDA priority of the native group collectives' comm stream (default: the "
                        "library's, high; 0 gives the old equal-priority stream, for an A/B)")
    for flag, (module, name, _line, _label, what) in LIBRARY_SWITCHES.items():
        p.add_argument(flag, type=int, choices=(0, 1), default=None,
                       help=f"{what}, for an A/B ({module}.{name}; default: the library's)")
    return p.parse_args(argv)


def _defaults(a, cuda: bool, world: int):
    if cuda:
        a.seqlens = a.seqlens or ([32768] if a.quick else [32768, 65536, 131072])
        a.heads, a.head_dim = a.heads or 16, a.head_dim or 128
        a.chunk_size = a.chunk_size or 512
        # the first call compiles/autotunes the kernels and sets up NCCL; the native collectives
        # capture their CUDA graphs on the second or third step, the runtime's whole-call graphs
        # (MAGI_ATTENTION_CUDA_GRAPHS) a few layers a step from the second on (runtime/graphs.py's
        # guard): eight warm-ups time the steady state of training (with three, a timed capture
        # step read up to 30% slow on 2 x H200)
        a.warmup = 8 if a.warmup is None else a.warmup
        a.repeats = a.repeats or (3 if a.quick else 5)
    else:
        a.heads, a.head_dim = a.heads or 4, a.head_dim or 32
        a.chunk_size = a.chunk_size or 32
        unit = a.chunk_size * world
        a.seqlens = a.seqlens or [unit * max(2, 256 // unit)]
        a.warmup = 1 if a.warmup is None else a.warmup
        a.repeats = a.repeats or (2 if a.quick else 3)
    a.kv_heads = a.kv_heads or a.heads
    return a


def _ffa_backend_name() -> str:
    """The FFA backend the runtime and the FFA baselines use (MAGI_ATTENTION_KERNEL_BACKEND /
    MAGI_ATTENTION_FA4_BACKEND; "auto" picks triton on CUDA, torch on CPU)."""
    from magi_ffa.select import resolve_backend_name

    return resolve_backend_name()


def _grpcoll_impl_name() -> str:
    """The group-collective implementation the runtime uses (MAGI_ATTENTION_NATIVE_GRPCOLL /
    MAGI_ATTENTION_HIERARCHICAL_COMM, as the runtime reads them)."""
    from magi_attention import env

    if env.is_native_grpcoll_enable():
        return "native"
    return "hier" if env.is_hierarchical_comm_enable() else "a2av"


def main(argv=None) -> int:
    a = parse_args(argv)
    cuda = (a.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_dist: --device cuda but no CUDA device is visible")
    if not cuda:
        os.environ.setdefault("MAGI_ATTENTION_SDPA_BACKEND", "1")
        torch.set_num_threads(1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    pinned = pin_cpus() if a.pin_cpus else None
    if cuda:
        torch.cuda.set_device(local_rank)
    if a.comm_stream_priority is not None:
        from magi_grpcoll.impl import native

        native.COMM_STREAM_PRIORITY = a.comm_stream_priority
    _set_library_switches(a)
    _common.STEP_TIMES = a.step_times
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    a = _defaults(a, cuda, world)
    dtype = torch.bfloat16 if cuda else torch.float32
    hq, hk, d = a.heads, a.kv_heads, a.head_dim
    if a.layers < 1:
        raise SystemExit(f"bench_dist: --layers must be >= 1 (got {a.layers})")
    if a.prefetch_keys and not a.fresh_masks:
        raise SystemExit("bench_dist: --prefetch-keys needs --fresh-masks (a fixed mask has one key)")
    if a.ffn_mult < 0:
        raise SystemExit(f"bench_dist: --ffn-mult must be >= 0 (got {a.ffn_mult})")
    blocks = (feed_forward_layers(a.layers, hq * d, a.ffn_mult, device, dtype, seed=4321 + local_rank)
              if a.ffn_mult else None)
    timer = Timer(device, a.warmup, a.repeats, a.layers, blocks)

    def log(msg):
        if rank == 0:
            print(f"[bench_dist] {msg}", flush=True)

    log(f"world={world} device={device.type} dtype={dtype} hq/hk={hq}/{hk} d={d} "
        f"seqlens={a.seqlens} masks={a.masks} layers={a.layers} warmup={a.warmup} repeats={a.repeats}")
    rows, skipped = [], []
    t_start = time.perf_counter()
    for T in a.seqlens:
        unit = a.chunk_size * world
        if T % unit:  # any world size: round down so every method splits T evenly
            msg = f"T={T} rounded down to {T - T % unit}, a multiple of chunk_size*world={unit}"
            skipped.append(msg)
            log(msg)
            T -= T % unit
        if T <= 0:
            continue
        Tl = T // world
        window = max(1, T // 8)
        doc_base = doc_law(T)["doc_base"]
        gen = torch.Generator(device=device).manual_seed(1234 + T)

        def rnd(n, h, gen=gen):
            return torch.randn(n, h, d, device=device, dtype=dtype, generator=gen)

        q, k, v, do = rnd(T, hq), rnd(T, hk), rnd(T, hk), rnd(T, hq)
        for kind in a.masks:
            make_mask = functools.partial(build_mask, kind, T, window=window, **doc_law(T))
            mask = make_mask()
            area = mask_area(*mask)
            flops = fwd_flops(area, d, hq)
            local_mask = build_mask(kind, Tl, window=window, doc_base=doc_base,
                                    doc_cap=min(T // 4, Tl))
            local_flops = fwd_flops(mask_area(*local_mask), d, hq)
            res = {}
            for m in a.methods:
                reason = None
                if m == "ring":
                    reason = ring_unavailable(kind, device, hq, hk, T, world)
                elif m == "ulysses":
                    reason = ulysses_unavailable(hq, hk, T, world)
                if reason:
                    msg = f"{m} {kind} T={T}: {reason}"
                    if msg not in skipped:
                        skipped.append(msg)
                        log(f"skip {msg}")
                    continue
                t0, counts0 = time.perf_counter(), launch_counts()
                if cuda:  # the method's own peak (the caching allocator's, graph and output pools included)
                    torch.cuda.reset_peak_memory_stats()
                try:
                    if m == "magi":
                        # --fresh-masks: the same documents, in an order of the step's own
                        fresh = make_mask if a.fresh_masks and kind.startswith("varlen") else None
                        tf, tb = run_magi(a, mask, q, k, v, do, timer, mask_of_step=fresh)
                    elif m == "ffa_single":
                        tf, tb = run_ffa_single(local_mask, q[:Tl], k[:Tl], v[:Tl], do[:Tl],
                                                timer)
                    elif m == "ffa_rank":
                        tf, tb = run_ffa_rank(a, kind, mask, q, k, v, do, timer)
                    elif m == "ffa_global":
                        tf, tb = run_ffa_single(mask, q, k, v, do, timer)
                    elif m == "ulysses":
                        tf, tb = run_ulysses(mask, q, k, v, do, timer)
                    else:
                        tf, tb = run_ring(kind, q, k, v, do, timer)
                except Exception as e:  # noqa: BLE001 - a failing baseline is reported, not fatal
                    msg = f"{m} {kind} T={T}: failed with {type(e).__name__}: {e}"
                    skipped.append(msg)
                    log(msg)
                    continue
                # per GPU: ffa_single's own mask; ffa_global the whole mask on one device; the rest
                # (ffa_rank included: its ranks' cells sum to the mask's) share the mask's FLOPs
                fl = {"ffa_single": local_flops, "ffa_global": flops}.get(m, flops / world) * a.layers
                peak = torch.cuda.max_memory_reserved() / 2**30 if cuda else ""
                res[m] = (fl / tf / 1e12, BWD_FACTOR * fl / tb / 1e12, tf, tb, peak)
                log(f"{kind:14s} T={T:7d} {m:10s} fwd {tf * 1e3:9.2f} ms {res[m][0]:8.2f} "
                    f"TFLOP/s/GPU | bwd {tb * 1e3:9.2f} ms {res[m][1]:8.2f} TFLOP/s/GPU "
                    + (f"| peak {peak:.2f} GiB reserved " if cuda else "")
                    + f"({time.perf_counter() - t0:.1f}s)")
                if m == "magi":  # warm-up and timed steps: were the host shortcuts used?
                    log(f"  launch counts: {count_delta(counts0, launch_counts()) or 'none'}")
                if cuda:
                    torch.cuda.empty_cache()
            for m, (f_tf, b_tf, tf, tb, peak) in res.items():
                for direction, tfl, t in (("fwd", f_tf, tf), ("bwd", b_tf, tb)):
                    effs = {col: "" for col in PEER_EFFICIENCY.values()}
                    for peer, col in PEER_EFFICIENCY.items():
                        if m == "magi" and peer in res:
                            base = res[peer][0 if direction == "fwd" else 1]
                            effs[col] = tfl / base if base > 0 else math.nan
                    rows.append({"mask": kind, "total_seqlen": T, "world_size": world,
                                 "method": m, "direction": direction, "time_ms": t * 1e3,
                                 "tflops_per_gpu": tfl, **effs,
                                 "area": area if m != "ffa_single" else mask_area(*local_mask),
                                 "peak_reserved_gib": f"{peak:.2f}" if peak != "" else "",
                                 "note": PEER_NOTES.get(m, "").format(Tl=Tl, T=T)})
        del q, k, v, do
        if cuda:
            torch.cuda.empty_cache()
    if rank == 0:
        header = {"card": card_name(device), "date": datetime.datetime.now().isoformat(
                      timespec="seconds"), "git commit": git_commit(),
                  "command": " ".join([os.path.basename(sys.executable), "-m",
                                       "torch.distributed.run", f"--nproc-per-node {world}"]
                                      + sys.argv),
                  "world size": world, "dtype": str(dtype).replace("torch.", ""),
                  "heads (hq/hk)": f"{hq}/{hk}", "head dim": d, "chunk size": a.chunk_size, "dispatch alg": a.dispatch_alg,
                  "overlap degree": a.degree or "library default",
                  "ffa kernel backend": _ffa_backend_name(),
                  "group collectives": _grpcoll_impl_name() + (
                      f" (comm stream priority {a.comm_stream_priority})" if a.comm_stream_priority is not None else ""),
                  "layers per step": a.layers,
                  "feed-forward blocks": (f"x + gelu(x W1) W2 after each layer, {hq * d} -> {a.ffn_mult * hq * d} "
                                          f"-> {hq * d}; TFLOP/s count attention FLOPs only, over the whole step"
                                          if a.ffn_mult else "none"),
                  "warmup/repeats": f"{a.warmup}/{a.repeats}",
                  "fresh masks": ("varlen masks: a new document order every step, key and dispatch timed "
                                  "with the forward, each layer on K/V clones of its own (from 552f6f4 on; "
                                  "before, all layers shared the dispatched K/V)"
                                  + ("; each step's forward ends by prefetching the next step's key"
                                     if a.prefetch_keys else "")
                                  if a.fresh_masks else "no"),
                  "cpus": f"pinned, rank 0 to {len(pinned)} cpus from {pinned[0]}" if pinned else "not pinned",
                  "torch": torch.__version__,
                  "library environment": library_environment(),
                  "wall time": f"{time.perf_counter() - t_start:.0f} s"}
        _record_library_switches(a, header)
        write_outputs(Path(a.out), rows, skipped, header)
        log(f"wrote {a.out}/bench_dist.csv and bench_dist.md ({len(rows)} rows, "
            f"{len(skipped)} skipped) in {time.perf_counter() - t_start:.0f}s")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
