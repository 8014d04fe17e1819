"""profile_dist.py (benchmarks), the parts that run without a GPU: how ``--stages`` splits a call into
its largest slice and the rest, and the host-clock timing of a dry run."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import profile_dist  # noqa: E402


def _calc(q, k, t):
    return SimpleNamespace(q_ranges=torch.tensor(q, dtype=torch.int32), k_ranges=torch.tensor(k, dtype=torch.int32),
                           types=torch.tensor(t, dtype=torch.int32))


def test_largest_slice_and_the_rest_partition_the_call():
    calc = _calc([[0, 10], [10, 100], [100, 105]], [[0, 5], [0, 50], [0, 500]], [0, 1, 0])
    (big_name, big), (rest_name, rest) = profile_dist._largest_slice_and_rest(calc)
    assert big_name == "largest slice alone" and rest_name == "the other slices"
    assert big[0].tolist() == [[10, 100]] and big[1].tolist() == [[0, 50]] and big[2].tolist() == [1]
    assert rest[0].tolist() == [[0, 10], [100, 105]] and rest[2].tolist() == [0, 0]
    # every slice is in exactly one part
    got = sorted(map(tuple, big[0].tolist() + rest[0].tolist()))
    assert got == sorted(map(tuple, calc.q_ranges.tolist()))


def test_a_call_of_one_slice_is_not_split():
    assert profile_dist._largest_slice_and_rest(_calc([[0, 8]], [[0, 8]], [1])) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the host-clock path of a machine without CUDA")
def test_timing_without_cuda_uses_the_host_clock():
    calls = []
    ms = profile_dist._timed(lambda: calls.append(1), n=5)
    assert ms >= 0 and len(calls) == 3 + 5  # three warm-ups, then one call per sample


def test_host_timers_clock_the_path_and_put_every_function_back():
    import inspect

    import magi_ffa
    from _host_timers import HostTimers
    from magi_ffa.backends.fa4 import FA4Backend

    originals = (magi_ffa.ffa_forward, inspect.getattr_static(FA4Backend, "_store"))
    timers = HostTimers().install()
    try:
        assert isinstance(inspect.getattr_static(FA4Backend, "_store"), staticmethod)  # still a staticmethod
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(64, 2, 16, generator=g) for _ in range(3))
        call = lambda: magi_ffa.ffa_forward(q, k, v, [[0, 64]], [[0, 64]], [1], softmax_scale=0.25,  # noqa: E731
                                            backend="torch")
        call()  # inactive: not counted
        assert not timers.total
        timers.active = True
        for _ in range(3):
            call()
        timers.active = False
        assert timers.calls["api.ffa_forward"] == 3 and timers.calls["api._prepare"] == 3
        assert timers.total["api.ffa_forward"] >= timers.total["api._prepare"] > 0  # inclusive
        table = timers.table(3, "call")
        assert "per call (3 calls)" in table and table.index("api.ffa_forward") < table.index("api._prepare")
    finally:
        timers.uninstall()
    assert (magi_ffa.ffa_forward, inspect.getattr_static(FA4Backend, "_store")) == originals


def test_fa4_form_names_the_native_parts_a_staircase_runs_as():
    from magi_ffa.backends.fa4.block_sparse import build_slice_block_mask

    def form(q, k, t, sq, sk):
        return profile_dist.fa4_mask_form(build_slice_block_mask(q, k, t, sq, sk))

    # documents of one length: FA4's batch layout; of two lengths: its own varlen masking; one call each
    assert form([[0, 256], [256, 512]], [[0, 256], [256, 512]], [1, 1], 512, 512) == "batch of 2 causal docs"
    assert form([[0, 200], [200, 512]], [[0, 200], [200, 512]], [1, 1], 512, 512).startswith("varlen causal 2 docs")
    # a staircase off the block grid (each chunk sees every key before it, as a remote stage of a document cut
    # into chunks): one call would need the mask function; it runs as two native row layers both ways
    stair = form([[0, 200], [200, 456]], [[0, 200], [0, 456]], [0, 0], 512, 512)
    assert stair == "fwd+bwd 2 row layers (256 x 456 full; 200 x 200 full)", stair
    # two overlapping slices of different types: one masked call
    assert form([[0, 300], [100, 400]], [[0, 300], [50, 350]], [0, 1], 512, 512) == "block lists + mask fn"
