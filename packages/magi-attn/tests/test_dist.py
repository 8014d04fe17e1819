"""End-to-end CPU/gloo tests: dispatch -> calc_attn -> undispatch fwd+bwd vs a float64 reference.

Every world size runs inside the one 4-rank job of conftest.dist_suite (world 2 on two disjoint
pairs at once, world 3 beside world 1), so the spawn is paid once. The whole distributed path
runs in float64 on the torch kernel backend, so errors must be ~1e-12 (checked on each rank).
"""

import pytest
from conftest import dist_cases, hier_cases, suite_outcomes

# ranks that run each world size in the shared job
_PARTICIPANTS = {1: [3], 2: [0, 1, 2, 3], 3: [0, 1, 2], 4: [0, 1, 2, 3]}


@pytest.mark.dist
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_dist_end_to_end(world, dist_suite):
    reports = suite_outcomes(dist_suite, world)
    cases = dist_cases(world)
    assert [r for r, _ in reports] == _PARTICIPANTS[world]
    names = [c["name"] for c in cases]
    for rank, report in reports:
        assert [name for name, _ in report] == names, f"rank {rank} ran {report}"
        for name, errs in report:
            assert errs and all(e < 1e-8 for e in errs.values()), (rank, name, errs)


@pytest.mark.dist
def test_dist_hierarchical_comm(dist_suite):
    """The same pipeline with MAGI_ATTENTION_HIERARCHICAL_COMM=1 on a 2 x 2 DeviceMesh."""
    reports = suite_outcomes(dist_suite, "hier")
    names = [c["name"] for c in hier_cases()]
    assert [r for r, _ in reports] == [0, 1, 2, 3] and len(names) == 4
    for rank, report in reports:
        assert [name for name, _ in report] == names, f"rank {rank} ran {report}"
        for name, errs in report:
            assert errs and all(e < 1e-8 for e in errs.values()), (rank, name, errs)
