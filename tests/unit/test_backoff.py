from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scenarios.backoff import STRATEGIES, Backoff

attempts = st.integers(min_value=1, max_value=80)
seeds = st.integers(min_value=0, max_value=2**32)


@given(st.sampled_from(STRATEGIES), attempts, seeds)
def test_every_delay_is_within_zero_and_the_cap(name, n, seed):
    b = Backoff(name, base_s=0.5, cap_s=20.0)
    for delay in b.schedule(n, random.Random(seed)):
        assert 0 <= delay <= 20.0


@given(attempts, seeds)
def test_no_jitter_is_the_capped_exponential(n, seed):
    b = Backoff("none", base_s=0.5, cap_s=20.0)
    assert b.schedule(n, random.Random(seed)) == [
        min(20.0, 0.5 * 2 ** (k - 1)) for k in range(1, n + 1)
    ]


@given(attempts, seeds)
def test_equal_jitter_keeps_at_least_half_the_step(n, seed):
    b = Backoff("equal", base_s=0.5, cap_s=20.0)
    for k, delay in enumerate(b.schedule(n, random.Random(seed)), start=1):
        step = min(20.0, 0.5 * 2 ** (k - 1))
        assert step / 2 <= delay <= step


@given(attempts, seeds)
def test_decorrelated_jitter_grows_from_the_previous_delay(n, seed):
    b = Backoff("decorrelated", base_s=0.5, cap_s=20.0)
    delays = b.schedule(n, random.Random(seed))
    previous = 0.5
    for delay in delays:
        assert 0.5 <= delay <= min(20.0, max(0.5, previous * 3))
        previous = delay


def test_jitter_spreads_a_storm_and_none_does_not():
    """10,000 phones dropped at once: without jitter they return in lockstep."""
    rng = random.Random(7)
    lockstep = {Backoff("none").delay_s(3, 0.5, rng) for _ in range(10_000)}
    spread = [Backoff("full").delay_s(3, 0.5, rng) for _ in range(10_000)]
    assert len(lockstep) == 1
    # Full jitter: the busiest tenth of the window holds about a tenth of the phones.
    buckets = [0] * 10
    for d in spread:
        buckets[min(9, int(d / 2.0 * 10))] += 1
    assert max(buckets) < 1_300


def test_bad_strategy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="none, full, equal, decorrelated"):
        Backoff("linear")
