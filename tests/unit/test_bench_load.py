"""`make bench-load`'s pure parts: the connected phase's figures from its samples (the hold,
heartbeats per second, CPU per 1,000 heartbeats/s, memory per phone), what bounded the count,
and the figures beside their goals."""

from __future__ import annotations

from typing import Any

import pytest

from bench.load_figures import (
    PHONES_GOAL,
    RATIO_GOAL,
    Sample,
    goal_rows,
    hold_figures,
    hold_window,
    memory_per_phone_kb,
    report_lines,
    sources_needed,
    verdict,
    what_bounded,
)


def sample(t: float, live: int, beats: int = 0, **kw: Any) -> Sample:
    base: dict[str, Any] = {
        "t_s": t,
        "live_phones": live,
        "open_sockets": live,
        "heartbeats": beats,
        "generator_cpu_percent": 50.0,
        "generator_rss_mb": 100.0,
        "generator_max_fds": live // 2 + 50,
        "generator_fd_limit": 20_000,
        "sink_cpu_percent": 10.0,
    }
    return Sample(**{**base, **kw})


def test_sources_keep_each_pair_far_from_the_ephemeral_range() -> None:
    assert sources_needed(0) == 1
    assert sources_needed(5_000) == 1  # 10,000 connections
    assert sources_needed(5_001) == 2
    assert sources_needed(20_000) == 4


def test_the_hold_is_the_longest_run_near_the_most_phones() -> None:
    series = [
        sample(0, 0),
        sample(2, 9_000),
        sample(4, 19_100),  # >= 95 % of 20,000
        sample(6, 20_000),
        sample(8, 18_000),  # a dip: ends the first run
        sample(10, 19_500),
        sample(12, 19_900),
        sample(14, 20_000),
        sample(16, 3_000),  # the fleet stopping
    ]
    assert [s.t_s for s in hold_window(series)] == [10, 12, 14]
    assert hold_window([sample(0, 0), sample(2, 0)]) == []
    assert hold_window([]) == []


def test_hold_figures_rate_heartbeats_and_cpu_over_the_window() -> None:
    window = [
        # The first sample's CPU covers the interval before the window: not counted.
        sample(10, 20_000, beats=1_000, generator_cpu_percent=190.0),
        sample(12, 20_000, beats=3_600, generator_cpu_percent=30.0, sink_cpu_percent=20.0),
        sample(14, 20_000, beats=6_200, generator_cpu_percent=50.0, sink_cpu_percent=40.0),
    ]
    h = hold_figures(window, heartbeat_s=15.0)
    assert h is not None
    assert h.seconds == 4
    assert h.heartbeat_rate_per_s == 1_300  # 5,200 heartbeats in 4 s
    assert h.expected_rate_per_s == pytest.approx(1_333.3)
    assert h.generator_cores == pytest.approx(0.4)
    assert h.cpu_per_1000_heartbeats_per_s == pytest.approx(0.4 / 1.3, abs=1e-3)
    assert h.sink_cores == pytest.approx(0.3)


def test_hold_figures_need_an_interval_and_heartbeats() -> None:
    assert hold_figures([sample(0, 10)], 15.0) is None
    flat = hold_figures([sample(0, 10, beats=5), sample(2, 10, beats=5)], 15.0)
    assert flat is not None
    assert flat.cpu_per_1000_heartbeats_per_s is None


def test_memory_per_phone_is_resident_growth_over_phones_added() -> None:
    series = [
        sample(2, 200, generator_rss_mb=150.0),
        sample(60, 20_200, generator_rss_mb=1_150.0),  # +1,000 MB for +20,000 phones
        sample(70, 100, generator_rss_mb=1_200.0),
    ]
    assert memory_per_phone_kb(series) == pytest.approx(51.2)
    assert memory_per_phone_kb([sample(2, 0)]) is None
    assert memory_per_phone_kb([]) is None


def test_what_bounded_names_the_aim_failures_descriptors_and_cpu() -> None:
    held = [sample(0, 0), sample(2, 20_000, generator_cpu_percent=60.0)]
    assert what_bounded(held, 20_000, 0, cores=2) == [
        "the aim: all 20000 phones were held (a higher PHONES may hold more)"
    ]
    short = [
        sample(0, 0),
        sample(2, 19_000, generator_max_fds=19_500, generator_cpu_percent=195.0),
    ]
    reasons = what_bounded(short, 20_000, 12, cores=2)
    assert reasons[0] == "12 failed socket connects"
    assert "descriptors: a generator process held 19500 of its 20000" in reasons
    assert "generator CPU: peak 195 % of 200" in reasons
    quiet = [sample(0, 0), sample(2, 5_000)]
    assert what_bounded(quiet, 20_000, 0, cores=2) == [
        "the run's length: the ramp had not reached the aim (raise --hold)"
    ]
    assert what_bounded([], 20_000, 0, cores=2) == ["no sample: the fleet did not start"]


def tp(ratio: float) -> dict[str, Any]:
    return {
        "users": 50,
        "rounds": 2,
        "seconds_per_run": 15,
        "median_phone_per_core": 700,
        "median_plain_per_core": 1000,
        "ratio_phone_to_plain": ratio,
    }


def conn(live: int) -> dict[str, Any]:
    return {
        "goal": 20_000,
        "workers": 2,
        "sources": ["127.0.0.2", "127.0.0.3"],
        "sinks": 2,
        "cores": 2,
        "max_live_phones": live,
        "reached_goal_at_s": 140.0,
        "held_goal_for_s": 40.0,
        "connect_failures": 0,
        "hold": {"seconds": 40.0, "cpu_per_1000_heartbeats_per_s": 0.2},
        "memory_per_phone_kb": 40.0,
        "peak_generator_cpu_percent": 120.0,
        "peak_generator_fds": 10_500,
        "generator_fd_limit": 20_000,
        "bounded_by": ["the aim"],
    }


def test_the_verdict_holds_each_part_to_its_goal_and_skips_what_did_not_run() -> None:
    assert verdict(tp(RATIO_GOAL), conn(PHONES_GOAL)).ok
    assert not verdict(tp(0.69), conn(PHONES_GOAL)).ok
    assert not verdict(tp(0.8), conn(PHONES_GOAL - 1)).ok
    only_tp = verdict(tp(0.8), None)
    assert only_tp.ok
    assert only_tp.phones_met is None


def test_the_report_puts_each_figure_beside_its_goal() -> None:
    rows = goal_rows(tp(0.65), conn(20_100))
    assert rows[0][1:] == ("0.65", ">= 0.7", "**missed**")
    assert rows[1][1:] == ("20100", ">= 20000", "met")
    text = "\n".join(report_lines(tp(0.65), conn(20_100), 15.0))
    assert "| phones held with heartbeats flowing (sink's count) | 20100 | >= 20000 | met |" in text
    assert "0.2 cores per 1,000 heartbeats/s" in text
    assert "What bounded it: the aim." in text
