"""Pieces shared by the benchmark scripts (imported as ``_common``: the scripts run by path, so
their own folder is on sys.path).

Why one module: bench_dist and bench_qo_comm draw the same long-tailed document lengths and time
forward/backward the same way (slowest rank's median), so their numbers stay comparable.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["between_layers", "count_delta", "doc_lengths", "feed_forward_layers", "launch_counts", "leaf", "measure",
           "pin_cpus", "stack_layers"]


def doc_lengths(total: int, seed: int, base: int, cap: int) -> list[int]:
    """Long-tailed document lengths summing to ``total``: many near ``base``, a few up to ``cap``."""
    rng = np.random.default_rng(seed)
    out, s = [], 0
    while s < total:
        n = int(min(cap, base * (1.0 + rng.pareto(1.1))))
        n = max(1, min(n, total - s))
        out.append(n)
        s += n
    return out


def pin_cpus() -> list[int]:
    """Pin this process to its block of the CPUs it may use (the allowed CPUs, sorted, cut into
    torchrun's ``LOCAL_WORLD_SIZE`` contiguous blocks; block ``LOCAL_RANK``) and return them.

    Why: a step with a new mask is host-bound, its Python runs on one core at a time, and unpinned
    ranks may move between cores and sockets; on the lent hosts one phase of the same code read up
    to 2x apart between runs. ``--pin-cpus`` lets a run measure whether placement is part of that.
    """
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cpus = sorted(os.sched_getaffinity(0))
    per = max(1, len(cpus) // max(1, local_world))
    mine = cpus[local_rank * per:(local_rank + 1) * per] or cpus
    os.sched_setaffinity(0, mine)
    return mine


#: print rank 0's time of every step, warm-ups included, with what the host shortcuts did in it
#: (``launch_counts``): a median that a capture or an eager call fell into shows there
#: (bench_dist ``--step-times``)
STEP_TIMES = False


def measure(fwd, leaves, dout, device: torch.device, warmup: int,
            repeats: int, over_ranks: str = "max"):
    """(fwd s, bwd s): slowest rank's median of ``repeats`` runs after ``warmup``; with
    ``over_ranks="each"``, (fwd s per rank, bwd s per rank), each rank's median (for a peer whose ranks
    run unequal work on purpose).

    Each run clears the leaves' grads and starts after a device sync and a barrier; CUDA runs are
    timed with events, CPU runs with perf_counter.
    """
    cuda = device.type == "cuda"
    tf, tb = [], []
    log_steps = STEP_TIMES and dist.get_rank() == 0
    for i in range(warmup + repeats):
        counts = launch_counts() if log_steps else None
        for t in leaves:
            t.grad = None
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        if cuda:
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            ev[0].record()
            out = fwd()
            ev[1].record()
            out.backward(dout)
            ev[2].record()
            torch.cuda.synchronize()
            f, b = ev[0].elapsed_time(ev[1]) / 1e3, ev[1].elapsed_time(ev[2]) / 1e3
        else:
            t0 = time.perf_counter()
            out = fwd()
            t1 = time.perf_counter()
            out.backward(dout)
            f, b = t1 - t0, time.perf_counter() - t1
        del out
        if log_steps:
            used = [c for c in count_delta(counts, launch_counts()).split(", ") if c and not c.endswith(" 0")]
            print(f"  step {i} ({'timed' if i >= warmup else 'warm-up'}): fwd {f * 1e3:.2f} ms, bwd {b * 1e3:.2f} ms; "
                  f"{', '.join(used) or 'no shortcuts'}", flush=True)
        if i >= warmup:
            tf.append(f)
            tb.append(b)
    med = torch.tensor([statistics.median(tf), statistics.median(tb)], dtype=torch.float64,
                       device=device)
    if over_ranks == "each":
        every = [torch.empty_like(med) for _ in range(dist.get_world_size())]
        dist.all_gather(every, med)
        return tuple(float(m[0]) for m in every), tuple(float(m[1]) for m in every)
    if over_ranks != "max":
        raise ValueError(f"measure(): over_ranks must be 'max' or 'each' (got {over_ranks!r})")
    dist.all_reduce(med, op=dist.ReduceOp.MAX)
    return float(med[0]), float(med[1])


def leaf(x: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy of ``x`` that takes gradients."""
    return x.detach().clone().requires_grad_(True)


def feed_forward_layers(layers: int, width: int, mult: int, device: torch.device, dtype: torch.dtype,
                        seed: int = 0) -> tuple[list, list[torch.Tensor]]:
    """(blocks, weights): per layer a residual feed-forward block ``x + gelu(x W1) W2`` over a token's
    heads flattened (``width`` = hq * d, hidden ``mult * width``), and its weights as leaves.

    Why: a model's layers give the GPU work between attention calls, behind which the host's work for
    the next call can queue. Stacked attention alone shows the host's cost at its worst (a new mask
    every step is host-bound there); with these blocks between the calls, what stays exposed is what a
    model would see."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def weight(rows, cols):
        w = torch.randn(rows, cols, device=device, dtype=torch.float32, generator=gen) / rows ** 0.5
        return w.to(dtype).requires_grad_(True)

    weights = [weight(*shape) for _ in range(layers) for shape in ((width, mult * width), (mult * width, width))]

    def block(w1, w2):
        def run(x):
            flat = x.reshape(x.shape[0], -1)
            return (flat + torch.nn.functional.gelu(flat @ w1) @ w2).view(x.shape)
        return run

    return [block(weights[2 * i], weights[2 * i + 1]) for i in range(layers)], weights


def between_layers(blocks: tuple[list, list] | None, layers: int) -> tuple[list, list]:
    """(per-layer blocks, their weights): ``feed_forward_layers``' result, or none (identities)."""
    return blocks or ([lambda x: x] * layers, [])


def stack_layers(attn, q, k, v, layers: int, blocks: tuple[list, list] | None = None):
    """(fwd, leaves): ``layers`` calls of ``attn(q, k, v) -> out`` stacked as in a model, layer i's
    output being layer i+1's query and every layer having its own K/V leaves (copies of k, v), so each
    layer's calls see tensors at their own addresses, as the host-side shortcuts keyed by addresses
    (the native collectives' CUDA graphs) meet them in training. ``blocks``: ``feed_forward_layers``'
    (blocks, weights), block i run on layer i's output."""
    kvs = [(k, v)] + [(leaf(k), leaf(v)) for _ in range(layers - 1)]
    after, weights = between_layers(blocks, layers)

    def fwd():
        x = q
        for (k_, v_), block in zip(kvs, after):
            x = block(attn(x, k_, v_))
        return x

    return fwd, [q] + [t for kv in kvs for t in kv] + list(weights)


def launch_counts() -> dict:
    """The host-path shortcuts' counts so far in this process: FA4's launch replay (recorded /
    replayed / refused), the native group collectives' CUDA graphs and the runtime's whole-call
    graphs (replays / captures / eager).
    A timed step that is refused or launched eagerly pays the full host path; diff two readings to
    see what a measurement did. Modules not imported count as absent."""
    counts = {}
    replay = sys.modules.get("magi_ffa.backends.fa4.replay")
    if replay is not None:
        st = replay.stats()
        counts.update({f"fa4 {k}": st[k] for k in ("recorded", "replayed", "refused")})
    graphs = sys.modules.get("magi_grpcoll.impl._graphs")
    if graphs is not None:
        counts.update({f"graphs {k}": v for k, v in graphs.graph_stats().items()})
    calls = sys.modules.get("magi_attention.runtime.graphs")  # whole calc_attn calls (MAGI_ATTENTION_CUDA_GRAPHS)
    if calls is not None:
        counts.update({f"call graphs {k}": v for k, v in calls.stats().items()})
    return counts


def count_delta(before: dict, after: dict) -> str:
    """``after - before`` of two launch_counts() readings, as text (empty when nothing counted)."""
    return ", ".join(f"{k} {after[k] - before.get(k, 0)}" for k in after)
