"""The suite's randomness is replayable: tests/conftest.py seeds `random` and Faker per test from the run's seed (in
the report header, CONTROLPLANE_TEST_SEED replays it), and Hypothesis derandomizes under CI."""

import os
import random

from hypothesis import settings


def _expected(request) -> random.Random:
    return random.Random(f"{os.environ['CONTROLPLANE_TEST_SEED']}:{request.node.nodeid}")


def test_random_draws_follow_the_run_seed_and_test_id_when_a_test_starts(request):
    expected = _expected(request)
    assert [random.random() for _ in range(3)] == [expected.random() for _ in range(3)]


def test_faker_draws_follow_the_run_seed_and_test_id_when_a_test_starts(request):
    import faker.generator

    expected = _expected(request)
    assert [faker.generator.random.random() for _ in range(3)] == [expected.random() for _ in range(3)]


def test_hypothesis_derandomizes_when_ci_is_set():
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:  # a profile asked for by name wins over the CI default
        assert settings.get_current_profile_name() == chosen
    else:
        under_ci = os.environ.get("CI", "").lower() in ("true", "1", "yes")
        assert settings.default.derandomize is under_ci
