"""Cache behaviour, deprecations and bad-input errors, inside the shared 4-rank gloo job."""

import pytest
from conftest import suite_outcomes


@pytest.mark.dist
def test_api_cache_and_errors(dist_suite):
    results = suite_outcomes(dist_suite, "api")
    assert [r for _, r in results] == [True] * 4
