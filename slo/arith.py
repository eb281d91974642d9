"""The SLO arithmetic, pure: ratios, error budgets, burn rates, time slices, quantiles from
histogram buckets, window alignment, baseline comparison. Property-tested (tests/unit)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from slo.model import Op


def meets(op: Op, measured: float, objective: float) -> bool:
    """Whether `measured op objective` holds."""
    if op == "lt":
        return measured < objective
    if op == "lte":
        return measured <= objective
    if op == "gt":
        return measured > objective
    return measured >= objective


def margin(op: Op, measured: float, objective: float) -> float:
    """Room left before the objective is missed, in the SLI's units (negative: missed by)."""
    return objective - measured if op in ("lt", "lte") else measured - objective


def good_ratio(good: float | None, bad: float | None, total: float) -> float | None:
    """The fraction of good events (None without events). Counts from independent scrapes can
    disagree slightly: the result is clamped to [0, 1]."""
    if total <= 0:
        return None
    if good is not None:
        ratio = good / total
    else:
        assert bad is not None
        ratio = 1 - bad / total
    return min(1.0, max(0.0, ratio))


def budget_consumed(good_fraction: float, target: float) -> float:
    """The share of the error budget used: bad fraction over allowed bad fraction (1.0 = all
    of it). A target of 1 has no budget: anything bad consumes infinitely much."""
    bad, allowed = 1 - good_fraction, 1 - target
    if allowed <= 0:
        return 0.0 if bad <= 0 else math.inf
    return bad / allowed


def burn_rate(error_ratio: float, target: float) -> float:
    """How fast the budget burns: 1 spends exactly the budget over the SLO window."""
    allowed = 1 - target
    if allowed <= 0:
        return 0.0 if error_ratio <= 0 else math.inf
    return error_ratio / allowed


def good_slices(values: Sequence[float], op: Op, objective: float) -> float | None:
    """The fraction of time slices whose value meets the objective (None without slices)."""
    if not values:
        return None
    return sum(1 for v in values if meets(op, v, objective)) / len(values)


def align_window(start: float, end: float, step: float) -> tuple[float, float]:
    """The smallest window of whole slices (multiples of `step` since the epoch) covering
    [start, end]: slices then mean the same thing in every run and in Prometheus' rules."""
    if step <= 0 or end < start:
        raise ValueError("align_window needs step > 0 and end >= start")
    lo, hi = math.floor(start / step) * step, math.ceil(end / step) * step
    # Division can round (or underflow) across a slice boundary: never end before `end`.
    while hi < end:
        hi += step
    while lo > start:
        lo -= step
    return lo, hi


def quantile_from_buckets(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile`: `buckets` are (upper bound `le`, cumulative count),
    +Inf included. Linear interpolation inside the bucket the rank falls in; a rank in the +Inf
    bucket answers the highest finite bound. None without observations."""
    if not 0 <= q <= 1:
        raise ValueError("q must be in [0, 1]")
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        raise ValueError("buckets must include +Inf")
    # Counts from a rate() can dip between buckets: make them monotonic, as Prometheus does.
    fixed: list[tuple[float, float]] = []
    high = 0.0
    for le, count in ordered:
        high = max(high, count)
        fixed.append((le, high))
    total = fixed[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for i, (le, count) in enumerate(fixed):
        if count >= rank:
            if math.isinf(le):
                return fixed[i - 1][0] if i > 0 else None
            if i == 0 and le <= 0:
                return le
            width = count - prev_count
            if width <= 0:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / width
        prev_le, prev_count = le, count
    return fixed[-2][0] if len(fixed) > 1 else None


def regression_pct(op: Op, measured: float, baseline: float) -> float:
    """How much worse than the baseline, in percent of it (negative: better). "Worse" follows
    the objective: higher for lt/lte, lower for gt/gte."""
    if baseline == 0:
        if measured == baseline:
            return 0.0
        worse = measured > 0 if op in ("lt", "lte") else measured < 0
        return math.inf if worse else -math.inf
    change = (measured - baseline) / abs(baseline) * 100
    return change if op in ("lt", "lte") else -change
