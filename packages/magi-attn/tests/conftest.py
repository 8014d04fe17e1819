"""Shared fixtures: the one spawned gloo job that runs every distributed CPU case.

Spawning ranks and importing torch cost far more on a small CPU machine than the float64 cases,
so all world sizes (1-4) and the API checks share one 4-rank job (see _dist_cases.run_suite);
the tests only read its per-rank outcomes.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Float64 on the torch kernel backend; dsink summed over the cp group so it matches the reference.
DIST_ENV = {"MAGI_ATTENTION_SDPA_BACKEND": "1", "MAGI_ATTENTION_DSINK_ALL_REDUCE_OP": "sum"}


def dist_cases(world: int) -> list[dict]:
    """The end-to-end cases run at a given world size (world 1 and 3 take every other one)."""
    base = dict(hq=4, hk=2, d=8, T=96, chunk=8)
    cases = [
        dict(base, name="full", mask="full", degree=1),
        dict(base, name="causal-deg2", mask="causal", degree=2),
        dict(base, name="varlen-full-sanity", mask="varlen_full", cu=[0, 20, 57, 96], degree=1,
             env={"MAGI_ATTENTION_SANITY_CHECK": "1"}),
        dict(base, name="varlen-causal-deg3", mask="varlen_causal", cu=[0, 33, 40, 96],
             degree=3),
        dict(base, name="sliding-window", mask="sliding_window", cu=[0, 50, 96],
             window=(7, 3), degree=2),
        dict(base, name="block-causal-dyn", mask="block_causal", block=24, degree="dynamic"),
        dict(base, name="shared-question", mask="shared_question", q_len=30,
             answers=[20, 25, 21], degree=4),
        dict(base, name="random-sink-softcap", mask="random", seed=3, sink=True, softcap=5.0,
             degree=2, T=90),
        dict(base, name="mha-odd-pad", mask="causal", hq=2, hk=2, T=83, degree=1, sink=True),
        dict(base, name="hide-tail", mask="varlen_causal", cu=[0, 40, 96], degree=3,
             env={"MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
        # one remote stage: its dK/dV reduce is issued before the host stage and folded at its wait
        dict(base, name="hide-tail-one-stage", mask="causal", degree=1, fold_at_wait=True,
             env={"MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
        dict(base, name="one-stage-folds-on-arrival", mask="varlen_causal", cu=[0, 37, 96], degree=1,
             fold_at_wait=False),
        # the runtime's path for a magi_grpcoll without list casts (interface < 1.2): cat([k, v])
        dict(base, name="kv-concatenated", mask="varlen_causal", cu=[0, 29, 70, 96], degree=2,
             cast_lists=False),
        # the kernel calls through ffa_forward / ffa_backward (a magi_ffa without FFACall), and bound
        # (documents of their own: a runtime is cached by its key, and decides at its first call)
        dict(base, name="unbound-kernel-calls", mask="varlen_causal", cu=[0, 17, 58, 96], degree=2,
             bound_calls=False),
        dict(base, name="bound-kernel-calls", mask="varlen_causal", cu=[0, 45, 80, 96], degree=2,
             bound_calls=True),
        dict(base, name="cost-aware-dispatch", mask="sliding_window", cu=[0, 61, 96], window=(12, 0),
             degree=2, dispatch="cost_aware"),
        # cost-aware without the turned split picks chunk 16 at world 2 for these documents (twice the
        # key's 8): a dispatch whose chunks are coarser than the key's (tests/test_dispatch_choice.py
        # covers the choice; with the turn it picks a turned split at chunk 8)
        dict(base, name="cost-aware-coarse-chunks", mask="varlen_causal", cu=[0, 29, 70, 96], degree=2,
             dispatch="cost_aware_unturned", dispatch_chunk={2: 16}),
        dict(base, name="kv-strided-views", mask="causal", degree=2, kv_views=True),
        # the host stage launched before the casts, which wait for the inputs only (a stand-in for
        # the CUDA event and side stream; HOST_STAGE_FIRST), and with the kept tail first
        dict(base, name="host-stage-first", mask="varlen_causal", cu=[0, 29, 70, 96], degree=2,
             launch_order=True),
        dict(base, name="tail-first-then-casts", mask="causal", degree=3, launch_order=True,
             env={"MAGI_ATTENTION_BWD_HIDE_TAIL_REDUCE": "1"}),
        # the sequential split turned (one rank holds the sequence's start and its end)
        dict(base, name="rotated-sequential-dispatch", mask="sliding_window", cu=[0, 61, 96], window=(12, 0),
             degree=2, dispatch="rotated_sequential"),
        # the backward's host stage in two calls, the block no reduce touches after the remote stage
        # (runtime/host_split.py, off by default): taken on both ranks at world 2, and with the switch off
        dict(base, name="host-split-backward", mask="varlen_causal", cu=[0, 10, 22, 30, 41, 57, 66, 80, 96],
             degree=1, split_host_backward=True, host_split={2: 2}),
        dict(base, name="host-split-off", mask="varlen_causal", cu=[0, 12, 22, 30, 41, 57, 66, 80, 96],
             degree=1, split_host_backward=False, host_split={2: 0}),
    ]
    return cases[::2] if world in (1, 3) else cases


def hier_cases() -> list[dict]:
    """World-4 cases rerun with hierarchical comm (2 nodes x 2 ranks, magi_grpcoll's hier impl)."""
    env = {"MAGI_ATTENTION_HIERARCHICAL_COMM": "1"}
    return [dict(c, env=dict(c.get("env", {}), **env)) for c in dist_cases(4)
            if c["name"] in ("causal-deg2", "varlen-causal-deg3", "block-causal-dyn", "random-sink-softcap")]


@pytest.fixture(scope="session")
def dist_suite() -> list[dict]:
    """Per-rank outcomes {"api" | world: ("ok", result) | ("error", traceback)} of the job."""
    import _dist_cases
    from magi_attention.testing import run_distributed

    cases = {w: dist_cases(w) for w in (1, 2, 3, 4)}
    cases["hier"] = hier_cases()
    return run_distributed(_dist_cases.run_suite, _dist_cases.SUITE_WORLD, cases, env=DIST_ENV,
                           timeout=420)


def suite_outcomes(suite: list[dict], key) -> list[tuple[int, object]]:
    """(rank, result) for every rank that ran ``key``; fails with the first rank's traceback."""
    got = []
    for rank, res in enumerate(suite):
        if key not in res:
            continue
        status, payload = res[key]
        if status != "ok":
            pytest.fail(f"{key!r} failed on rank {rank}:\n{payload}", pytrace=False)
        got.append((rank, payload))
    return got
