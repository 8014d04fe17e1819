"""Where the fa4 backend's time goes, per call at 16k tokens (bf16, d 128, 16 heads), forward and
backward: host time (wall clock of N calls issued back to back, before the final sync), GPU kernel
time (torch.profiler, summed per call) and do_bench time, for

  fa4_lists      FA4 with our block lists but no mask function (partial tiles computed as full:
                 not the mask, a floor for the block-sparse path)
  fa4_sparse     FA4 with our block lists and interval mask function (kernel.fa4_forward/backward)
  fa4_native     FA4's own causal / window / varlen masking, where native.py recognises the mask
  ffa_fa4_impl   the same op bodies called directly (ops._fwd_impl / _bwd_impl): the wrapper's own cost,
                 without torch's autograd engine
  ffa_fa4        flex_flash_attn_func(backend="fa4"): what users call
  ffa_triton     flex_flash_attn_func(backend="triton")

    python benchmarks/profile_fa4.py [--masks causal,swa_1k,varlen_causal,shared_question] [--total 16384]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import triton.testing
from bench_ffa import build_mask, host_ms_per_call, mask_area
from torch.profiler import ProfilerActivity, profile

N = 20


def _gpu_ms(fn) -> float:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(N):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / N


def _host_profile(fn) -> None:
    """Where the host time of a call goes (cProfile, top functions by own time)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(N):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


def _variants(mask_name, q, k, v, dout, qr, kr, tm):
    import flash_attn.cute.interface as fa4
    from magi_ffa import flex_flash_attn_func
    from magi_ffa.backends.fa4.block_sparse import build_slice_block_mask
    from magi_ffa.backends.fa4.kernel import _fa4_lists, fa4_backward, fa4_forward, sparse_block_size

    dev = q.device
    qr_t, kr_t = (torch.tensor(x, dtype=torch.int32, device=dev) for x in (qr, kr))
    tm_t = torch.tensor(tm, dtype=torch.int32, device=dev)
    major, minor = torch.cuda.get_device_capability()
    mask = build_slice_block_mask(qr, kr, tm, q.shape[0], k.shape[0],
                                  sparse_block_size(10 * major + minor), device=dev)
    scale = q.shape[-1] ** -0.5
    b = [x.unsqueeze(0) for x in (q, k, v, dout)]
    out, lse = fa4_forward(q, k, v, mask, scale, 0.0)

    lists_f, lists_b = _fa4_lists(mask.fwd, mask.block_size), _fa4_lists(mask.bwd, mask.block_size)
    lse4 = lse.transpose(0, 1).unsqueeze(0).contiguous()
    sparse = dataclasses.replace(mask, native=None)
    yield "fa4_lists", (
        lambda: fa4._flash_attn_fwd(*b[:3], block_sparse_tensors=lists_f, return_lse=True),
        lambda: fa4._flash_attn_bwd(*b[:3], out.unsqueeze(0), b[3], lse4, block_sparse_tensors=lists_b))
    yield "fa4_sparse", (lambda: fa4_forward(q, k, v, sparse, scale, 0.0),
                         lambda: fa4_backward(q, k, v, out, dout, lse, sparse, scale, 0.0))
    if mask.native is not None:
        yield "fa4_native", (lambda: fa4_forward(q, k, v, mask, scale, 0.0),
                             lambda: fa4_backward(q, k, v, out, dout, lse, mask, scale, 0.0))
    # our wrapper without torch's autograd engine (which runs a CUDA backward on its device thread)
    from magi_ffa import ops

    o_i, lse_i, _ = ops._fwd_impl(q, k, v, qr_t, kr_t, tm_t, None, "sh", scale, 0.0, False, False, "fa4")
    yield "ffa_fa4_impl", (
        lambda: ops._fwd_impl(q, k, v, qr_t, kr_t, tm_t, None, "sh", scale, 0.0, False, False, "fa4"),
        lambda: ops._bwd_impl(dout, q, k, v, o_i, lse_i, qr_t, kr_t, tm_t, None, "sh", scale, 0.0, False,
                              "fa4"))
    for backend in ("fa4", "triton"):
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        fwd = lambda be=backend, lv=leaves: flex_flash_attn_func(*lv, qr_t, kr_t, tm_t, backend=be)[0]  # noqa: E731
        o = fwd()
        yield f"ffa_{backend}", (fwd, lambda o=o, lv=leaves: torch.autograd.grad(o, lv, dout, retain_graph=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--masks", default="causal,swa_1k,varlen_causal,shared_question")
    ap.add_argument("--total", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--host-profile", action="store_true", help="cProfile the ffa_fa4 calls (forward, and backward without autograd)")
    a = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}  total {a.total}  heads {a.heads}  d 128  bf16   (ms per call)")
    print(f"{'mask':14} {'variant':12} {'pass':4} {'host':>7} {'gpu':>7} {'bench':>7} {'TF/s':>6}")
    for mname in a.masks.split(","):
        qr, kr, tm, _ = build_mask(mname, a.total, "cuda")
        area = mask_area(qr, kr, tm)
        torch.manual_seed(0)
        q, k, v, dout = (torch.randn(a.total, a.heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        for name, fns in _variants(mname, q, k, v, dout, qr, kr, tm):
            for pname, fn, mult in (("fwd", fns[0], 1.0), ("bwd", fns[1], 2.5)):
                try:
                    host, gpu = host_ms_per_call(fn, N), _gpu_ms(fn)  # warmed past the replay's recording
                    bench = triton.testing.do_bench(fn, quantiles=[0.5])
                    tf = mult * 4 * area * 128 * a.heads / bench / 1e9
                    print(f"{mname:14} {name:12} {pname:4} {host:7.3f} {gpu:7.3f} {bench:7.3f} {tf:6.0f}")
                    if a.host_profile and name in ("ffa_fa4", "ffa_fa4_impl"):
                        _host_profile(fn)
                except Exception as e:  # keep profiling the other variants
                    print(f"{mname:14} {name:12} {pname:4} failed: {type(e).__name__}: {str(e)[:160]}")
    from magi_ffa.backends.fa4 import replay

    print(f"fa4 launch replay: {replay.stats()}")


if __name__ == "__main__":
    main()
