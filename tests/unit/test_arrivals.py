from __future__ import annotations

import itertools
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scenarios.arrivals import ArrivalSchedule, per_process_rate


@given(st.floats(min_value=0.1, max_value=1000), st.integers(min_value=0, max_value=10**6))
def test_intended_starts_do_not_depend_on_when_they_are_taken(rate, seed):
    # Two consumers of the same schedule, one taking slots promptly and one after a "stall":
    # the intended times are identical, so a late start shows up as latency.
    a = ArrivalSchedule(rate, start_s=100.0, seed=seed)
    b = ArrivalSchedule(rate, start_s=100.0, seed=seed)
    prompt = [a.take() for _ in range(50)]
    stalled = []
    for _ in range(50):
        stalled.append(b.take())  # whatever happened in between, nothing reads a clock
    assert prompt == stalled
    assert all(x < y for x, y in itertools.pairwise(prompt))
    assert prompt[0] > 100.0


@pytest.mark.parametrize("rate", [0.5, 5.0, 200.0])
def test_the_mean_inter_arrival_time_is_one_over_the_rate(rate):
    s = ArrivalSchedule(rate, start_s=0.0, seed=7)
    times = [s.take() for _ in range(20_000)]
    gaps = [y - x for x, y in zip([0.0, *times], times, strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean (not a fixed interval).
    assert statistics.pstdev(gaps) == pytest.approx(1 / rate, rel=0.05)


def test_workers_split_the_rate_and_their_sum_keeps_it():
    rate, workers, horizon = 40.0, 4, 500.0
    per = per_process_rate(rate, workers)
    counts = 0
    for w in range(workers):
        s = ArrivalSchedule(per, start_s=0.0, seed=w)
        while s.take() < horizon:
            counts += 1
    assert counts / horizon == pytest.approx(rate, rel=0.03)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_rate_must_be_positive(bad):
    with pytest.raises(ValueError, match="rate"):
        ArrivalSchedule(bad, start_s=0.0)
