"""The autoscaling checks (`slo/scaling.py`) on series whose answer is known, and their
definitions: each check fails on the behaviour it exists to catch."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slo import scaling
from slo.definitions import DefinitionError, load, load_file
from slo.gate import Context, evaluate
from slo.sources import RunData, Window


def steps(*points: tuple[float, float]) -> list[tuple[float, float]]:
    return list(points)


def every(t0: float, t1: float, step: float, value) -> list[tuple[float, float]]:
    """A series sampled every `step` seconds; `value` maps time to value."""
    out, t = [], t0
    while t <= t1:
        out.append((t, float(value(t))))
        t += step
    return out


# scale-up reaction -----------------------------------------------------------------------------


def test_a_replica_added_in_time_is_the_reaction():
    metric = every(0, 100, 5, lambda t: 90 if 20 <= t < 60 else 50)
    current = every(0, 100, 5, lambda t: 3 if t < 35 else 4)
    available = every(0, 100, 5, lambda t: 3 if t < 45 else 4)
    found = scaling.scale_up_reaction(metric, current, available, 10, 70, 0.1, 100)
    assert found is not None
    assert found.value == 25  # over from t=20, the fourth replica ready at t=45
    assert found.episodes >= 1


def test_an_hpa_that_never_reacts_is_measured_to_the_end_of_the_window():
    metric = every(0, 300, 5, lambda t: 90 if t >= 100 else 50)
    flat = every(0, 300, 5, lambda t: 3)
    found = scaling.scale_up_reaction(metric, flat, flat, 10, 70, 0.1, 300)
    assert found is not None
    assert found.value == 200


def test_inside_the_tolerance_is_no_episode():
    metric = every(0, 300, 5, lambda t: 76.9)  # 70 x 1.1 = 77
    flat = every(0, 300, 5, lambda t: 3)
    found = scaling.scale_up_reaction(metric, flat, flat, 10, 70, 0.1, 300)
    assert found is not None
    assert (found.value, found.episodes) == (0, 0)


def test_at_the_maximum_nothing_is_owed():
    metric = every(0, 300, 5, lambda t: 150)
    full = every(0, 300, 5, lambda t: 10)
    found = scaling.scale_up_reaction(metric, full, full, 10, 70, 0.1, 300)
    assert found is not None
    assert found.value == 0


def test_a_replica_restarted_after_a_kill_is_not_a_reaction():
    """Available falls to 2 (a killed pod) and comes back to 3: the HPA added nothing."""
    metric = every(0, 200, 5, lambda t: 90 if t >= 50 else 50)
    current = every(0, 200, 5, lambda t: 3)
    available = every(0, 200, 5, lambda t: 2 if 40 <= t < 70 else 3)
    found = scaling.scale_up_reaction(metric, current, available, 10, 70, 0.1, 200)
    assert found is not None
    assert found.value == 150


def test_a_wrong_threshold_makes_a_good_autoscaler_fail():
    """The HPA settles at 60 % after scaling; judged against a 30 % threshold it "never" reacts."""
    metric = every(0, 300, 5, lambda t: 120 if 20 <= t < 50 else 60)
    current = every(0, 300, 5, lambda t: 3 if t < 30 else 6)
    available = every(0, 300, 5, lambda t: 3 if t < 40 else 6)
    right = scaling.scale_up_reaction(metric, current, available, 10, 70, 0.1, 300)
    wrong = scaling.scale_up_reaction(metric, current, available, 10, 30, 0.1, 300)
    assert right is not None
    assert wrong is not None
    assert right.value == 20
    assert wrong.value > 200


def test_the_count_before_the_hpa_acted_is_what_a_ready_replica_must_exceed():
    """The HPA exports the metric it acted on in the sync that raised the count: the count in
    that sample is already the new one. The reaction is the new replica being ready, 30 s later,
    not the metric falling 50 s later (the new replicas' load shows after a sync)."""
    metric = every(0, 200, 5, lambda t: 95 if 50 <= t < 100 else 50)  # fresh reading at 100
    current = every(0, 200, 5, lambda t: 3 if t < 50 else 5)  # raised at the first sample over
    available = every(0, 200, 5, lambda t: 3 if t < 80 else 5)  # ready 30 s later
    found = scaling.scale_up_reaction(metric, current, available, 10, 70, 0.1, 200)
    assert found is not None
    assert found.value == 30


def test_workers_added_but_never_ready_do_not_lower_the_queue_per_worker():
    """An AverageValue metric is averaged over the current count, ready or not: judged per
    available worker, a queue of 40 on 3 ready workers stays over 8.8 however many were added."""
    depth = 40.0
    current = every(0, 300, 5, lambda t: 3 if t < 30 else 5)
    available = every(0, 300, 5, lambda t: 3)
    metric = [(t, depth / c) for (t, c) in current]  # 13.3, then 8 per current worker
    found = scaling.scale_up_reaction(metric, current, available, 20, 8, 0.1, 300, True)
    assert found is not None
    assert found.value >= 270  # never reacted: from the first sample to the end
    plain = scaling.scale_up_reaction(metric, current, available, 20, 8, 0.1, 300)
    assert plain is not None
    assert plain.value < 60  # what the averaged metric alone would have let pass


def test_a_rolling_update_is_no_flapping_and_no_early_scale_down():
    """A surge moves the current count 3 -> 4 -> 3 six times; the HPA decided nothing."""
    current = steps(*[(float(t), 4.0 if (t // 10) % 2 else 3.0) for t in range(0, 120, 5)])
    desired = every(0, 120, 5, lambda t: 3)
    metric = every(0, 120, 5, lambda t: 42)  # 60 % of 70: a recommendation of 3 or less
    flaps = scaling.direction_changes(desired, 300)
    early = scaling.early_scale_downs(metric, current, desired, 70, 0.1, 300, 20)
    assert flaps is not None
    assert early is not None
    assert (flaps.value, early.value) == (0, 0)


def test_no_series_is_no_data():
    assert scaling.scale_up_reaction([], [(0, 3)], [(0, 3)], 10, 70, 0.1, 10) is None


# early scale-down ------------------------------------------------------------------------------


def test_a_scale_down_after_the_window_is_not_early():
    # 6 replicas at 100 % until t=100, then 20 %: recommendations 9 (ceil 6 x 100/70), then 2.
    metric = every(0, 800, 15, lambda t: 100 if t < 100 else 20)
    current = every(0, 800, 15, lambda t: 6 if t < 420 else 5)
    found = scaling.early_scale_downs(metric, current, current, 70, 0.1, 300, 20)
    assert found is not None
    assert (found.value, found.episodes) == (0, 1)


def test_a_scale_down_inside_the_window_is_counted():
    metric = every(0, 800, 15, lambda t: 100 if t < 100 else 20)
    current = every(0, 800, 15, lambda t: 6 if t < 200 else 5)  # 100 s after a 9
    found = scaling.early_scale_downs(metric, current, current, 70, 0.1, 300, 20)
    assert found is not None
    assert found.value == 1
    assert "recommendation of 9" in found.note


def test_the_recommendation_is_capped_at_the_maximum():
    metric = every(0, 800, 15, lambda t: 500 if t < 100 else 20)
    current = every(0, 800, 15, lambda t: 10 if t < 200 else 9)
    capped = scaling.early_scale_downs(metric, current, current, 70, 0.1, 300, 20, maximum=10)
    assert capped is not None
    assert capped.value == 1  # 10 > 9 still: early
    metric = every(0, 800, 15, lambda t: 20)
    calm = scaling.early_scale_downs(metric, current, current, 70, 0.1, 300, 20, maximum=10)
    assert calm is not None
    assert calm.value == 0


def test_recommendation_within_tolerance_keeps_the_count():
    assert scaling.recommendation(5, 75, 70, 0.1) == 5
    assert scaling.recommendation(5, 80, 70, 0.1) == 6
    assert scaling.recommendation(5, 20, 70, 0.1) == 2


# flapping ----------------------------------------------------------------------------------------


def test_a_ramp_up_and_back_down_is_one_reversal():
    replicas = steps((0, 3), (30, 6), (60, 8), (400, 7), (430, 6), (460, 3))
    found = scaling.direction_changes(replicas, 600)
    assert found is not None
    assert found.value == 1


def test_flapping_counts_reversals_inside_the_window_only():
    flappy = steps((0, 3), (30, 4), (60, 3), (90, 4), (120, 3))
    found = scaling.direction_changes(flappy, 600)
    assert found is not None
    assert found.value == 3
    spread = steps((0, 3), (1000, 4), (2000, 3), (3000, 4))
    found = scaling.direction_changes(spread, 600)
    assert found is not None
    assert found.value == 1


@given(st.lists(st.integers(1, 20), min_size=1, max_size=60))
def test_reversals_never_exceed_changes(values):
    series = [(float(i * 10), float(v)) for i, v in enumerate(values)]
    found = scaling.direction_changes(series, 600)
    assert found is not None
    assert 0 <= found.value <= max(0, found.episodes - 1)


# backlog drain -----------------------------------------------------------------------------------


def test_a_backlog_is_timed_from_its_peak():
    depth = steps((0, 0), (10, 20), (20, 60), (30, 40), (70, 8), (80, 0))
    found = scaling.drain_time(depth, 8, 100)
    assert found is not None
    assert found.value == 50  # peak at t=20, back to 8 at t=70


def test_a_backlog_still_there_at_the_end_counts_to_the_end():
    depth = steps((0, 0), (10, 50), (20, 40))
    found = scaling.drain_time(depth, 8, 300)
    assert found is not None
    assert found.value == 290


# definitions and the gate ----------------------------------------------------------------------


def test_every_shipped_scaling_definition_names_a_known_check():
    slos = [s for s in load() if s.metric is not None and s.metric.kind == "scaling"]
    names = {s.name for s in slos}
    assert {
        "api-scale-up-reaction",
        "worker-scale-up-reaction",
        "api-scale-down-stabilized",
        "worker-scale-down-stabilized",
        "api-no-flapping",
        "worker-no-flapping",
        "worker-backlog-drain",
    } <= names
    for slo in slos:
        assert slo.metric is not None
        assert slo.metric.check in scaling.CHECKS
        assert scaling.queries(slo.metric.check, dict(slo.metric.params))


BAD = """apiVersion: openslo/v1
kind: SLO
metadata: {{name: x}}
spec:
  indicator:
    spec:
      thresholdMetric:
        metricSource:
          type: cwh-scaling
          spec:
            check: {check}
            {extra}
  timeWindow: [{{duration: 28d}}]
  objectives: [{{op: lte, value: 1, target: 1}}]
"""


@pytest.mark.parametrize(
    ("check", "extra", "message"),
    [
        ("scale-sideways", "hpa: api", "'scale-sideways': one of"),
        ("flapping", "colour: red", "unknown 'colour'"),
        ("flapping", "window: soon", "window: not a duration"),
    ],
)
def test_a_bad_scaling_definition_names_the_file_and_line(tmp_path: Path, check, extra, message):
    f = tmp_path / "x.yaml"
    f.write_text(BAD.format(check=check, extra=extra))
    with pytest.raises(DefinitionError) as info:
        load_file(f)
    assert str(info.value).startswith(f"{f}:")
    assert message in str(info.value)


class FakeRange:
    """Answers range queries from fixed series, as Prometheus would (one series per query)."""

    def __init__(self, answers: dict[str, list[tuple[float, float]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def timed(self, query, start, end, step_s):
        self.asked.append(query)
        for fragment, series in self.answers.items():
            if fragment in query:
                return [[p for p in series if start <= p[0] <= end]]
        return []


def test_the_gate_judges_a_scaling_slo_and_says_why():
    """The gate's path for `cwh-scaling`: the check's number against the objective, the
    finding's sentence in the reason, no data when a series is missing."""
    slo = next(s for s in load() if s.name == "api-scale-up-reaction")
    answers = {
        "status_target_metric": every(0, 300, 5, lambda t: 90 if t >= 100 else 50),
        "status_current_replicas": every(0, 300, 5, lambda t: 3),
        "replicas_available": every(0, 300, 5, lambda t: 3),
    }
    ctx = Context(Window(0, 300), FakeRange(answers), RunData(None))  # type: ignore[arg-type]
    verdict = evaluate(slo, ctx)
    assert verdict.status == "fail"
    assert verdict.measured == 200
    assert "the longest without a new ready replica lasted 200 s" in verdict.reason
    answers.pop("replicas_available")
    verdict = evaluate(slo, ctx)
    assert verdict.status == "no_data"


def test_an_overload_signal_of_its_own_judges_an_hpa_that_misreads_its_metric():
    """An HPA whose own metric says 50 % while the replicas burn 90 %: by its own account it
    owes nothing; judged on the replicas' CPU (`query`), it never reacted."""
    hpa_view = every(0, 300, 5, lambda t: 50)
    replicas_cpu = every(0, 300, 5, lambda t: 90 if t >= 100 else 50)
    flat = every(0, 300, 5, lambda t: 3)
    answers = {
        "status_target_metric": hpa_view,
        "process_cpu_seconds_total": replicas_cpu,
        "status_current_replicas": flat,
        "replicas_available": flat,
    }
    params = {"hpa": "api", "threshold": 70.0, "maximum": 10.0}
    trusting = scaling.measure("scale-up-reaction", params, FakeRange(answers), 0, 300, 5)
    assert trusting is not None
    assert trusting.episodes == 0
    signal = "100 * sum(rate(process_cpu_seconds_total[10s]))"
    source = FakeRange(answers)
    own = scaling.measure("scale-up-reaction", {**params, "query": signal}, source, 0, 300, 5)
    assert own is not None
    assert own.value == 200
    assert signal in source.asked


def test_a_load_run_reports_each_change_of_the_replica_count_once():
    from cwh.fleet import replica_steps

    assert replica_steps([3, 3, 4, 6, 6, 6, 5, 3, 3]) == [3, 4, 6, 5, 3]
    assert replica_steps([3.0]) == [3]
    assert replica_steps([]) == []


def test_a_long_range_is_read_in_parts_at_the_same_step():
    """A 7-day window at 2 s is 302,400 points: asked in parts Prometheus accepts, joined per
    series, never coarsened."""
    from slo.sources import Prometheus

    asked: list[tuple[float, float, float]] = []

    class Recorder(Prometheus):
        def _range(self, query, start, end, step_s):  # type: ignore[override]
            asked.append((start, end, step_s))
            n = int((end - start) // step_s) + 1
            return [
                {"metric": {"hpa": "api"}, "values": [[start + k * step_s, "3"] for k in range(n)]}
            ]

    prom = Recorder("http://127.0.0.1:1")
    (series,) = prom.timed("q", 0.0, 7 * 86400.0, 2.0)
    assert all((end - start) / step + 1 <= Prometheus.MAX_POINTS for start, end, step in asked)
    assert {step for _, _, step in asked} == {2}
    times = [t for t, _ in series]
    assert times == sorted(set(times))  # no point twice where parts meet
    assert times[0] == 0
    assert times[-1] == 7 * 86400
    assert len(times) == 7 * 86400 // 2 + 1
