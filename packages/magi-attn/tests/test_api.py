"""Cache behaviour, deprecations and bad-input errors, in one spawned 2-rank gloo job."""

import pytest

from magi_attention.testing import run_distributed

import _dist_cases


@pytest.mark.dist
def test_api_cache_and_errors(use_fake_solver):
    assert run_distributed(_dist_cases.run_api_checks, 2, use_fake_solver, timeout=240) == [True] * 2
