"""`make bench-proxy`'s pure parts: the figures from the rounds' tallies (ratio, CPU per
operation, the CPU-bound ratio) and the hottest frames of a py-spy profile."""

from __future__ import annotations

import argparse

import pytest

from bench.proxy import Bench, Tally, report_lines, top_frames


def bench_with(tallies: dict[tuple[str, str], Tally]) -> Bench:
    return Bench(argparse.Namespace(), proxy_pid=0, upstream_pid=0, direct_port=0, proxy_port=0,
                 tallies=tallies)  # fmt: skip


def test_figures_are_ratios_of_rates_with_the_cpu_per_operation() -> None:
    bench = bench_with(
        {
            # 4,000 round trips in 2 s direct, the ends spending 40 ms: 10 us each
            ("round_trips", "direct"): Tally(ops=4000, seconds=2.0, ends_cpu_s=0.04),
            # 3,000 in 2 s through the proxy: ends 30 ms (10 us), proxy 30 ms (10 us)
            ("round_trips", "proxy"): Tally(
                ops=3000, seconds=2.0, proxy_cpu_s=0.03, ends_cpu_s=0.03
            ),
            ("bulk", "direct"): Tally(ops=2_000_000_000, seconds=1.0, ends_cpu_s=0.5),
            ("bulk", "proxy"): Tally(ops=500_000_000, seconds=1.0, proxy_cpu_s=0.25),
        }
    )
    f = bench.figures()
    assert set(f) == {"round_trips", "bulk"}  # connects not measured: no row
    rt = f["round_trips"]
    assert (rt["direct"], rt["proxy"], rt["ratio"]) == (2000.0, 1500.0, 0.75)
    assert rt["proxy_cpu_us_per_op"] == pytest.approx(10.0)
    assert rt["ends_cpu_us_per_op"] == pytest.approx(10.0)
    assert rt["cpu_bound_ratio"] == pytest.approx(0.5)  # 10 us direct against 20 proxied
    bulk = f["bulk"]
    assert (bulk["direct"], bulk["proxy"], bulk["ratio"]) == (2000.0, 500.0, 0.25)
    assert bulk["proxy_cpu_us_per_op"] == pytest.approx(500.0)  # per MB
    lines = "\n".join(report_lines(argparse.Namespace(rounds=2, seconds=2, size=100, conns=8), f))
    assert "| **0.75** (missed) |" in lines
    assert "| **0.25** (missed) |" in lines


def test_a_side_without_time_gives_no_figure() -> None:
    bench = bench_with(
        {
            ("connects", "direct"): Tally(ops=10, seconds=1.0),
            ("connects", "proxy"): Tally(),
        }
    )
    assert bench.figures() == {}


def test_top_frames_counts_self_and_total_time_from_collapsed_stacks() -> None:
    collapsed = "\n".join(
        [
            "run (a.py:1);loop (a.py:2);write (libc.so.6) 60",
            "run (a.py:1);loop (a.py:2);epoll_pwait (libc.so.6) 30",
            "run (a.py:1);feed (b.py:9) 10",
            "not a sample line",
        ]
    )
    frames = top_frames(collapsed, n=2)
    assert frames == [("write (libc.so.6)", 60.0, 60.0), ("epoll_pwait (libc.so.6)", 30.0, 30.0)]
    assert top_frames("") == []


def test_the_kernel_side_is_reported_beside_the_proxy_and_not_judged() -> None:
    bench = bench_with(
        {
            ("round_trips", "direct"): Tally(ops=4000, seconds=2.0, machine_cpu_s=0.08),
            ("round_trips", "proxy"): Tally(ops=2000, seconds=2.0, machine_cpu_s=0.08),
            ("round_trips", "kernel"): Tally(ops=3600, seconds=2.0, machine_cpu_s=0.09),
        }
    )
    rt = bench.figures()["round_trips"]
    assert (rt["ratio"], rt["kernel"], rt["kernel_ratio"]) == (0.5, 1800.0, 0.9)
    # 20 us of the machine per round trip direct, 40 through the proxy, 25 redirected
    assert rt["machine_cpu_us_per_op"] == {"direct": 20.0, "proxy": 40.0, "kernel": 25.0}
    lines = "\n".join(report_lines(argparse.Namespace(rounds=2, seconds=2, size=100, conns=8),
                                   bench.figures()))  # fmt: skip
    assert "| round_trips | round trips/s | 2000.0 | 1800.0 | 0.9 | 0.5 |" in lines
    assert "| **0.5** (missed) |" in lines  # the proxy is still what is judged
