"""`make bench-scale`'s predicted bounds: derived from a spec alone, they must bound what the
controller's own algorithm does (`env.autoscaler.run` over a simulated target), and not by
much, or the measured / predicted ratio would flatter every run."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from bench.scale import Ramp, predicted_scale_down_s, predicted_scale_up_s, summarize
from env import hpa
from env.autoscaler import ControllerConfig, Observation, run
from tests.unit.hpa_helpers import CPU_REQUEST, cpu, cpu_pods, rules, spec


def test_the_shipped_api_spec_gives_the_bounds_the_readme_states():
    api = hpa.load()["api"]
    cfg = ControllerConfig(sync_period_s=15)
    # Scale-up window 0 + a 15 s sync + a 5 s readiness period + a 2 s scrape.
    assert predicted_scale_up_s(api, cfg, 5.0, 2.0) == 22
    # 6 -> 3: the first removal one sync plus the 300 s window after the stop (315 s), then
    # one replica per 30 s (345, 375), plus a scrape.
    assert predicted_scale_down_s(api, cfg, 6, 2.0) == 377
    assert predicted_scale_down_s(api, cfg, 3, 2.0) == 2.0 + 15 + 300  # already at the minimum


def test_a_percent_policy_and_a_disabled_one():
    halve = spec(cpu(70), lo=2, hi=20, down=rules(0, "Max", ("Percent", 50, 10)))
    cfg = ControllerConfig(sync_period_s=5)
    # 16 -> 8 at t=5, -> 4 at 15, -> 2 at 25: a period between each.
    assert predicted_scale_down_s(halve, cfg, 16, 0.0) == 25
    frozen = spec(cpu(70), lo=2, hi=20, down=rules(0, "Disabled"))
    assert predicted_scale_down_s(frozen, cfg, 16, 0.0) == math.inf


def idle_after(stop: float, peak: int):
    """CPU at the target until `stop` (no change), none after: the load stopped."""

    def observe(now: float, replicas: int) -> Observation:
        usage = CPU_REQUEST * 0.7 if now < stop else 0.0
        return cpu_pods(now, [usage] * replicas)

    return observe


@given(
    window=st.integers(0, 120),
    value=st.integers(1, 3),
    period=st.integers(5, 60),
    sync=st.integers(1, 15),
    peak=st.integers(4, 10),
    phase=st.floats(0, 0.999),
)
def test_the_drain_bound_holds_for_the_controllers_own_algorithm(
    window, value, period, sync, peak, phase
):
    s = spec(cpu(70), lo=3, hi=10, down=rules(window, "Max", ("Pods", value, period)))
    cfg = ControllerConfig(sync_period_s=sync)
    stop = phase * sync  # the load stops somewhere between two syncs
    start = -(window + 2 * period + 2 * sync)  # a history full of the peak's recommendations
    back = next(
        d.at
        for d in run(s, idle_after(stop, peak), peak, start, stop + 10_000, cfg)
        if d.at >= stop and d.desired == 3
    )
    predicted = predicted_scale_down_s(s, cfg, peak, 0.0)
    assert back - stop <= predicted
    # Tight: the model charges one sync for a metric window the simulation does not have and
    # one for the stop's phase, no more.
    assert back - stop >= predicted - 2 * sync


def test_the_summary_reads_ratios_against_each_ramps_bound():
    # Own-CPU figures against the own-CPU bound, the HPA's view against the HPA's bound.
    ramps = [
        Ramp(
            1,
            0.0,
            0.0,
            scaled=[6.0, 17.0],
            scaled_hpa=[6.0],
            drain_s=40.0,
            predicted_up_s=12,
            predicted_up_own_s=17,
            predicted_down_s=47,
        ),
        Ramp(
            2,
            1.0,
            0.0,
            scaled=[8.5],
            scaled_hpa=[12.0],
            drain_s=None,
            predicted_up_s=12,
            predicted_up_own_s=17,
            problem="stuck",
        ),
    ]
    out = summarize(ramps)
    assert out["time_to_scale_s"]["n"] == 3
    assert out["time_to_scale_ratio"]["max"] == 1.0  # 17 / 17, not 17 / 12
    assert out["time_to_scale_hpa_view_ratio"]["max"] == 1.0  # 12 / 12
    assert out["time_to_scale_hpa_view_ratio"]["n"] == 2
    assert out["time_to_drain_s"]["n"] == 1
    assert out["problems"] == ["#2: stuck"]
