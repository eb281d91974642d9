"""Autoscaling checks over time series: what a PromQL expression cannot say about an HPA.

Bounds and disruption budgets are plain PromQL (`min_over_time`, `max_over_time`) in the
definitions. Reaction times, stabilization and flapping need the order of events, so they are
pure functions here over `(time, value)` series, read from Prometheus by `measure` under the
names kube-state-metrics gives them. A cluster's Prometheus with kube-state-metrics answers the
same queries as the local environment's (whose supervisor exports those names), so one check
judges either.

Each check returns a `Finding` (the number the objective is compared with, and a sentence saying
where it came from) or None when the series it needs are empty (no data, never a pass).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

Series = Sequence[tuple[float, float]]  # (UTC seconds, value), sorted by time

HPA = "kube_horizontalpodautoscaler_"
Params = Mapping[str, str | float]
#: The numeric parameters (durations in seconds); the definitions parse them, with file and line.
NUMERIC = ("threshold", "tolerance", "window", "slack", "drained")


@dataclass(frozen=True)
class Finding:
    """A check's number and how it was reached.

    Attributes:
        value: compared with the SLO's objective (seconds, or a count).
        note: one sentence for the verdict's reason (the worst episode and when).
        episodes: how many episodes the check judged (0: nothing to judge, a vacuous pass).
    """

    value: float
    note: str
    episodes: int


def _at(series: Series, t: float) -> float | None:
    """The series' value at `t`: its last sample at or before `t` (a step function)."""
    i = bisect.bisect_right([s[0] for s in series], t) - 1
    return series[i][1] if i >= 0 else None


def _over(value: float, threshold: float, tolerance: float) -> bool:
    """Above the target by more than the HPA's tolerance: the HPA must scale up."""
    return value > threshold * (1 + tolerance)


def scale_up_reaction(
    metric: Series,
    current: Series,
    available: Series,
    maximum: float,
    threshold: float,
    tolerance: float,
    end: float,
) -> Finding | None:
    """The longest time the workload was over its threshold without a replica added.

    An episode starts at the first sample where the metric exceeds `threshold x (1 +
    tolerance)` while the HPA's current replicas are under `maximum`, and ends at the first of:
    an available replica beyond the episode's starting count (the reaction), the metric back
    within the threshold or the maximum reached (the overload passed before any reaction: its
    length still counts, an HPA that never reacts to short bursts must not hide), or the end of
    the window. The value is the longest episode, in seconds.

    `threshold` is the objective's (the seed's 70 %), not read from the HPA: a misconfigured
    HPA target is what this check exists to catch.
    """
    if not metric or not current or not available:
        return None
    worst, worst_at, episodes = 0.0, 0.0, 0
    i = 0
    while i < len(metric):
        t0, m0 = metric[i]
        r0 = _at(current, t0)
        if r0 is None or r0 >= maximum or not _over(m0, threshold, tolerance):
            i += 1
            continue
        episodes += 1
        reacted = next((t for t, v in available if t > t0 and v > r0), math.inf)
        j = i + 1
        while j < len(metric):
            t, m = metric[j]
            cur = _at(current, t)
            if t >= reacted or not _over(m, threshold, tolerance) or (cur or 0) >= maximum:
                break
            j += 1
        stop = min(reacted, metric[j][0] if j < len(metric) else end, end)
        if stop - t0 > worst:
            worst, worst_at = stop - t0, t0
        # The next episode starts after this one: at the reaction, the samples still show the
        # metric the HPA acted on, and judge the next step from the new count.
        while j < len(metric) and metric[j][0] < stop:
            j += 1
        i = max(j, i + 1)
    if not episodes:
        return Finding(0.0, f"never above {threshold:g} x {1 + tolerance:g} below the maximum", 0)
    return Finding(
        worst,
        f"{episodes} episode(s) above {threshold * (1 + tolerance):g}; the longest without a "
        f"new ready replica lasted {worst:.0f} s from t={worst_at:.0f}",
        episodes,
    )


def recommendation(current: float, metric: float, target: float, tolerance: float) -> float:
    """The HPA's raw recommendation for one metric: ceil(current x metric / target), or the
    current count when the ratio is within the tolerance."""
    ratio = metric / target
    if abs(ratio - 1) <= tolerance:
        return current
    return float(math.ceil(current * ratio))


def early_scale_downs(
    metric: Series,
    current: Series,
    target: float,
    tolerance: float,
    window_s: float,
    slack_s: float,
    maximum: float = math.inf,
) -> Finding | None:
    """Scale-downs that came before the stabilization window allowed them.

    The HPA scales down to the highest recommendation of the last `window_s` seconds. A fall
    to `n` replicas at time t is early when a recommendation recomputed from the exported
    metric and replica count (`recommendation`) exceeded `n` inside `[t - window + slack,
    t - slack]`: the slack absorbs the scrape and sync offsets between the samples and the
    HPA's own clock. The value is the number of early scale-downs.
    """
    if not metric or not current:
        return None
    early, downs, first = 0, 0, ""
    for (_, before), (t, after) in itertools.pairwise(current):
        if after >= before:
            continue
        downs += 1
        lo, hi = t - window_s + slack_s, t - slack_s
        for s, m in metric:
            cur = _at(current, s)
            if not lo <= s <= hi or cur is None:
                continue
            rec = min(recommendation(cur, m, target, tolerance), maximum)
            if rec > after:
                early += 1
                if not first:
                    first = (
                        f"the first at t={t:.0f} to {after:g} replicas, {t - s:.0f} s after a "
                        f"recommendation of {rec:g}"
                    )
                break
    note = f"{downs} scale-down(s), {early} inside the {window_s:g} s window"
    return Finding(float(early), f"{note}; {first}" if first else note, downs)


def direction_changes(replicas: Series, window_s: float) -> Finding | None:
    """The most direction changes of the replica count (up then down, or down then up) inside
    any `window_s` seconds: flapping. A ramp up and back down is one."""
    if not replicas:
        return None
    steps = [(t, 1 if b > a else -1) for (_, a), (t, b) in itertools.pairwise(replicas) if b != a]
    turns = [t for (_, d0), (t, d1) in itertools.pairwise(steps) if d1 != d0]
    worst, at = 0, 0.0
    for i, t in enumerate(turns):
        n = bisect.bisect_right(turns, t + window_s) - i
        if n > worst:
            worst, at = n, t
    where = f", the most from t={at:.0f}" if worst else ""
    return Finding(
        float(worst),
        f"{len(steps)} change(s) of the replica count, {len(turns)} reversal(s){where}",
        len(steps),
    )


def drain_time(depth: Series, drained: float, end: float) -> Finding | None:
    """The longest time from a backlog's peak until the queue is back at `drained` or below.

    A backlog is a run of samples above `drained`; one still above at the end of the window
    counts until the end (it has not drained yet)."""
    if not depth:
        return None
    worst, worst_peak, episodes = 0.0, 0.0, 0
    i = 0
    while i < len(depth):
        if depth[i][1] <= drained:
            i += 1
            continue
        episodes += 1
        j, peak_t, peak = i, depth[i][0], depth[i][1]
        while j < len(depth) and depth[j][1] > drained:
            if depth[j][1] >= peak:
                peak_t, peak = depth[j]
            j += 1
        stop = depth[j][0] if j < len(depth) else end
        if stop - peak_t > worst:
            worst, worst_peak = stop - peak_t, peak
        i = j
    if not episodes:
        return Finding(0.0, f"the queue never exceeded {drained:g}", 0)
    return Finding(
        worst,
        f"{episodes} backlog(s) over {drained:g}; the slowest drained {worst:.0f} s after its "
        f"peak of {worst_peak:g}",
        episodes,
    )


class RangeSource(Protocol):
    """What `measure` needs of Prometheus: one query's series over a window."""

    def timed(self, query: str, start: float, end: float, step_s: float) -> Sequence[Series]: ...


CHECKS = ("scale-up-reaction", "early-scale-down", "flapping", "backlog-drain")


def _selector(params: Params) -> str:
    hpa = params.get("hpa", "")
    ns = params.get("namespace")
    return f'horizontalpodautoscaler="{hpa}"' + (f',namespace="{ns}"' if ns else "")


def queries(check: str, params: Params) -> dict[str, str]:
    """The PromQL each check reads (shown in the verdict, so a reader can rerun them)."""
    hpa, sel = params.get("hpa", ""), _selector(params)
    target_type = params.get("metricTargetType", "utilization")
    metric = (
        f'max({HPA}status_target_metric{{{sel},metric_name="{params.get("metric", "cpu")}",'
        f'metric_target_type="{target_type}"}})'
    )
    current = f"max({HPA}status_current_replicas{{{sel}}})"
    deployment = params.get("deployment", hpa)
    if check == "scale-up-reaction":
        return {
            "metric": metric,
            "current": current,
            "available": (
                f'max(kube_deployment_status_replicas_available{{deployment="{deployment}"}})'
            ),
            "maximum": f"max({HPA}spec_max_replicas{{{sel}}})",
        }
    if check == "early-scale-down":
        return {
            "metric": metric,
            "current": current,
            "target": (
                f'max({HPA}spec_target_metric{{{sel},metric_name="{params.get("metric", "cpu")}",'
                f'metric_target_type="{target_type}"}})'
            ),
            "maximum": f"max({HPA}spec_max_replicas{{{sel}}})",
        }
    if check == "flapping":
        return {"current": current}
    if check == "backlog-drain":
        return {"depth": str(params.get("query", "max(cw_queue_depth)"))}
    raise ValueError(f"unknown check {check!r}: one of {', '.join(CHECKS)}")


def _num(params: Params, key: str, default: float | None = None) -> float:
    raw = params.get(key, default)
    if raw is None:
        raise ValueError(f"the check needs {key!r}")
    return float(raw)


def measure(
    check: str,
    params: Params,
    source: RangeSource,
    start: float,
    end: float,
    step_s: float,
) -> Finding | None:
    """Read the check's series over [start, end] and judge them (None: a series is empty)."""
    wanted = queries(check, params)
    got: dict[str, Series] = {}
    for name, q in wanted.items():
        series = source.timed(q, start, end, step_s)
        if len(series) > 1:
            raise ValueError(f"{q}: {len(series)} series, not one (select one HPA)")
        got[name] = series[0] if series else []

    def last(name: str) -> float | None:
        return got[name][-1][1] if got[name] else None

    tolerance = _num(params, "tolerance", 0.1)
    if check == "scale-up-reaction":
        maximum = last("maximum")
        if maximum is None:
            return None
        return scale_up_reaction(
            got["metric"],
            got["current"],
            got["available"],
            maximum,
            _num(params, "threshold"),
            tolerance,
            end,
        )
    if check == "early-scale-down":
        target = last("target")
        if target is None:
            return None
        return early_scale_downs(
            got["metric"],
            got["current"],
            target,
            tolerance,
            _num(params, "window"),
            _num(params, "slack", 20.0),
            last("maximum") or math.inf,
        )
    if check == "flapping":
        return direction_changes(got["current"], _num(params, "window"))
    return drain_time(got["depth"], _num(params, "drained", 0.0), end)
