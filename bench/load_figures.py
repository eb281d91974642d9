"""The figures of `make bench-load`, as pure functions of what the run sampled (bench/load.py
samples; these judge), and the report's lines beside the goals of issue #17 goal 4.

A sample of the connected phase (`Sample`) is what the sink counted (phones whose heartbeat is
flowing, heartbeats received so far) and what the generator processes used at that moment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: Issue #17 goal 4: connected phones with heartbeats on this machine, and the phone user's
#: requests per CPU-second against a plain FastHttpUser's.
PHONES_GOAL = 20_000
RATIO_GOAL = 0.7
#: Connections one source address is given (two per phone): well under the 28,232 ports of
#: the ephemeral range, which the runs before this one may still hold in TIME_WAIT.
CONNECTIONS_PER_SOURCE = 10_000
#: A sample belongs to the hold when the sink counts at least this share of the most phones.
HOLD_SHARE = 0.95


@dataclass(frozen=True)
class Sample:
    """One sample of the connected phase.

    Attributes:
        t_s: seconds since the fleet started.
        live_phones: sockets whose last heartbeat the sink saw within 1.5 periods.
        open_sockets: sockets the sink holds.
        heartbeats: heartbeats the sink has received since it started (a counter).
        generator_cpu_percent: the generator processes' CPU over the last sampling interval,
            summed (100 is one core).
        generator_rss_mb: their resident memory, summed, MB.
        generator_max_fds: open descriptors of the generator process holding the most.
        generator_fd_limit: the lowest soft open-file limit among them.
        sink_cpu_percent: the sink processes' CPU, summed, like the generator's.
    """

    t_s: float
    live_phones: int
    open_sockets: int
    heartbeats: int
    generator_cpu_percent: float
    generator_rss_mb: float
    generator_max_fds: int
    generator_fd_limit: int
    sink_cpu_percent: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sources_needed(phones: int, per_phone: int = 2) -> int:
    """Loopback source addresses for `phones` (a socket and an HTTP connection each), so no
    (source, sink) pair is given more than CONNECTIONS_PER_SOURCE connections; at least one."""
    return max(1, math.ceil(phones * per_phone / CONNECTIONS_PER_SOURCE))


def hold_window(series: Sequence[Sample], share: float = HOLD_SHARE) -> list[Sample]:
    """The longest run of consecutive samples with at least `share` of the most phones the sink
    counted: the fleet held, after its ramp and before its stop. Empty when no phone was live."""
    top = max((s.live_phones for s in series), default=0)
    if top <= 0:
        return []
    best: list[Sample] = []
    run: list[Sample] = []
    for s in series:
        if s.live_phones >= share * top:
            run.append(s)
            if len(run) > len(best):
                best = list(run)
        else:
            run = []
    return best


@dataclass(frozen=True)
class HoldFigures:
    """What the fleet cost while it held its phones.

    Attributes:
        seconds: length of the hold window.
        mean_phones: phones live, on average over it.
        heartbeat_rate_per_s: heartbeats the sink received per second over it.
        expected_rate_per_s: mean_phones / the heartbeat period: what every phone beating on
            time would send (the achieved rate divided by this is the share on time).
        generator_cores: generator CPU seconds per second over it.
        cpu_per_1000_heartbeats_per_s: generator_cores / heartbeat rate x 1,000, in cores;
            it includes all the idle fleet costs (its rare requests, the ledger's shipping).
        sink_cores: the sink's CPU seconds per second over it.
    """

    seconds: float
    mean_phones: float
    heartbeat_rate_per_s: float
    expected_rate_per_s: float
    generator_cores: float
    cpu_per_1000_heartbeats_per_s: float | None
    sink_cores: float


def hold_figures(window: Sequence[Sample], heartbeat_s: float) -> HoldFigures | None:
    """The hold's rates; None when it is shorter than two samples (no interval to rate)."""
    if len(window) < 2:
        return None
    first, last = window[0], window[-1]
    seconds = last.t_s - first.t_s
    if seconds <= 0:
        return None
    rate = (last.heartbeats - first.heartbeats) / seconds
    # Each sample's CPU covers the interval that ends with it: the first sample's interval
    # lies before the window.
    inside = window[1:]
    cores = sum(s.generator_cpu_percent for s in inside) / len(inside) / 100
    sink = sum(s.sink_cpu_percent for s in inside) / len(inside) / 100
    mean_phones = sum(s.live_phones for s in window) / len(window)
    return HoldFigures(
        seconds=round(seconds, 1),
        mean_phones=round(mean_phones, 1),
        heartbeat_rate_per_s=round(rate, 1),
        expected_rate_per_s=round(mean_phones / heartbeat_s, 1),
        generator_cores=round(cores, 3),
        cpu_per_1000_heartbeats_per_s=round(cores / rate * 1000, 3) if rate > 0 else None,
        sink_cores=round(sink, 3),
    )


def memory_per_phone_kb(series: Sequence[Sample]) -> float | None:
    """Generator resident memory per phone, KB: the growth from the first sample to the one
    with the most phones, over the phones added meanwhile. None without growth in phones."""
    if not series:
        return None
    first = series[0]
    top = max(series, key=lambda s: s.live_phones)
    added = top.live_phones - first.live_phones
    if added <= 0:
        return None
    return round((top.generator_rss_mb - first.generator_rss_mb) * 1024 / added, 1)


def what_bounded(
    series: Sequence[Sample], aimed: int, connect_failures: int, cores: int
) -> list[str]:
    """Why the count stopped where it did, most likely first: the aim itself, failed connects,
    descriptors, the generator's CPU. Empty when nothing sampled explains it."""
    if not series:
        return ["no sample: the fleet did not start"]
    top = max(s.live_phones for s in series)
    out = []
    if top >= aimed:
        out.append(f"the aim: all {aimed} phones were held (a higher PHONES may hold more)")
    if connect_failures:
        out.append(f"{connect_failures} failed socket connects")
    fds = max(series, key=lambda s: s.generator_max_fds)
    if fds.generator_fd_limit and fds.generator_max_fds >= 0.95 * fds.generator_fd_limit:
        out.append(
            f"descriptors: a generator process held {fds.generator_max_fds} of its "
            f"{fds.generator_fd_limit}"
        )
    peak = max(s.generator_cpu_percent for s in series)
    if peak >= 90 * cores:
        out.append(f"generator CPU: peak {peak:.0f} % of {100 * cores}")
    if top < aimed and not out:
        out.append("the run's length: the ramp had not reached the aim (raise --hold)")
    return out


@dataclass(frozen=True)
class Verdict:
    """The goals, met or not (None: that part did not run)."""

    phones_met: bool | None
    ratio_met: bool | None

    @property
    def ok(self) -> bool:
        return self.phones_met is not False and self.ratio_met is not False


def verdict(tp: dict[str, Any] | None, conn: dict[str, Any] | None) -> Verdict:
    """The goals against the throughput part's figures (`tp`) and the connected part's."""
    return Verdict(
        phones_met=None if conn is None else conn["max_live_phones"] >= PHONES_GOAL,
        ratio_met=None if tp is None else tp["ratio_phone_to_plain"] >= RATIO_GOAL,
    )


def mark(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not run"}[met]


def goal_rows(tp: dict[str, Any] | None, conn: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """(figure, measured, goal, met) rows: the figures beside their goals."""
    v = verdict(tp, conn)
    rows: list[tuple[str, ...]] = []
    if tp:
        rows.append(
            (
                "phone / plain FastHttpUser, requests per CPU-second",
                f"{tp['ratio_phone_to_plain']}",
                f">= {RATIO_GOAL}",
                mark(v.ratio_met),
            )
        )
    if conn:
        hold = conn["hold"] or {}
        rows += [
            (
                "phones held with heartbeats flowing (sink's count)",
                f"{conn['max_live_phones']}",
                f">= {PHONES_GOAL}",
                mark(v.phones_met),
            ),
            ("generator memory per phone", f"{conn['memory_per_phone_kb']} KB", "reported", ""),
            (
                "generator CPU per 1,000 heartbeats/s",
                f"{hold.get('cpu_per_1000_heartbeats_per_s')} cores",
                "reported",
                "",
            ),
            (
                "heartbeats/s during the hold (expected at the period)",
                f"{hold.get('heartbeat_rate_per_s')} ({hold.get('expected_rate_per_s')})",
                "reported",
                "",
            ),
        ]
    return rows


def report_lines(tp: dict[str, Any] | None, conn: dict[str, Any] | None, hb: float) -> list[str]:
    """bench.md: the goals table, then how each part ran."""
    lines = ["# bench-load", "", "| figure | measured | goal | |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in goal_rows(tp, conn)]
    lines.append("")
    if tp:
        lines += [
            f"Throughput ({tp['users']} flat-out users, {tp['rounds']} alternated rounds of "
            f"{tp['seconds_per_run']} s, sink on loopback): phone user "
            f"{tp['median_phone_per_core']} requests per CPU-second, plain FastHttpUser "
            f"{tp['median_plain_per_core']}: ratio **{tp['ratio_phone_to_plain']}** "
            f"(goal {RATIO_GOAL}).",
            "",
        ]
    if conn:
        hold = conn["hold"] or {}
        lines += [
            f"Connected phones (aimed at {conn['goal']}, {conn['workers']} generator processes, "
            f"{len(conn['sources'])} source address(es) {', '.join(conn['sources'])}, "
            f"{conn['sinks']} sink processes, heartbeat every {hb:g} s): "
            f"**{conn['max_live_phones']}** at most with heartbeats flowing, counted by the sink "
            f"(goal {PHONES_GOAL}); aim reached at {conn['reached_goal_at_s']} s, held "
            f"{conn['held_goal_for_s']} s; {conn['connect_failures']} failed connects.",
            "",
            f"Over the hold ({hold.get('seconds')} s, {hold.get('mean_phones')} phones on "
            f"average): {hold.get('heartbeat_rate_per_s')} heartbeats/s received "
            f"({hold.get('expected_rate_per_s')} expected at the period); generator "
            f"{hold.get('generator_cores')} cores, so **{hold.get('cpu_per_1000_heartbeats_per_s')}"
            f" cores per 1,000 heartbeats/s** (the idle fleet's every cost included); sink "
            f"{hold.get('sink_cores')} cores. Generator memory **{conn['memory_per_phone_kb']} KB"
            f" per phone** (resident growth over phones added). Peaks: generator CPU "
            f"{conn['peak_generator_cpu_percent']} % of {100 * conn['cores']}, "
            f"{conn['peak_generator_fds']} descriptors in one generator process (its limit "
            f"{conn['generator_fd_limit']}).",
            "",
            "What bounded it: " + ("; ".join(conn["bounded_by"]) or "nothing sampled") + ".",
            "",
            "![connected phones](connected.png)",
        ]
    return lines
