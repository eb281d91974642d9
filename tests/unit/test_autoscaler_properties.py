"""Properties of the HPA algorithm over random specs and random loads (hypothesis).

Each simulation syncs at random gaps over a target that takes each desired count at once; the
properties are checked against the test's own record of what happened (the replica timeline and
every recommendation), not against the history the algorithm keeps for itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hypothesis import given
from hypothesis import strategies as st

from env.autoscaler import (
    ControllerConfig,
    Decision,
    History,
    Observation,
    Pod,
    PodMetric,
    Recommendation,
    ScaleEvent,
    decide,
    evaluate,
)
from env.hpa import Behavior, HPASpec, ScalingPolicy, ScalingRules
from tests.unit.hpa_helpers import cpu, spec

CFG = ControllerConfig()
START = 1000
REQUEST = 0.2

policy = st.builds(
    ScalingPolicy,
    st.sampled_from(["Pods", "Percent"]),
    st.integers(1, 200),
    st.sampled_from([15, 30, 60, 120]),
)


def scaling_rules(windows: list[int | None]) -> st.SearchStrategy[ScalingRules]:
    return st.builds(
        ScalingRules,
        st.sampled_from(windows),
        st.sampled_from(["Max", "Max", "Min", "Disabled"]),
        st.lists(policy, min_size=1, max_size=3).map(tuple),
    )


@st.composite
def specs(draw: st.DrawFn) -> HPASpec:
    lo = draw(st.integers(1, 5))
    hi = draw(st.integers(lo, lo + 15))
    up = draw(scaling_rules([0, 0, 15, 30, 60]))
    down = draw(scaling_rules([None, 0, 15, 60, 300]))
    return spec(cpu(draw(st.integers(20, 150))), lo=lo, hi=hi, up=up, down=down)


@dataclass(frozen=True)
class Step:
    """One sync: `gap_s` after the previous one, every pod at `milli` millicores; optionally
    the last pod without a metric, the first one never ready, or no metric at all (the
    metrics API down: the sync fails to compute)."""

    gap_s: int
    milli: int
    missing: bool
    unready: bool
    blackout: bool = False


steps = st.lists(
    st.builds(
        Step,
        st.integers(1, 45),
        st.integers(0, 600),
        st.booleans(),
        st.booleans(),
        st.sampled_from([False] * 5 + [True]),
    ),
    min_size=1,
    max_size=25,
)


def observe(now: float, replicas: int, step: Step) -> Observation:
    pods, samples = [], {}
    for i in range(replicas):
        never_ready = step.unready and i == 0
        pods.append(
            Pod(
                f"p{i}",
                ready=not never_ready,
                started_at=-1e6,
                ready_since=-1e6 + 5,
                requests={"cpu": REQUEST},
            )
        )
        if not (step.missing and i == replicas - 1):
            samples[f"p{i}"] = PodMetric(step.milli / 1000, now)
    metrics = {} if step.blackout else {"Resource:cpu": samples}
    return Observation(now, replicas, tuple(pods), metrics)


def simulate(s: HPASpec, initial: int, plan: list[Step]) -> list[Decision]:
    history: History | None = None
    replicas, now, out = initial, float(START), []
    for step in plan:
        now += step.gap_s
        d = decide(s, observe(now, replicas, step), history, CFG)
        out.append(d)
        history, replicas = d.next_history(), d.desired
    return out


def start_of_period(initial: int, decisions: list[Decision], before: float) -> int:
    """The replica count once every change made at or before `before` is applied."""
    replicas = initial
    for d in decisions:
        if d.at <= before:
            replicas = d.desired
    return replicas


@given(specs(), st.data(), steps)
def test_replicas_stay_within_min_and_max(s, data, plan):
    initial = data.draw(st.integers(s.min_replicas, s.max_replicas))
    for d in simulate(s, initial, plan):
        assert s.min_replicas <= d.desired <= s.max_replicas


@given(specs(), st.data(), steps)
def test_no_scale_down_below_a_recommendation_younger_than_the_window(s, data, plan):
    initial = data.draw(st.integers(s.min_replicas, s.max_replicas))
    window = s.behavior.scale_down.stabilization_window_s
    window_s = CFG.downscale_stabilization_s if window is None else window
    decisions = simulate(s, initial, plan)
    # The first sync remembers the starting count as a recommendation.
    recommendations = [Recommendation(decisions[0].at, initial)]
    for d in decisions:
        if d.recommendation is not None:
            recommendations.append(Recommendation(d.at, d.recommendation))
        if d.desired < d.current:
            # This sync's own recommendation is in the window even when the window is 0 s.
            recent = [r.replicas for r in recommendations if r.at > d.at - window_s]
            assert d.recommendation is not None
            assert d.desired >= max([d.recommendation, *recent]), (d, recent)


@given(specs(), st.data(), steps)
def test_scaling_policies_are_never_exceeded_within_their_periods(s, data, plan):
    initial = data.draw(st.integers(s.min_replicas, s.max_replicas))
    decisions = simulate(s, initial, plan)
    for i, d in enumerate(decisions):
        earlier = decisions[:i]
        if d.desired > d.current:
            rules = s.behavior.scale_up
            bounds = []
            for p in rules.policies:
                start = start_of_period(initial, earlier, d.at - p.period_s)
                bounds.append(
                    start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
                )
            assert rules.select_policy != "Disabled"
            allowed = max(bounds) if rules.select_policy == "Max" else min(bounds)
            assert d.desired <= max(d.current, allowed), (d, bounds)
        if d.desired < d.current:
            rules = s.behavior.scale_down
            floors = []
            for p in rules.policies:
                start = start_of_period(initial, earlier, d.at - p.period_s)
                floors.append(
                    start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
                )
            assert rules.select_policy != "Disabled"
            allowed = min(floors) if rules.select_policy == "Max" else max(floors)
            assert d.desired >= min(d.current, allowed), (d, floors)


@given(specs(), st.data(), steps, st.sampled_from(["up", "down"]))
def test_a_disabled_direction_never_moves(s, data, plan, direction):
    off = ScalingRules(0, "Disabled", (ScalingPolicy("Percent", 100, 15),))
    b = s.behavior
    s = replace(
        s, behavior=Behavior(off, b.scale_down) if direction == "up" else Behavior(b.scale_up, off)
    )
    initial = data.draw(st.integers(s.min_replicas, s.max_replicas))
    for d in simulate(s, initial, plan):
        assert d.desired <= d.current if direction == "up" else d.desired >= d.current


@given(specs(), st.data(), steps)
def test_decisions_are_deterministic_and_ignore_the_order_pods_are_listed_in(s, data, plan):
    initial = data.draw(st.integers(s.min_replicas, s.max_replicas))
    assert simulate(s, initial, plan) == simulate(s, initial, plan)
    obs = observe(START, initial, plan[0])
    shuffled = replace(
        obs,
        pods=tuple(reversed(obs.pods)),
        pod_metrics={k: dict(reversed(list(v.items()))) for k, v in obs.pod_metrics.items()},
    )
    assert decide(s, shuffled) == decide(s, obs)


@given(specs(), st.data(), steps)
def test_the_pruned_history_decides_as_the_whole_history_would(s, data, plan):
    initial = data.draw(st.integers(s.min_replicas, s.max_replicas))
    pruned = simulate(s, initial, plan)
    whole = History()
    replicas, now = initial, float(START)
    for step, expected in zip(plan, pruned, strict=True):
        now += step.gap_s
        d = decide(s, observe(now, replicas, step), whole, CFG)
        assert d.desired == expected.desired
        recs = whole.recommendations or (Recommendation(now, replicas),)
        if d.recommendation is not None:
            recs = (*recs, Recommendation(now, d.recommendation))
        events = whole.events
        if d.desired != d.current:
            events = (*events, ScaleEvent(now, d.desired - d.current))
        whole, replicas = History(recs, events), d.desired


@st.composite
def tolerated(draw: st.DrawFn) -> tuple[HPASpec, Observation, History]:
    """Every pod ready and measured at a utilization strictly inside the tolerance band, and
    whatever history came before."""
    s = draw(specs())
    target = s.metrics[0].target.average_utilization
    assert target is not None
    # 0.9 x target < percent < 1.1 x target, in integers.
    percent = draw(st.integers(9 * target // 10 + 1, math.ceil(11 * target / 10) - 1))
    replicas = draw(st.integers(s.min_replicas, s.max_replicas))
    pods = tuple(Pod(f"p{i}", requests={"cpu": REQUEST}, started_at=-1e6) for i in range(replicas))
    now = float(START)
    # percent % of 200m is 2 x percent millicores.
    samples = {p.name: PodMetric(2 * percent / 1000, now) for p in pods}
    obs = Observation(now, replicas, pods, {"Resource:cpu": samples})
    recs = draw(st.lists(st.builds(Recommendation, st.integers(0, START - 1), st.integers(1, 40))))
    events = draw(st.lists(st.builds(ScaleEvent, st.integers(0, START - 1), st.integers(-10, 10))))
    history = History(
        tuple(sorted(recs, key=lambda r: r.at)), tuple(sorted(events, key=lambda e: e.at))
    )
    return s, obs, history


@given(tolerated())
def test_no_change_while_every_metric_is_inside_the_tolerance(case):
    s, obs, history = case
    d = decide(s, obs, history, CFG)
    assert d.recommendation == obs.replicas
    assert d.desired == obs.replicas


@given(
    st.integers(1, 30),
    st.integers(10, 200),
    st.integers(0, 2000),
    st.integers(0, 2000),
    st.booleans(),
)
def test_more_load_never_proposes_fewer_replicas(replicas, target, a, b, missing):
    lower, higher = sorted((a, b))
    proposals = []
    for milli in (lower, higher):
        step = Step(1, milli, missing and replicas > 1, unready=False)
        obs = observe(START, replicas, step)
        proposals.append(evaluate(cpu(target), obs, CFG).replicas)
    assert proposals[0] is not None
    assert proposals[1] is not None
    assert proposals[0] <= proposals[1]
