"""FastLaunch: the JIT launch once per specialisation, the compiled kernel's launcher afterwards.

The real launches need a GPU (test_gpu.py runs every native op through them); here a stand-in
kernel records what FastLaunch asks of it, on CPU, with CUDA's stream lookup faked.
"""

from __future__ import annotations

import torch
from magi_grpcoll.kernels._launch import FastLaunch


class _Compiled:
    function = object()  # what marks a compiled kernel

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args, stream: self.log.append(("direct", grid, args, stream))


class _Kernel:
    arg_names = ["out", "n", "addr", "BLOCK"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def jit(*args, num_warps, **constexprs):
            self.log.append(("jit", grid, args, constexprs, num_warps))
            return _Compiled(self.log)
        return jit


class _CudaLike(FastLaunch):
    def __init__(self, kernel):
        super().__init__(kernel)
        self._enabled = True


def test_fast_launch_reuses_the_compiled_kernel_per_specialisation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda dev: 1234, raising=False)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    k = _Kernel()
    launch = _CudaLike(k)
    out = torch.zeros(8)
    launch((3,), out, 5, 4096, BLOCK=64, num_warps=4)
    launch((7, 2), out, 6, 8192, BLOCK=64, num_warps=4)  # same specialisation: straight to the launcher
    assert [e[0] for e in k.log] == ["jit", "direct"]
    assert k.log[1] == ("direct", (7, 2, 1), (out, 6, 8192, 64), 1234)  # every parameter, in order
    launch((1,), out, 1, 4096, BLOCK=64, num_warps=4)  # n == 1 specialises differently
    launch((1,), out, 5, 4100, BLOCK=64, num_warps=4)  # addr not a multiple of 16
    launch((1,), out, 5, 2**40, BLOCK=64, num_warps=4)  # addr wider than 32 bits
    launch((1,), out, 5, 4096, BLOCK=128, num_warps=4)  # another constexpr
    launch((1,), out, 5, 4096, BLOCK=64, num_warps=8)  # another launch shape
    launch((1,), out[1:], 5, 4096, BLOCK=64, num_warps=4)  # a pointer off 16-byte alignment
    launch((1,), out.double(), 5, 4096, BLOCK=64, num_warps=4)  # another dtype
    assert [e[0] for e in k.log[2:]] == ["jit"] * 7


def test_fast_launch_off_cuda_always_takes_the_jit_path():
    k = _Kernel()
    launch = FastLaunch(k)
    for _ in range(3):
        launch((2,), torch.zeros(4), 5, 4096, BLOCK=64, num_warps=4)
    assert [e[0] for e in k.log] == ["jit"] * 3
