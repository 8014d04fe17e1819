"""First look at Flash-Attention 4 on a GPU machine, before the tests: does FA4 itself run here, and
does the fa4 backend's mask function compile? Prints versions, compile times and max errors; exits
non-zero on the first failure with its traceback (the pytest run that follows gives the full picture).
"""

from __future__ import annotations

import time

import torch


def _timed(label, fn):
    t = time.perf_counter()
    r = fn()
    torch.cuda.synchronize()
    print(f"{label}: {time.perf_counter() - t:.1f} s (first call, compile included)")
    return r


def main() -> None:
    import cutlass
    import flash_attn.cute.interface as fa4

    print("card", torch.cuda.get_device_name(), "torch", torch.__version__, "cutlass-dsl", cutlass.__version__)
    torch.manual_seed(0)
    s, h, d = 1024, 4, 128
    q, k, v = (torch.randn(1, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2).float() for x in (q, k, v)), is_causal=True).transpose(1, 2)
    out = _timed("FA4 plain causal forward", lambda: fa4._flash_attn_fwd(q, k, v, causal=True)[0])
    print(f"  max |FA4 - fp32 SDPA| = {(out.float() - ref).abs().max().item():.3e}")

    from magi_ffa import flex_flash_attn_func

    qr = torch.tensor([[0, s]], dtype=torch.int32, device="cuda")
    tm = torch.tensor([1], dtype=torch.int32, device="cuda")
    leaves = [x[0].detach().requires_grad_() for x in (q, k, v)]
    o, _ = _timed("fa4 backend causal forward", lambda: flex_flash_attn_func(*leaves, qr, qr, tm, backend="fa4"))
    print(f"  max |fa4 backend - fp32 SDPA| = {(o.float() - ref[0]).abs().max().item():.3e}")
    _timed("fa4 backend causal backward", lambda: o.sum().backward())
    print("  grad norms", [round(x.grad.float().norm().item(), 3) for x in leaves])


if __name__ == "__main__":
    main()
