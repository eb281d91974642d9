"""The worker's retry logic (backoff with jitter, the LLM circuit breaker) and its idle polls."""

from __future__ import annotations

import itertools
import time

from hypothesis import given
from hypothesis import strategies as st

from reference_impl import worker
from reference_impl.worker import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    CONCURRENCY,
    IDLE_POLL_S,
    CircuitBreaker,
    backoff_s,
    poll_offset_s,
    retry_delay_s,
    until_poll_s,
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


def largest_gap(offsets: list[float]) -> float:
    xs = sorted(offsets)
    return max([b - a for a, b in itertools.pairwise(xs)] + [IDLE_POLL_S - xs[-1] + xs[0]])


def test_idle_polls_are_spread_over_the_period_for_any_number_of_workers():
    """A job waits for the next poll of any loop: the polls of 1 to 10 workers' loops leave no
    gap longer than 1.66 times an even spacing's (3 workers: 19 ms of the 200 ms, where loops
    polling in clumps left 80-100 ms)."""
    for workers in range(1, 11):
        names = [f"worker{k}" for k in range(1, workers + 1)]
        offsets = [poll_offset_s(name, i) for name in names for i in range(CONCURRENCY)]
        assert all(0 <= o < IDLE_POLL_S for o in offsets)
        even = IDLE_POLL_S / len(offsets)
        assert largest_gap(offsets) <= 1.66 * even, workers


def test_pod_names_are_placed_by_their_hash_even_when_they_end_in_digits():
    """A Deployment's pods are named `worker-<hash>-<suffix>`, and a suffix may end in digits:
    two such pods must not share their slots because their last digits match."""
    pods = ["worker-7d9f8c-x2kq9", "worker-7d9f8c-ab9", "worker-7d9f8c-bc9", "worker-5f6-zzzzz"]
    offsets = {poll_offset_s(pod, 0) for pod in pods}
    assert len(offsets) == len(pods)
    assert all(0 <= o < IDLE_POLL_S for pod in pods for o in [poll_offset_s(pod, 3)])


@given(
    st.floats(min_value=1.7e9, max_value=2.0e9),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=0, max_value=CONCURRENCY - 1),
)
def test_a_loop_waits_for_its_own_slot_and_never_longer_than_a_period(now, k, index):
    wait = until_poll_s(f"worker{k}", index, now)
    assert 0 < wait <= IDLE_POLL_S
    phase = (now + wait - poll_offset_s(f"worker{k}", index)) % IDLE_POLL_S
    assert min(phase, IDLE_POLL_S - phase) < 1e-6  # it wakes on its slot
