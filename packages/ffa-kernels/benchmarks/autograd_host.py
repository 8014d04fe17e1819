"""Where the host time of an fa4 backward goes when torch's autograd engine runs it, on a GPU.

profile_fa4.py found flex_flash_attn_func's backward (torch.autograd.grad) at 0.4-0.7 ms of host time
per call at 8k-16k tokens where the same op body called directly (ops._bwd_impl) takes 0.15-0.3 ms.
This splits the difference, each row host µs per call over back-to-back calls (no sync between
them), median of --repeats runs:

  impl            ops._bwd_impl on the main thread (the op body alone)
  impl_thread     the same body on one persistent worker thread, each call handed over and awaited
                  (a thread switch per call, as the engine's device thread makes)
  autograd        torch.autograd.grad over flex_flash_attn_func's output (what training calls)
  autograd_body   time spent inside ops._backward during `autograd` (on the engine's thread)
  null_autograd   an autograd.Function on the same tensors whose backward launches nothing: the
                  engine's own cost per backward
  fa4_autograd    Flash-Attention 4's own autograd backward (full / causal / varlen masks only)

plus cProfile of ops._backward on the engine's thread (--profile), and the forward's rows impl and
autograd for reference.

    python benchmarks/autograd_host.py [--masks varlen_causal,block_sparse_10] [--total 8192] [--pin-host-threads CPU]

Where the threads run decides much of it (PERF_NOTES "Thread placement"): the whole process on one core
(``taskset -c N``) halved the backward's host time, two cores did not. ``--pin-host-threads`` pins only the
main thread and the engine's device thread (bench_ffa.host_threads_pinned), leaving the others free; the last
line lists every thread's CPUs as the measurement left them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import pstats
import time
from pathlib import Path

import torch
from bench_ffa import build_mask, fa4_runner, host_ms_per_call, host_threads_pinned

N = 40


def _host_us(fn, repeats: int) -> float:
    return host_ms_per_call(fn, N, repeats, extra_warm=2) * 1e3  # compiled, recorded, replayed


class _Null(torch.autograd.Function):
    """The engine's cost alone: a backward that returns fresh gradients and launches no kernel."""

    @staticmethod
    def forward(ctx, q, k, v):
        return q.view_as(q)  # no kernel

    @staticmethod
    def backward(ctx, dout):
        return dout, torch.empty_like(dout), torch.empty_like(dout)


class _BodyClock:
    """Wraps ops._backward: time inside it, and optionally cProfile, on whatever thread runs it."""

    def __init__(self, ops, profile: bool):
        self.ops, self.inner, self.total, self.calls = ops, ops._backward, 0.0, 0
        self.prof = cProfile.Profile() if profile else None

    def __call__(self, *args):
        if self.prof is not None:
            self.prof.enable()
        t = time.perf_counter()
        try:
            return self.inner(*args)
        finally:
            self.total += time.perf_counter() - t
            self.calls += 1
            if self.prof is not None:
                self.prof.disable()

    def __enter__(self):
        self.ops._backward = self
        return self

    def __exit__(self, *exc):
        self.ops._backward = self.inner


def measure(mask_name: str, total: int, heads: int, repeats: int, profile: bool) -> dict[str, float]:
    from magi_ffa import flex_flash_attn_func, ops

    qr, kr, tm, _ = build_mask(mask_name, total, "cuda")
    dev = torch.device("cuda")
    qr_t, kr_t, tm_t = (torch.tensor(x, dtype=torch.int32, device=dev) for x in (qr, kr, tm))
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(total, heads, 128, device=dev, dtype=torch.bfloat16) for _ in range(4))
    scale = 128 ** -0.5
    res: dict[str, float] = {}

    fwd_impl = lambda: ops._fwd_impl(q, k, v, qr_t, kr_t, tm_t, None, "sh", scale, 0.0, False, False, "fa4")  # noqa: E731
    o_i, lse_i, _ = fwd_impl()
    bwd_impl = lambda: ops._bwd_impl(dout, q, k, v, o_i, lse_i, qr_t, kr_t, tm_t, None, "sh", scale, 0.0,  # noqa: E731
                                     False, "fa4")
    res["fwd impl"] = _host_us(fwd_impl, repeats)
    res["bwd impl"] = _host_us(bwd_impl, repeats)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        res["bwd impl_thread"] = _host_us(lambda: pool.submit(bwd_impl).result(), repeats)

    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    fwd = lambda: flex_flash_attn_func(*leaves, qr_t, kr_t, tm_t, backend="fa4")[0]  # noqa: E731
    res["fwd autograd"] = _host_us(fwd, repeats)
    o = fwd()
    bwd = lambda: torch.autograd.grad(o, leaves, dout, retain_graph=True)  # noqa: E731
    with _BodyClock(ops, profile=False) as clock:
        res["bwd autograd"] = _host_us(bwd, repeats)
        res["bwd autograd_body"] = clock.total * 1e6 / clock.calls
    o_null = _Null.apply(*leaves)
    res["bwd null_autograd"] = _host_us(lambda: torch.autograd.grad(o_null, leaves, dout, retain_graph=True),
                                        repeats)
    try:
        _, fa4_bwd = fa4_runner(mask_name, *leaves, dout, qr)
        res["bwd fa4_autograd"] = _host_us(fa4_bwd, repeats)
    except (NotImplementedError, ImportError):  # a mask FA4 cannot express; no FA4 autograd entry point
        pass
    if profile:
        with _BodyClock(ops, profile=True) as clock:
            for _ in range(N):
                bwd()
            torch.cuda.synchronize()
        print(f"--- {mask_name}: cProfile of ops._backward on the engine's thread, {N} calls")
        pstats.Stats(clock.prof).sort_stats("tottime").print_stats(25)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", default="varlen_causal,block_sparse_10")
    ap.add_argument("--total", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--pin-host-threads", type=int, default=None, metavar="CPU",
                    help="measure with the main thread and torch's autograd device thread on this CPU alone; "
                         "the other threads (CUDA's own, the pool's) keep every CPU (taskset pins them all)")
    a = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, total {a.total}, heads {a.heads}, d 128, bf16, fa4 backend; "
          f"host µs per call, median of {a.repeats} x {N} back-to-back calls"
          + (f"; host threads on CPU {a.pin_host_threads}" if a.pin_host_threads is not None else ""))
    torch.cuda.init()
    with host_threads_pinned(a.pin_host_threads):
        rows = {m: measure(m, a.total, a.heads, a.repeats, a.profile) for m in a.masks.split(",")}
        threads = _thread_cpus()
    cols = sorted({c for r in rows.values() for c in r}, key=lambda c: (not c.startswith("fwd"), c))
    print("| mask | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for m, r in rows.items():
        print(f"| {m} | " + " | ".join(f"{r[c]:.0f}" if c in r else "–" for c in cols) + " |")
    print("threads while measuring (name: CPUs allowed): " + "; ".join(threads))


def _thread_cpus() -> list[str]:
    """Each thread of this process with the CPUs it may run on (Linux /proc): where the pin went."""
    out = []
    for task in sorted(Path("/proc/self/task").iterdir(), key=lambda p: int(p.name)):
        try:
            fields = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        except OSError:  # the thread ended meanwhile
            continue
        out.append(f"{fields.get('Name', '?').strip()}: {fields.get('Cpus_allowed_list', '?').strip()}")
    return out


if __name__ == "__main__":
    main()
