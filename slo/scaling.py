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
NUMERIC = ("threshold", "tolerance", "window", "slack", "drained", "maximum", "settle")


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


class Steps:
    """A series as a step function: its value at any time is its last sample at or before it."""

    def __init__(self, series: Series) -> None:
        self.series = series
        self.times = [t for t, _ in series]

    def at(self, t: float) -> float | None:
        i = bisect.bisect_right(self.times, t) - 1
        return self.series[i][1] if i >= 0 else None

    def first_after(self, t: float, above: float) -> float:
        """The first sample time after `t` with a value above `above` (inf: none)."""
        for k in range(bisect.bisect_right(self.times, t), len(self.series)):
            if self.series[k][1] > above:
                return self.series[k][0]
        return math.inf


def _over(value: float, threshold: float, tolerance: float) -> bool:
    """Above the target by more than the HPA's tolerance: the HPA must scale up."""
    return value > threshold * (1 + tolerance)


@dataclass(frozen=True)
class Episode:
    """One overload: from `start` (the first sample above the threshold) for `duration_s`,
    ended by a new ready replica (`reacted`) or by the overload passing or the window ending."""

    start: float
    duration_s: float
    reacted: bool


def reaction_episodes(
    metric: Series,
    current: Series,
    available: Series,
    maximum: float,
    threshold: float,
    tolerance: float,
    end: float,
    per_available: bool = False,
    settle_s: float = 30.0,
) -> list[Episode]:
    """Every overload episode of `scale_up_reaction` (which says how they are cut), in order."""
    cur_at, avail = Steps(current), Steps(available)

    def load(t: float, m: float) -> float:
        if not per_available:
            return m
        return m * (cur_at.at(t) or 0) / max(1.0, avail.at(t) or 0)

    def over(t: float, m: float) -> bool:
        return _over(load(t, m), threshold, tolerance) and (cur_at.at(t) or 0) < maximum

    out: list[Episode] = []
    i = 0
    while i < len(metric):
        t0, m0 = metric[i]
        if not over(t0, m0):
            i += 1
            continue
        before = [v for v in (cur_at.at(t0), cur_at.at(metric[i - 1][0]) if i else None) if v]
        if not before:
            i += 1
            continue
        reacted = avail.first_after(t0, min(before))
        j = i + 1
        while j < len(metric) and metric[j][0] < reacted and over(*metric[j]):
            j += 1
        stop = min(reacted, metric[j][0] if j < len(metric) else end, end)
        out.append(Episode(t0, stop - t0, stop == reacted))
        # The next episode starts after this one (and after a reaction has settled), judged
        # from the count then.
        resume = stop + settle_s if stop == reacted else stop
        while j < len(metric) and metric[j][0] < resume:
            j += 1
        i = max(j, i + 1)
    return out


def scale_up_reaction(
    metric: Series,
    current: Series,
    available: Series,
    maximum: float,
    threshold: float,
    tolerance: float,
    end: float,
    per_available: bool = False,
    settle_s: float = 30.0,
) -> Finding | None:
    """The longest time the workload was over its threshold without a replica added.

    An episode starts at the first sample where the metric exceeds `threshold x (1 +
    tolerance)` while the replicas are under `maximum`, and ends at the first of: an available
    replica beyond the count before the episode (the reaction), the metric back within the
    threshold or the maximum reached (the overload passed before any reaction: its length
    still counts, an HPA that never reacts to short bursts must not hide), or the end of the
    window. The value is the longest episode, in seconds.

    The count an episode starts from is the lower of the HPA's current replicas at its first
    sample and at the sample before: an HPA exports the metric it acted on in the same sync in
    which it raises the count (the local one at once, a cluster's a sync later), and a
    reaction is a replica *ready* beyond the count before it acted.

    `per_available`: the metric is an average over the HPA's current replicas (an
    `AverageValue` target: the queue per worker, counting workers not yet ready); judge it per
    available replica instead, so added replicas that never become ready cannot lower it.

    After a reaction the next episode starts `settle_s` later at the earliest: a new replica's
    load shows in the metric only after a sync and a metric window (the HPA even leaves a new
    pod's CPU out for a while), and the overload seen meanwhile was already answered.

    `threshold` and `maximum` are the objective's (the seed's 70 % and 10), not read from the
    HPA: a misconfigured HPA target is what this check exists to catch.
    """
    if not metric or not current or not available:
        return None
    episodes = reaction_episodes(
        metric, current, available, maximum, threshold, tolerance, end, per_available, settle_s
    )
    if not episodes:
        return Finding(0.0, f"never above {threshold:g} x {1 + tolerance:g} below the maximum", 0)
    worst = max(episodes, key=lambda e: e.duration_s)
    return Finding(
        worst.duration_s,
        f"{len(episodes)} episode(s) above {threshold * (1 + tolerance):g}; the longest without "
        f"a new ready replica lasted {worst.duration_s:.0f} s from t={worst.start:.0f}",
        len(episodes),
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
    desired: Series,
    target: float,
    tolerance: float,
    window_s: float,
    slack_s: float,
    maximum: float = math.inf,
) -> Finding | None:
    """Scale-downs that came before the stabilization window allowed them.

    The HPA scales down to the highest recommendation of the last `window_s` seconds. A fall of
    its desired replicas to `n` at time t is early when a recommendation recomputed from the
    exported metric and the current count (`recommendation`) exceeded `n` inside `[t - window
    + slack, t - slack]`: the slack absorbs the scrape and sync offsets between the samples and
    the HPA's own clock (so a window shorter by less than the slack passes). Desired, not
    current, replicas: a rolling update's surge moves the current count without any decision.
    The value is the number of early scale-downs.
    """
    if not metric or not current or not desired:
        return None
    cur_at = Steps(current)
    times = [t for t, _ in metric]
    early, downs, first = 0, 0, ""
    for (_, before), (t, after) in itertools.pairwise(desired):
        if after >= before:
            continue
        downs += 1
        lo, hi = t - window_s + slack_s, t - slack_s
        for k in range(bisect.bisect_left(times, lo), bisect.bisect_right(times, hi)):
            s, m = metric[k]
            cur = cur_at.at(s)
            if cur is None:
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
    any `window_s` seconds: flapping. A ramp up and back down is one. Given the HPA's desired
    replicas (its decisions), a rolling update's surge is no change."""
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
    which = f'metric_name="{params.get("metric", "cpu")}",metric_target_type="{target_type}"'
    metric = f"max({HPA}status_target_metric{{{sel},{which}}})"
    current = f"max({HPA}status_current_replicas{{{sel}}})"
    desired = f"max({HPA}status_desired_replicas{{{sel}}})"
    dep = f'deployment="{params.get("deployment", hpa)}"'
    if ns := params.get("namespace"):
        dep += f',namespace="{ns}"'
    if check == "scale-up-reaction":
        out = {
            # `query`: an overload signal of its own (the replicas' CPU from their own metrics,
            # cAdvisor's on a cluster) instead of the HPA's view of its metric, so an HPA that
            # misreads its metric cannot pass by its own account.
            "metric": str(params.get("query", metric)),
            "current": current,
            "available": f"max(kube_deployment_status_replicas_available{{{dep}}})",
        }
        if "maximum" not in params:  # the objective's own bound, when it states one
            out["maximum"] = f"max({HPA}spec_max_replicas{{{sel}}})"
        return out
    if check == "early-scale-down":
        out = {
            "metric": metric,
            "current": current,
            "desired": desired,
            "target": f"max({HPA}spec_target_metric{{{sel},{which}}})",
        }
        if "maximum" not in params:
            out["maximum"] = f"max({HPA}spec_max_replicas{{{sel}}})"
        return out
    if check == "flapping":
        return {"desired": desired}
    if check == "backlog-drain":
        return {"depth": str(params.get("query", "max(cw_queue_depth)"))}
    raise ValueError(f"unknown check {check!r}: one of {', '.join(CHECKS)}")


def _num(params: Params, key: str, default: float | None = None) -> float:
    raw = params.get(key, default)
    if raw is None:
        raise ValueError(f"the check needs {key!r}")
    return float(raw)


def lookback_s(check: str, params: Params) -> float:
    """How long before the window a check must read: a scale-down early in the window is
    judged on the recommendations of the stabilization window before it."""
    return _num(params, "window") if check == "early-scale-down" else 0.0


def measure(
    check: str,
    params: Params,
    source: RangeSource,
    start: float,
    end: float,
    step_s: float,
) -> Finding | None:
    """Read the check's series over [start - lookback, end] and judge them (None: a series is
    empty). Only events inside [start, end] are judged."""
    wanted = queries(check, params)
    got: dict[str, Series] = {}
    for name, q in wanted.items():
        series = source.timed(q, start - lookback_s(check, params), end, step_s)
        if len(series) > 1:
            raise ValueError(f"{q}: {len(series)} series, not one (select one HPA)")
        got[name] = series[0] if series else []

    def last(name: str) -> float | None:
        if name not in got:
            return _num(params, name) if name in params else None
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
            per_available=params.get("metricTargetType") == "average",
            settle_s=_num(params, "settle", 30.0),
        )
    if check == "early-scale-down":
        target = last("target")
        if target is None:
            return None
        in_window = [p for p in got["desired"] if p[0] >= start]
        first = [p for p in got["desired"] if p[0] < start][-1:]  # the count entering it
        return early_scale_downs(
            got["metric"],
            got["current"],
            first + in_window,
            target,
            tolerance,
            _num(params, "window"),
            _num(params, "slack", 20.0),
            last("maximum") or math.inf,
        )
    if check == "flapping":
        return direction_changes(got["desired"], _num(params, "window"))
    return drain_time(got["depth"], _num(params, "drained", 0.0), end)
