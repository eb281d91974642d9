"""The worker's retry logic: backoff with jitter, and the LLM circuit breaker."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from reference_impl import worker
from reference_impl.worker import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    CircuitBreaker,
    backoff_s,
    retry_delay_s,
)


@given(st.integers(min_value=1, max_value=40))
def test_backoff_is_equal_jitter_of_a_capped_exponential(attempt):
    step = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    delay = backoff_s(attempt)
    assert step / 2 <= delay <= step


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown():
    breaker = CircuitBreaker(threshold=3, cooldown_s=0.05)
    for _ in range(2):
        breaker.record(False)
    assert breaker.allow()
    breaker.record(True)  # a success resets the streak
    for _ in range(3):
        breaker.record(False)
    assert breaker.state == "open"
    assert not breaker.allow()
    deadline = time.monotonic() + 2
    while breaker.state != "half_open":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert breaker.allow()
    breaker.record(False)  # the trial failed: open again at once
    assert breaker.state == "open"
    deadline = time.monotonic() + 2
    while not breaker.allow():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    breaker.record(True)
    assert breaker.state == "closed"


@given(st.integers(min_value=1, max_value=40), st.floats(min_value=0, max_value=60))
def test_a_retry_waits_its_backoff_and_no_less_than_what_refused_it_asked(attempt, not_before):
    delay = retry_delay_s(attempt, not_before)
    assert delay >= not_before
    step = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    assert step / 2 <= delay <= max(step, not_before)


def test_a_job_refused_by_an_open_breaker_comes_back_once_a_trial_call_may_go(monkeypatch):
    """Five attempts' backoff (at least 0.25 + 0.5 + 1 + 2 s) fits inside the 10 s cooldown: a
    job refused at each was dead-lettered without one call. Its retries now wait the breaker
    out, so its next attempt finds it half open."""
    now = [1000.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: now[0])
    breaker = CircuitBreaker(threshold=1, cooldown_s=10.0)
    assert breaker.remaining_s() == 0.0
    breaker.record(False)
    now[0] += 3.0
    assert breaker.remaining_s() == 7.0
    for attempt in range(1, 5):
        assert not breaker.allow()
        delay = retry_delay_s(attempt, breaker.remaining_s())
        now[0] += delay
        assert breaker.allow(), f"attempt {attempt + 1} would be refused again"
        breaker.record(False)  # the trial call fails too: open again, for a full cooldown
