"""The worker's retry logic: backoff with jitter, and the LLM circuit breaker."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from reference_impl.worker import BACKOFF_BASE_S, BACKOFF_CAP_S, CircuitBreaker, backoff_s


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
