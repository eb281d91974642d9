"""The HPA algorithm against Kubernetes' own examples: the documentation's worked examples, and
the controller's replica-calculator cases (pkg/controller/podautoscaler, replica_calculator_test.go)
with their numbers."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from env import autoscaler, hpa
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
    kube_state_samples,
)
from tests.unit.hpa_helpers import backlog, cpu, cpu_pods, external, per_pod, rules, spec

NOW = 10_000.0
# Quick windows, so a scale down shows at once where the example is about the calculation.
NO_WINDOWS = {"down": rules(0, "Max", ("Percent", 100, 15))}


# --- the documentation's examples ---------------------------------------------------------------


def test_current_200m_against_100m_doubles_the_replicas():
    s = spec(per_pod("rps", "100m"))
    obs = Observation(NOW, 1, (Pod("p0"),), {"Pods:rps": {"p0": PodMetric(0.2, NOW)}})
    d = decide(s, obs)
    assert (d.metrics[0].ratio, d.metrics[0].replicas, d.desired) == (2.0, 2, 2)


def test_current_50m_against_100m_halves_the_replicas():
    s = spec(per_pod("rps", "100m"), **NO_WINDOWS)
    samples = {"p0": PodMetric(0.05, NOW), "p1": PodMetric(0.05, NOW)}
    obs = Observation(NOW, 2, (Pod("p0"), Pod("p1")), {"Pods:rps": samples})
    d = decide(s, obs)
    assert (d.metrics[0].ratio, d.desired) == (0.5, 1)


@pytest.mark.parametrize(
    ("per_pod_m", "utilization", "desired"),
    [
        (154, 77, 10),  # 77 / 70 = 1.1: at the tolerance's edge, which is inside
        (156, 78, 12),  # 1.114: outside, ceil(10 x 1.114)
        (127, 63, 10),  # 0.9: inside at the lower edge
        (125, 62, 9),  # 0.886: outside, ceil(8.86)
        (155, 77, 10),  # 77.5 % is 77 %: utilization is an integer percent, truncated
    ],
)
def test_no_change_while_the_ratio_is_within_the_tolerance(per_pod_m, utilization, desired):
    s = spec(cpu(70), **NO_WINDOWS)
    d = decide(s, cpu_pods(NOW, [per_pod_m / 1000] * 10))
    assert d.metrics[0].utilization == utilization
    assert d.desired == desired


def test_fifty_replicas_at_90_percent_against_75_become_60():
    # The Kubernetes blog's tolerance example (v1.33, configurable tolerance): 50 x 90 / 75.
    d = decide(spec(cpu(75)), cpu_pods(NOW, [0.18] * 50))
    assert (d.metrics[0].utilization, d.desired) == (90, 60)


def test_default_behavior_adds_four_pods_or_doubles_every_15_s():
    s = spec(external("queue_depth", "1"))  # one replica per unit: wants 10 throughout
    first = decide(s, backlog(NOW, 1, 10))
    assert (first.recommendation, first.desired, first.reason) == (10, 5, "ScaleUpLimit")
    second = decide(s, backlog(NOW + 15, 5, 10), first.next_history())
    assert second.desired == 10


def test_scale_down_policies_the_documentation_walks_through():
    # Pods 4 and Percent 10 per 60 s, Max: from 80, 8 go (10 %), then 8 again (7.2 rounded
    # up), and once below 40 replicas the Pods policy's 4 is the larger change.
    down = rules(0, "Max", ("Pods", 4, 60), ("Percent", 10, 60))
    s = spec(external("queue_depth", "1"), down=down)
    replicas, history, seen = 80, History(), [80]
    for step in range(12):
        d = decide(s, backlog(NOW + 60 * step, replicas, 10), history)
        replicas, history = d.desired, d.next_history()
        seen.append(replicas)
    assert seen[:4] == [80, 72, 64, 57]
    assert all(a - b == 4 for a, b in itertools.pairwise(seen) if a <= 40)


def test_select_policy_min_takes_the_smallest_change():
    # The documentation's "no more than 5 Pods per minute": Percent 10 and Pods 5, Min.
    down = rules(0, "Min", ("Percent", 10, 60), ("Pods", 5, 60))
    d = decide(spec(external("queue_depth", "1"), down=down), backlog(NOW, 80, 10))
    assert (d.desired, d.reason) == (75, "ScaleDownLimit")


def test_select_policy_disabled_turns_a_direction_off():
    s = spec(external("queue_depth", "1"), down=rules(0, "Disabled", ("Percent", 100, 15)))
    assert decide(s, backlog(NOW, 8, 2)).desired == 8
    s = spec(external("queue_depth", "1"), up=rules(0, "Disabled", ("Percent", 100, 15)))
    assert decide(s, backlog(NOW, 3, 9)).desired == 3


def test_scale_down_uses_the_highest_recommendation_of_the_window():
    s = spec(cpu(70), down=rules(300, "Max", ("Percent", 100, 15)))
    past = History((Recommendation(NOW - 200, 8), Recommendation(NOW - 100, 6)))
    idle = [0.01] * 8
    d = decide(s, cpu_pods(NOW, idle), past)
    assert (d.recommendation, d.stabilized, d.desired) == (1, 8, 8)
    # 101 s later the 8 is 301 s old, out of the window; the 6 is the highest left.
    later = decide(s, cpu_pods(NOW + 101, idle), d.next_history())
    assert (later.stabilized, later.desired) == (6, 6)


def test_scale_up_uses_the_lowest_recommendation_of_its_window():
    # The worker spec: the backlog must show for its 30 s window before workers are added.
    worker = hpa.load()["worker"]
    history, replicas, seen = None, 3, []
    for step in range(4):
        d = decide(
            worker, backlog(NOW + 15 * step, replicas, 100, "cloudwatcher_queue_depth"), history
        )
        history, replicas = d.next_history(), d.desired
        seen.append((d.recommendation, d.desired))
    # ceil(100 / 8) = 13 wanted from the first sync; the first sync remembered 3 at NOW,
    # so 13 is the lowest of the window only at NOW + 30; +100 % or +4 then allows 7.
    assert seen == [(13, 3), (13, 3), (13, 7), (13, 13)]


def test_a_policy_counts_the_changes_already_made_in_its_period():
    s = spec(external("queue_depth", "1"), up=rules(0, "Max", ("Pods", 4, 60)))
    first = decide(s, backlog(NOW, 1, 20))
    assert first.desired == 5
    again = decide(s, backlog(NOW + 15, 5, 20), first.next_history())
    assert (again.desired, again.reason) == (5, "ScaleUpLimit")
    # The +4 is 60 s old: strictly younger than the period counts, so it no longer does.
    later = decide(s, backlog(NOW + 60, 5, 20), again.next_history())
    assert later.desired == 9


def test_a_fresh_controller_does_not_scale_down_within_the_window():
    s = spec(cpu(70))  # default behavior: 300 s down window
    d = decide(s, cpu_pods(NOW, [0.01] * 6))
    assert (d.recommendation, d.desired) == (1, 6)
    up = decide(s, cpu_pods(NOW, [0.4] * 3))
    assert up.desired > 3


def test_a_sync_without_metrics_keeps_what_the_controller_remembers():
    # The controller seeds its memory once; a failed sync in between must not make the next
    # one look like a fresh start (which would hold the scale down for another window).
    s = spec(cpu(50), down=rules(15, "Max", ("Percent", 100, 15)))
    first = decide(s, cpu_pods(NOW, [0.1] * 4))
    failed = decide(s, replace(cpu_pods(NOW + 20, [0.1] * 4), pod_metrics={}), first.next_history())
    assert failed.reason == "FailedGetMetrics"
    quiet = decide(s, cpu_pods(NOW + 40, [0.01] * 4), failed.next_history())
    assert (quiet.recommendation, quiet.desired) == (1, 1)


def test_outside_the_bounds_the_target_goes_straight_to_the_bound():
    s = spec(cpu(70), lo=3, hi=10)
    above = decide(s, cpu_pods(NOW, [0.01] * 12))
    assert (above.desired, above.reason, above.metrics) == (10, "AboveMax", ())
    below = decide(s, cpu_pods(NOW, [0.5] * 2))
    assert (below.desired, below.reason) == (3, "BelowMin")


def test_the_highest_metric_wins():
    s = spec(cpu(70), external("queue_depth", "8"), **NO_WINDOWS)
    obs = replace(cpu_pods(NOW, [0.18] * 3), values={"External:queue_depth": (40,)})
    d = decide(s, obs)
    assert [v.replicas for v in d.metrics] == [4, 5]
    assert d.desired == 5


def test_a_metric_that_cannot_be_read_blocks_a_scale_down_but_not_a_scale_up():
    s = spec(cpu(70), external("queue_depth", "8"), **NO_WINDOWS)
    quiet = decide(s, cpu_pods(NOW, [0.01] * 6))
    assert quiet.metrics[1].replicas is None
    assert (quiet.desired, quiet.reason) == (6, "FailedGetMetrics")
    busy = decide(s, cpu_pods(NOW, [0.4] * 6))
    assert busy.desired > 6


def test_external_average_value_divides_the_total_by_the_target():
    s = spec(external("queue_depth", "8"), lo=3, hi=20)
    d = decide(s, backlog(NOW, 3, 100))
    assert (d.metrics[0].raw, d.metrics[0].average) == (13, 33.334)
    # 26 jobs over 3 replicas of 8 is 1.083: inside the tolerance, no change.
    assert decide(s, backlog(NOW, 3, 26)).desired == 3


def test_the_api_spec_scales_on_cpu_over_70_percent_of_200m():
    api = hpa.load()["api"]
    d = decide(api, cpu_pods(NOW, [0.18] * 3))  # 90 % of 200m
    assert (d.metrics[0].utilization, d.metrics[0].raw, d.desired) == (90, 4, 4)


def test_the_api_spec_over_a_ramp_and_back():
    api = hpa.load()["api"]

    def observe(now: float, replicas: int) -> Observation:
        demand = 1.2 if now < 120 else 0.1  # cores the load asks of the API in total
        return cpu_pods(now, [demand / replicas] * replicas)

    seen = [(d.at, d.desired) for d in autoscaler.run(api, observe, 3, 0, 700)]
    timeline = dict(seen)
    assert (timeline[0], timeline[15], timeline[30]) == (6, 9, 9)  # doubling, then 66 %: held
    # The last high recommendation was at 105 s: nothing goes while it is in the window...
    assert {r for t, r in seen if 120 <= t < 405} == {9}
    # ...then one replica per 30 s, down to the minimum.
    assert [timeline[t] for t in range(405, 586, 30)] == [8, 7, 6, 5, 4, 3, 3]
    assert min(r for _, r in seen) == 3


# --- the controller's replica-calculator cases ---------------------------------------------------

ZERO = -1e9  # Go's zero time: a pod's start and Ready transition when the test leaves them out
GO = ControllerConfig(cpu_initialization_period_s=120, initial_readiness_delay_s=10)


def calc_case(
    current: int,
    levels: list[int],
    *,
    ready: list[bool] | None = None,
    start: list[float] | None = None,
    phase: list[str] | None = None,
    deleting: list[bool] | None = None,
    requests: list[float] | None = None,
    pods: int | None = None,
) -> Observation:
    """The Go fixture: two containers per pod, each at `levels[i]` millicores and requesting
    `requests[i]` cores; pods past len(levels) have no metric."""
    n = max(current, len(phase or ()), pods or 0)
    requests = requests if requests is not None else [1.0] * n
    out = []
    for i in range(n):
        out.append(
            Pod(
                f"p{i}",
                phase=(phase or ["Running"] * n)[i],  # type: ignore[arg-type]
                ready=ready[i] if ready and i < len(ready) else True,
                ready_since=ZERO,
                started_at=start[i] if start else ZERO,
                deleting=bool(deleting and deleting[i]),
                requests={"cpu": 2 * requests[i]} if i < len(requests) else {},
            )
        )
    samples = {f"p{i}": PodMetric(2 * m / 1000, ZERO, 60.0) for i, m in enumerate(levels)}
    return Observation(NOW, current, tuple(out), {"Resource:cpu": samples})


AGO = NOW - 180  # time3MinsAgo
CASES = [
    ("scale up", 30, calc_case(3, [300, 500, 700]), 5, 50),
    (
        "unready pod scales less",
        30,
        calc_case(3, [300, 500, 700], ready=[False, True, True]),
        4,
        60,
    ),
    ("hot-CPU pod scales less", 30, calc_case(3, [300, 500, 700], start=[NOW, AGO, AGO]), 4, 60),
    (
        "no scale: unready pods ignored",
        30,
        calc_case(3, [400, 500, 700], ready=[True, False, False]),
        3,
        40,
    ),
    (
        "no scale: hot-CPU pods ignored",
        30,
        calc_case(3, [400, 500, 700], ready=[True, False, False], start=[AGO, NOW, NOW]),
        3,
        40,
    ),
    (
        "scale up: failed pods ignored",
        30,
        calc_case(
            2,
            [500, 700],
            ready=[True, True, False, False],
            phase=["Running", "Running", "Failed", "Failed"],
        ),
        4,
        60,
    ),
    (
        "scale up: succeeded pods ignored",
        30,
        calc_case(
            2,
            [500, 700],
            ready=[True, True, False, False],
            phase=["Running", "Running", "Succeeded", "Succeeded"],
        ),
        4,
        60,
    ),
    (
        "scale up: pods being deleted ignored",
        30,
        calc_case(
            2,
            [500, 700],
            pods=4,
            ready=[True, True, False, False],
            deleting=[False, False, True, True],
        ),
        4,
        60,
    ),
    ("scale down", 50, calc_case(5, [100, 300, 500, 250, 250]), 3, 28),
    (
        "scale down: exclude unready pods",
        50,
        calc_case(5, [100, 300, 500, 250, 250], ready=[True, True, True, False, False]),
        2,
        30,
    ),
    (
        "scale down: exclude unscheduled pods",
        50,
        calc_case(
            5,
            [100],
            ready=[True, False, False, False, False],
            phase=["Running", "Pending", "Pending", "Pending", "Pending"],
        ),
        1,
        10,
    ),
    (
        "scale down: ignore hot-CPU pods",
        50,
        calc_case(5, [100, 300, 500, 250, 250], start=[AGO, AGO, AGO, NOW, NOW]),
        2,
        30,
    ),
    (
        "scale down: failed pods ignored",
        50,
        calc_case(
            5,
            [100, 300, 500, 250, 250],
            ready=[True] * 5 + [False] * 2,
            phase=["Running"] * 5 + ["Failed"] * 2,
        ),
        3,
        28,
    ),
    ("some pods missing metrics scales down", 100, calc_case(4, [400, 95]), 3, 24),
    ("no change: metric equal to target", 100, calc_case(2, [1000]), 2, 100),
    ("no change: metric above target", 100, calc_case(2, [1900]), 2, 190),
    ("no change: metric below target", 100, calc_case(2, [600]), 2, 60),
    (
        "no change: unready pod metric missing",
        50,
        calc_case(3, [100, 450], ready=[False, True, True]),
        3,
        45,
    ),
    (
        "no change: hot-CPU pod metric missing",
        50,
        calc_case(3, [100, 450], start=[NOW, AGO, AGO]),
        3,
        45,
    ),
    (
        "scale up: unready pod metric missing",
        50,
        calc_case(3, [100, 2000], ready=[False, True, True]),
        4,
        200,
    ),
    (
        "scale up: hot-CPU pod metric missing",
        50,
        calc_case(3, [100, 2000], ready=[False, True, True], start=[NOW, AGO, AGO]),
        4,
        200,
    ),
    (
        "scale down: unready pod metric missing",
        50,
        calc_case(4, [100, 100, 100], ready=[False, True, True, True]),
        3,
        10,
    ),
    (
        "scale down: target over 100",
        300,
        calc_case(
            4, [200, 100, 100], ready=[False, True, True, True], requests=[1.0, 1.0, 2.0, 2.0]
        ),
        2,
        6,
    ),
    (
        "rolling update with maxSurge: extra pod missing metric",
        50,
        calc_case(2, [100, 100], phase=["Running"] * 3),
        2,
        10,
    ),
]


@pytest.mark.parametrize(
    ("target", "obs", "replicas", "utilization"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_controllers_replica_calculator_cases(target, obs, replicas, utilization):
    verdict = evaluate(cpu(target), obs, GO)
    assert (verdict.replicas, verdict.utilization) == (replicas, utilization), verdict.note


def test_on_a_scale_up_not_ready_pods_count_as_zero_which_can_end_inside_the_tolerance():
    # Two ready pods at 80 % of a 50 % target would ask for ceil(1.6 x 2) = 4; the third pod,
    # not ready, counts as using nothing: 53 % over three pods is inside the tolerance.
    obs = calc_case(3, [800, 800, 800], ready=[False, True, True])
    verdict = evaluate(cpu(50), obs, GO)
    assert (verdict.utilization, verdict.raw, verdict.replicas) == (80, 4, 3)
    assert verdict.note == "within tolerance once missing and not-ready pods count"


def test_a_pod_without_a_cpu_request_makes_the_metric_unusable():
    verdict = evaluate(cpu(100), calc_case(1, [200], requests=[]), GO)
    assert verdict.replicas is None
    assert "missing request for cpu" in verdict.note


def test_the_tolerance_regression_case():
    # 10 pods each using 300m of a ~600m request (50 %): a target just past 1 / (2 x 0.9)
    # scales to 9; one just inside the tolerance does not scale.
    jitter = [100, -100, 10, -10, 2, -2, 1, -1, 0, 0]
    obs = calc_case(10, [150] * 10, requests=[(300 + j) / 1000 for j in jitter])
    for offset, expected in ((0.01, 9), (0.004, 10)):
        target = int((1 / (2 * (1 - 0.1)) + offset) * 100)
        verdict = evaluate(cpu(target), obs, GO)
        assert (verdict.replicas, verdict.utilization) == (expected, 50)


def test_a_cpu_sample_is_start_up_cpu_until_a_full_window_of_readiness():
    # Started 60 s ago, ready for 30 s, busy loading code: a 30 s sample is all ready time and
    # counts; a 60 s one still covers start-up, so only the steady pod counts.
    pod = Pod("p0", started_at=NOW - 60, ready=True, ready_since=NOW - 30, requests={"cpu": 1.0})
    other = Pod("p1", started_at=NOW - 600, ready_since=NOW - 600, requests={"cpu": 1.0})
    for window, utilization in ((30.0, 50), (60.0, 10)):
        samples = {"p0": PodMetric(0.9, NOW, window), "p1": PodMetric(0.1, NOW, window)}
        obs = Observation(NOW, 2, (pod, other), {"Resource:cpu": samples})
        assert evaluate(cpu(50), obs, ControllerConfig()).utilization == utilization


# --- kube-state-metrics -------------------------------------------------------------------------


def test_kube_state_metrics_names_and_labels():
    api = hpa.load()["api"]
    d: Decision = decide(api, cpu_pods(NOW, [0.18] * 3))
    samples = kube_state_samples(api, 3, d.desired, 3, namespace="cw", decision=d)
    got = {(s.name, s.labels): s.value for s in samples}
    hpa_labels = (("namespace", "cw"), ("horizontalpodautoscaler", "api"))
    dep = (("namespace", "cw"), ("deployment", "api"))
    expected = {
        (
            "kube_horizontalpodautoscaler_info",
            (
                *hpa_labels,
                ("scaletargetref_api_version", "apps/v1"),
                ("scaletargetref_kind", "Deployment"),
                ("scaletargetref_name", "api"),
            ),
        ): 1.0,
        ("kube_horizontalpodautoscaler_spec_min_replicas", hpa_labels): 3.0,
        ("kube_horizontalpodautoscaler_spec_max_replicas", hpa_labels): 10.0,
        ("kube_horizontalpodautoscaler_status_current_replicas", hpa_labels): 3.0,
        ("kube_horizontalpodautoscaler_status_desired_replicas", hpa_labels): 4.0,
        (
            "kube_horizontalpodautoscaler_spec_target_metric",
            (*hpa_labels, ("metric_name", "cpu"), ("metric_target_type", "utilization")),
        ): 70.0,
        (
            "kube_horizontalpodautoscaler_status_target_metric",
            (*hpa_labels, ("metric_name", "cpu"), ("metric_target_type", "utilization")),
        ): 90.0,
        (
            "kube_horizontalpodautoscaler_status_target_metric",
            (*hpa_labels, ("metric_name", "cpu"), ("metric_target_type", "average")),
        ): 0.18,
        ("kube_deployment_spec_replicas", dep): 4.0,
        ("kube_deployment_status_replicas", dep): 3.0,
        ("kube_deployment_status_replicas_available", dep): 3.0,
        ("kube_deployment_status_replicas_ready", dep): 3.0,
    }
    assert got == expected


def test_kube_state_metrics_for_the_worker_target_is_an_average():
    worker = hpa.load()["worker"]
    samples = kube_state_samples(worker, 3, 3, 2)
    (target,) = [s for s in samples if s.name.endswith("spec_target_metric")]
    assert dict(target.labels) == {
        "namespace": "default",
        "horizontalpodautoscaler": "worker",
        "metric_name": "cloudwatcher_queue_depth",
        "metric_target_type": "average",
    }
    assert target.value == 8.0
    assert not [s for s in samples if s.name.endswith("status_target_metric")]
    by_name = {s.name: s.value for s in kube_state_samples(worker, 3, 3, 2, ready=0)}
    assert by_name["kube_deployment_status_replicas_available"] == 2.0
    assert by_name["kube_deployment_status_replicas_ready"] == 0.0


def test_scale_events_record_signed_changes():
    s = spec(external("queue_depth", "1"), **NO_WINDOWS)
    d = decide(s, backlog(NOW, 4, 2))
    assert d.next_history().events[-1] == ScaleEvent(NOW, -2)
    assert d.next_history(applied=False).events == ()
