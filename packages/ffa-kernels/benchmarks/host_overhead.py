"""Host time of one flex_flash_attn_func call through the fa4 backend, FA4's kernels replaced by no-ops:
what our wrapper costs per call (checks, backend selection, mask lookup, autograd), on any CPU.

Short kernels are host-bound (a 1k sliding window at 16k tokens runs ~0.3 ms on an H200, and the
call's host path was longer), so this cost decides them; it is measured here without a GPU. The
peers, run side by side with the eager autograd.Function path that eager calls take: the same call
forced through the torch.library custom op (the path torch.compile traces), and the eager path with
FA4's launch replay off (the stand-in's host code then runs on every call, as FA4's would).

    python benchmarks/host_overhead.py [--masks swa_1k,causal,shared_question] [--calls 300] [--repeats 7]

Prints microseconds per call (best of --repeats runs of --calls calls).
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from contextlib import contextmanager
from pathlib import Path

import torch
from bench_ffa import build_mask
from magi_ffa.backends.fa4.replay import ENV

SEQLEN, HEADS, HEAD_DIM = 2048, 1, 64  # small: the no-op kernel's buffers cost next to nothing


def _install_noop_fa4() -> None:
    """The tests' stand-in flash_attn.cute / cutlass modules and the fa4 backend allowed on CPU
    (tests/_fake_fa4.py: the one place that knows which FA4 names the backend uses). Its entry points
    keep their host code (allocations, compile-cache lookups, launches, as FA4's do, so the launch
    replay records and replays them); its kernels only write their outputs."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    import _fake_fa4

    def fwd_kernel(block_size, mask_mod, causal, q, k, v, out, lse, *rest):
        out.zero_(), lse.zero_()

    def bwd_pre(varlen, out, dout, dpsum, dq_accum):
        dpsum.zero_(), dq_accum.zero_()

    def bwd_main(block_size, mask_mod, causal, q, k, v, dout, lse, dpsum, dq_accum, dk, dv, *rest):
        dk.zero_(), dv.zero_()

    _fake_fa4.install_backend_on_cpu(_fake_fa4.KeepForTheProcess, block_size=None)
    _fake_fa4._fwd_kernel, _fake_fa4._bwd_pre_kernel, _fake_fa4._bwd_main_kernel = fwd_kernel, bwd_pre, bwd_main


@contextmanager
def _through_custom_op(on: bool):
    from magi_ffa import ops

    saved = ops._can_run_eagerly
    if on:
        ops._can_run_eagerly = lambda *tensors: False
    try:
        yield
    finally:
        ops._can_run_eagerly = saved


def _best_us(fn, calls: int, repeats: int) -> float:
    for _ in range(max(3, calls // 10)):  # warm-up: caches filled, allocator settled
        fn()
    return min(timeit.timeit(fn, number=calls) / calls for _ in range(repeats)) * 1e6


def measure(mask: str, calls: int, repeats: int) -> dict[str, float]:
    """µs per call: fwd / fwd+bwd, eager and through the custom op."""
    from magi_ffa import flex_flash_attn_func

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(SEQLEN, HEADS, HEAD_DIM, generator=gen, requires_grad=True) for _ in range(3))
    dout = torch.randn(SEQLEN, HEADS, HEAD_DIM, generator=gen)
    qr, kr, tm, _ = build_mask(mask, SEQLEN, "cpu")
    qr, kr, tm = (torch.tensor(x, dtype=torch.int32) for x in (qr, kr, tm))
    qr, kr = qr.reshape(-1, 2), kr.reshape(-1, 2)

    def fwd():
        return flex_flash_attn_func(q, k, v, qr, kr, tm, backend="fa4")[0]

    def fwd_bwd():
        torch.autograd.grad(fwd(), (q, k, v), dout)

    res = {}
    for path in ("eager", "op", "no replay"):
        os.environ[ENV] = "0" if path == "no replay" else "1"
        with _through_custom_op(path == "op"):
            res[f"{path} fwd"] = _best_us(fwd, calls, repeats)
            res[f"{path} fwd+bwd"] = _best_us(fwd_bwd, calls, repeats)
    os.environ.pop(ENV)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", default="swa_1k,causal,shared_question")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args(argv)
    _install_noop_fa4()
    print(f"torch {torch.__version__}, q/k/v [{SEQLEN}, {HEADS}, {HEAD_DIM}] float32 on CPU, FA4 a no-op; "
          f"µs per call, best of {a.repeats} x {a.calls}")
    print("| mask | eager fwd | op fwd | no replay fwd | eager fwd+bwd | op fwd+bwd | no replay fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for mask in a.masks.split(","):
        r = measure(mask, a.calls, a.repeats)
        cells = [f"{r[f'{p} {d}']:.0f}" for d in ("fwd", "fwd+bwd") for p in ("eager", "op", "no replay")]
        print(f"| {mask} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
