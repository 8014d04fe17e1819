"""Shared fixtures: whether the real C++ plan is installed (else tests use the Python fake)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def real_plan_available() -> bool:
    import magi_solver

    return all(hasattr(magi_solver, n) for n in ("make_dispatch_meta", "make_dist_attn_plan",
                                                  "OverlapParams"))


@pytest.fixture(scope="session")
def use_fake_solver() -> bool:
    return not real_plan_available()
