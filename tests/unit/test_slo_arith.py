from __future__ import annotations

import math

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from slo.arith import (
    align_window,
    budget_consumed,
    burn_rate,
    good_ratio,
    good_slices,
    margin,
    meets,
    quantile_from_buckets,
    regression_pct,
)

counts = st.integers(min_value=0, max_value=10**9)
targets = st.floats(min_value=0.5, max_value=0.99999)
ops = st.sampled_from(["lt", "lte", "gt", "gte"])
finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


@given(counts, counts)
def test_good_and_bad_ratios_agree(bad, extra):
    total = bad + extra
    assume(total > 0)
    assert good_ratio(None, bad, total) == pytest.approx(good_ratio(extra, None, total))


@given(counts, counts)
def test_a_ratio_is_a_fraction_even_when_scrapes_disagree(good, total):
    r = good_ratio(good, None, total)
    assert r is None if total == 0 else 0 <= r <= 1


@given(st.floats(min_value=0, max_value=1), targets)
def test_budget_consumed_is_one_exactly_at_the_target_and_grows_with_errors(good, target):
    assert budget_consumed(target, target) == pytest.approx(1.0)
    consumed = budget_consumed(good, target)
    assert (consumed <= 1 + 1e-9) == (good >= target - 1e-12)
    assert burn_rate(1 - good, target) == pytest.approx(consumed)


def test_a_target_of_one_has_no_budget():
    assert budget_consumed(1.0, 1.0) == 0
    assert math.isinf(budget_consumed(0.9999, 1.0))


@given(ops, finite, finite)
def test_margin_is_non_negative_exactly_when_a_non_strict_objective_is_met(op, measured, obj):
    if op in ("lte", "gte"):
        assert meets(op, measured, obj) == (margin(op, measured, obj) >= 0)
    else:
        assert meets(op, measured, obj) == (margin(op, measured, obj) > 0)


@given(st.lists(finite, max_size=50), ops, finite)
def test_good_slices_count_the_slices_that_meet(values, op, obj):
    frac = good_slices(values, op, obj)
    if not values:
        assert frac is None
    else:
        assert frac == sum(meets(op, v, obj) for v in values) / len(values)


@given(
    st.floats(min_value=0, max_value=2e9),
    st.floats(min_value=0, max_value=1e6),
    st.sampled_from([1.0, 15.0, 60.0, 300.0]),
)
@example(0.0, 5e-324, 15.0)  # found by CI: end / step underflowed to 0
def test_aligned_windows_cover_the_window_in_whole_slices(start, length, step):
    end = start + length
    a, b = align_window(start, end, step)
    assert a <= start
    assert b >= end
    assert a % step == 0
    assert b % step == 0
    # Less than one slice of slack on each side (float rounding may make it a whole one).
    assert start - a <= step
    assert b - end <= step
    assert (b - a) / step == round((b - a) / step)


@given(st.lists(st.floats(min_value=0.0001, max_value=100), min_size=1, max_size=200))
def test_quantiles_from_buckets_lie_in_the_right_bucket(observations):
    bounds = [0.001, 0.01, 0.1, 1, 10, 100, math.inf]
    buckets = [(le, sum(1 for o in observations if o <= le)) for le in bounds]
    for q in (0.5, 0.95, 0.99):
        est = quantile_from_buckets(q, buckets)
        exact = sorted(observations)[max(0, math.ceil(q * len(observations)) - 1)]
        # The estimate is in the bucket holding the exact quantile.
        upper = next(le for le in bounds if exact <= le)
        lower = max([0.0, *(le for le in bounds if le < upper)])
        assert lower - 1e-12 <= est <= upper + 1e-12, (q, est, exact)


@given(st.lists(st.floats(min_value=0.0001, max_value=100), min_size=1, max_size=100))
def test_quantiles_are_monotonic_in_q(observations):
    bounds = [0.01, 0.1, 1, 10, math.inf]
    buckets = [(le, sum(1 for o in observations if o <= le)) for le in bounds]
    qs = [0.1, 0.5, 0.9, 0.99, 1.0]
    est = [quantile_from_buckets(q, buckets) for q in qs]
    assert est == sorted(est)


def test_quantile_matches_prometheus_interpolation():
    # 100 observations, 50 in (0, 1], 50 in (1, 2]: the median is the top of the first bucket,
    # p75 half-way through the second.
    buckets = [(1.0, 50), (2.0, 100), (math.inf, 100)]
    assert quantile_from_buckets(0.5, buckets) == 1.0
    assert quantile_from_buckets(0.75, buckets) == 1.5
    assert quantile_from_buckets(0.5, [(1.0, 0), (math.inf, 0)]) is None


@given(ops, st.floats(min_value=0.001, max_value=1e6), st.floats(min_value=0, max_value=5))
def test_regression_is_positive_when_the_value_moves_the_wrong_way(op, base, factor):
    measured = base * factor
    pct = regression_pct(op, measured, base)
    assert pct == pytest.approx((factor - 1) * 100 * (1 if op in ("lt", "lte") else -1))
