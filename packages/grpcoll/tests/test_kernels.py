"""Row kernels: torch versions vs float64 references, Triton versions under TRITON_INTERPRET=1.

TRITON_INTERPRET must be set before triton decorates the kernels, so the Triton checks run this
file as a script in a fresh interpreter (small fp32 shapes; the interpreter is slow).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch
from magi_grpcoll.kernels import gather_rows, reduce_rows
from magi_grpcoll.plan import GroupReducePlan, ReduceMap
from magi_grpcoll.testing import random_cast_meta, reduce_meta_of, ref_group_reduce, simulate_reduce


def _check_all(backend: str, n_meta: int = 3) -> None:
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(9, 3, 5, generator=gen)
    rows = torch.tensor([4, 4, 0, 8, 2], dtype=torch.int64)
    assert torch.equal(gather_rows(src, rows, backend=backend), src[rows])
    assert gather_rows(src, rows[:0], backend=backend).shape == (0, 3, 5)
    # rows with more contributors than the Triton sum kernel unrolls (it loops at run time then)
    for n_contrib in (3, 11):
        rmap = ReduceMap.from_pieces([(0, 1, 4 * c, 4) for c in range(n_contrib)], None, [], "cpu")
        recv, out = torch.randn(4 * n_contrib, 2, 5, generator=gen), torch.randn(6, 2, 5, generator=gen)
        want = out.double().clone()
        want[1:5] += recv.double().view(n_contrib, 4, 2, 5).sum(0)
        got = reduce_rows(out.clone(), recv, rmap, "sum", backend=backend)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    rng = random.Random(5)
    for op in ("sum", "avg", "lse"):
        for acc in (True, False):
            for _ in range(n_meta):
                world = 3
                rm = reduce_meta_of(random_cast_meta(world, rng))
                plans = [GroupReducePlan.build(*rm[p], rank=p, world_size=world) for p in range(world)]
                ins = [torch.randn(sum(m[0]), 2, 5, generator=gen) for m in rm]
                outs = [torch.randn(sum(m[1]), 2, 5, generator=gen) for m in rm]
                il = [torch.randn(sum(m[0]), 2, generator=gen) for m in rm]
                ol = [torch.randn(sum(m[1]), 2, generator=gen) for m in rm]
                for t in il + ol:
                    if t.numel():
                        t[torch.rand(t.shape, generator=gen) < 0.3] = -torch.inf
                ref = ref_group_reduce(ins, outs, [m[0] for m in rm], [m[2] for m in rm], [m[1] for m in rm],
                                       [m[3] for m in rm], op, acc_reduce=acc, input_lses=il, output_lses=ol)
                got, got_l = [o.clone() for o in outs], [t.clone() for t in ol]
                simulate_reduce(plans, ins, got, op, acc_reduce=acc, input_lses=il, output_lses=got_l,
                                backend=backend)
                ref_o = ref[0] if op == "lse" else ref
                for p in range(world):
                    assert not torch.isnan(got[p]).any(), f"{backend} {op}: NaN"
                    torch.testing.assert_close(got[p].double(), ref_o[p], rtol=1e-5, atol=1e-5)
                    if op == "lse":
                        torch.testing.assert_close(got_l[p].double(), ref[1][p], rtol=1e-5, atol=1e-5)


def test_torch_kernels_match_reference():
    _check_all("torch")


def test_lse_all_neg_inf_rows_end_zero():
    plan = GroupReducePlan.build([2], [2], [0], [[0]], rank=0, world_size=1)
    out = torch.full((2, 1, 4), float("nan"))  # garbage behind an lse of -inf is never multiplied
    out_l = torch.full((2, 1), float("-inf"))
    x = torch.randn(2, 1, 4)
    x_l = torch.tensor([[float("-inf")], [0.5]])
    reduce_rows(out, x, plan.rmap, "lse", output_lse=out_l, recv_lse=x_l, backend="torch")
    assert torch.equal(out[0], torch.zeros(1, 4)) and out_l[0, 0] == float("-inf")
    torch.testing.assert_close(out[1], x[1])
    assert out_l[1, 0] == 0.5


def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "triton kernels ok" in proc.stdout


if __name__ == "__main__":  # the Triton interpreter run
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _check_all("triton", n_meta=1)
    print("triton kernels ok")
