"""Pieces shared by the benchmark scripts (imported as ``_common``: the scripts run by path, so
their own folder is on sys.path).

Why one module: bench_dist and bench_qo_comm draw the same long-tailed document lengths and time
forward/backward the same way (slowest rank's median), so their numbers stay comparable.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["doc_lengths", "measure"]


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


def measure(fwd, leaves, dout, device: torch.device, warmup: int,
            repeats: int) -> tuple[float, float]:
    """(fwd s, bwd s): slowest rank's median of ``repeats`` runs after ``warmup``.

    Each run clears the leaves' grads and starts after a device sync and a barrier; CUDA runs are
    timed with events, CPU runs with perf_counter.
    """
    cuda = device.type == "cuda"
    tf, tb = [], []
    for i in range(warmup + repeats):
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
        if i >= warmup:
            tf.append(f)
            tb.append(b)
    med = torch.tensor([statistics.median(tf), statistics.median(tb)], dtype=torch.float64,
                       device=device)
    dist.all_reduce(med, op=dist.ReduceOp.MAX)
    return float(med[0]), float(med[1])
