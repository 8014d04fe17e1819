"""End-to-end CPU/gloo tests: dispatch -> calc_attn -> undispatch fwd+bwd vs a float64 reference.

All cases of one world size run inside one spawned job (spawning costs seconds on 2 cores).
The whole distributed path runs in float64 on the torch kernel backend, so errors must be ~1e-12.
"""

import pytest

from magi_attention.testing import run_distributed

import _dist_cases

ENV = {"MAGI_ATTENTION_SDPA_BACKEND": "1", "MAGI_ATTENTION_DSINK_ALL_REDUCE_OP": "sum"}


def _cases(world):
    base = dict(hq=4, hk=2, d=8, T=96, chunk=8)
    cases = [
        dict(base, name="full", mask="full", degree=1),
        dict(base, name="causal-deg2", mask="causal", degree=2),
        dict(base, name="varlen-full", mask="varlen_full", cu=[0, 20, 57, 96], degree=1),
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
    ]
    return cases


@pytest.mark.dist
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_dist_end_to_end(world, use_fake_solver):
    cases = _cases(world)
    if world in (1, 3):
        cases = cases[::2]
    reports = run_distributed(_dist_cases.run_cases, world, cases, use_fake_solver, env=ENV,
                              timeout=300)
    assert len(reports) == world and all(len(r) == len(cases) for r in reports)
