"""`make bench-soak DURATION=30m`: a fleet in the `soak` shape against the local environment,
and what every service process of the environment does meanwhile.

While the fleet runs (`cwh.fleet.run_fleet`, shape `soak`, closed model), every service process
the supervisor keeps (its `/status`: API replicas, hubs, workers, schedulers, gateway, Patroni,
HAProxy, pgBouncer, Redis, etcd, Prometheus, the exporters, the emulators, the supervisor
itself; and each PostgreSQL member's postmaster with its backends, which Patroni daemonizes) is
sampled every few seconds: memory and open file descriptors, each summed over the service's
process tree.

Memory is PSS (proportional set size: each shared page divided among the processes sharing it)
summed over the tree, with RSS kept beside it: a PostgreSQL member's RSS counts its shared
buffers once per backend that touched them, so backends coming and going look like growth
where nothing was allocated. For a single process without shared mappings the two agree.

Figures, each beside its goal:

- memory growth per hour after the warm-up, as a ratio of the level at the end of the warm-up:
  the slope of a least-squares line through the samples from the warm-up's end to the fleet's
  end. Goal: below 10 % per hour. A slope the samples cannot tell from noise (t below 3) is
  not growth. The warm-up runs before DURATION (WARMUP=auto: until Redis holds its 30 minutes
  of responses and etcd its raft log, `auto_warmup_s`; or a time), or is the first fifth of
  DURATION, at most 5 minutes (WARMUP=0, bench-chaos's soak). A service mapping shared-memory
  segments is judged on its memory outside them (`Sample.judged_bytes`).
- descriptor growth after the warm-up, from the same line. Goal: none (the line rises by less
  than one descriptor, or not measurably, or the growth levelled off: a last half exactly flat
  that does not look like a leak, or a pool that reached its size, `service_figures`).
- latency p50 / p95 / p99 of the phones' operations (submit, read, sync: exact, from the
  run's own ledger, whose HDR histograms span the whole run) in the first and the last 5 minutes (a
  fifth of a short run; the first window starts once every phone has arrived), the last as a
  ratio of the first. Goal: p99 within 20 % of the start.
- restarts of a service during the run (its pid changed): a soak with one proves nothing about
  that service's memory; counted as a miss.
- spurious failovers: no fault is injected, so every PostgreSQL leader change, new timeline or
  demotion and every Redis master change or epoch bump (`bench/roles.py`, sampled with the
  services) is a failure detector's false alarm, the price of detecting real failures fast.
  Goal: none. NOISE=N runs N busy processes beside the fleet (a noisy neighbour: `bench/noise.py`)
  so the cores are contended; their CPU time is reported, to show the contention happened.

Runs on an environment of its own (base port 22600 unless CWH_BENCH_BASE_PORT says otherwise,
run directory /var/tmp/cwh-bench-<port>; the other CWH_* settings apply), started afresh and
brought down at the end, also on Ctrl-C: a user's own environment (and its data) is never
touched, and an earlier run's state is no baseline.

Writes `reports/<UTC>-bench-soak/`: samples.jsonl (every sample), summary.json, summary.md,
memory.png, fds.png and latency.png (each series over time), report.html, and the fleet's own
run folder (`load/`, Locust's output in `load/locust.log`). Bounded: the fleet's run time,
its read-back (SETTLE) and a margin. Ctrl-C stops the fleet, which reconciles what ran, and
what was sampled is analysed and written all the same.

Exit code: 0 every goal met, 1 a goal missed (or the fleet lost requests, or failed), 2 bad
arguments or nothing to judge (too few samples or operations), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from bench.fleet_args import add_fleet_arguments
from bench.noise import cpu_seconds, noisy_neighbours
from bench.roles import RoleChanges, RoleProbe, RoleSample, role_changes
from cwh.durations import parse_duration
from cwh.report.versions import stamp_versions
from env.commands import ETCD_SNAPSHOT_COUNT, PATRONI_WRITES_PER_S
from env.configs import REDIS_MAXMEMORY_MIB
from slo.ledger import Operation

#: The bench's own environment (CWH_BENCH_BASE_PORT): apart from the other benches' (21000,
#: 22000, 22400) and from a user's (17000).
BENCH_BASE_PORT = 22600

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
#: The longest warm-up and the longest latency window, s; shorter runs take a fifth of the run.
WINDOW_CAP_S = 300.0
#: The phones' own operations whose latency is judged (HTTP; notifications have no latency).
PHONE_KINDS = ("submit", "read", "sync")
#: Below this t statistic a slope is not told apart from the samples' noise.
T_MIN = 3.0
#: Operations a latency window needs before its p99 means anything.
MIN_WINDOW_OPS = 50


# ---- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakSettings:
    """The soak's parameters, validated (`parse_args`).

    Attributes:
        duration_s: the judged part of the fleet's run, s (DURATION: 30m, 90s, 1h); the whole
            run when there is no `lead_s`.
        lead_s: a warm-up run before `duration_s` (WARMUP), s; 0: none, the warm-up is then
            the first fifth of `duration_s`, at most 5 minutes. `make bench-soak` takes it from
            the environment (`auto_warmup_s`): a soak judges a system whose stores have
            filled what they hold by design, which a fresh environment's have not.
        auto_warmup: `lead_s` is to be taken from the environment once it is up (WARMUP=auto).
        reanalyse: a run folder to judge again from what it recorded (`reanalyse`); nothing
            runs.
        users: phones of the fleet; spawn_rate: phones started per second; settle_s: the
            read-back's limit after the run, s (make load's USERS, SPAWN_RATE, SETTLE).
        interval_s: seconds between samples; 0 picks one from the duration (`sample_every_s`).
        memory_goal: the most memory growth per hour after the warm-up, as a ratio (0.10).
        p99_goal: the most the last window's p99 may exceed the first's, as a ratio (0.20).
        noise: busy processes beside the fleet for its run time (NOISE; 0: none).
        out_dir: the run folder; empty: `reports/<UTC>-bench-soak` (bench-chaos's SOAK puts it
            in its own).
    """

    duration_s: float = 1800.0
    users: int = 50
    spawn_rate: float = 10.0
    settle_s: float = 60.0
    interval_s: float = 0.0
    memory_goal: float = 0.10
    p99_goal: float = 0.20
    noise: int = 0
    out_dir: str = ""
    lead_s: float = 0.0
    auto_warmup: bool = False
    reanalyse: str = ""

    @property
    def warmup_s(self) -> float:
        return self.lead_s or window_s(self.duration_s)

    @property
    def run_s(self) -> float:
        """The fleet's run time: the warm-up before the judged part, and that part."""
        return self.lead_s + self.duration_s

    @property
    def sample_every_s(self) -> float:
        """`interval_s`, else about 180 samples over the run, between 2 and 10 s apart."""
        return self.interval_s or min(10.0, max(2.0, self.run_s / 180))

    @property
    def latency_start_s(self) -> float:
        """Where the first latency window starts, s after the first operation: after the
        warm-up when it runs before the judged part, else once the phones arrived."""
        return max(self.ramp_s, self.lead_s)

    @property
    def ramp_s(self) -> float:
        """Where the first latency window starts, s after the first operation: the phones'
        arrival (users / spawn rate) and as long again for their first sessions (registration,
        tokens, sockets: a burst on a small machine, no baseline)."""
        return 2 * self.users / self.spawn_rate


def window_s(span_s: float) -> float:
    """The warm-up and each latency window for a run of `span_s` seconds: 5 minutes, or a fifth
    of a run shorter than 25 minutes."""
    return min(WINDOW_CAP_S, span_s / 5)


#: Raft entries etcd 3.4 keeps in memory after each snapshot (`SnapshotCatchUpEntries`: a
#: constant there, a flag only from 3.5's experimental ones).
ETCD_CATCHUP_ENTRIES = 5000
#: How long the API and the workers keep a response in Redis (the seed's "Response: 30 min";
#: `reference_impl.api.RESPONSE_TTL_S`, which a unit test holds equal): Redis's data grows
#: for that long under a steady fleet, then expires as fast as it comes.
RESPONSE_TTL_S = 1800.0
#: Past the last store's filling, for what follows it (expiry's cycles, a last snapshot).
WARMUP_MARGIN_S = 120.0
#: The longest automatic warm-up: a rate measured absurdly low must not make a day-long run.
MAX_AUTO_WARMUP_S = 7200.0


@dataclass(frozen=True)
class Warmup:
    """The warm-up `auto_warmup_s` chose, and why (summary.json's `warmup`).

    Attributes:
        lead_s: the warm-up, s. redis_s: until Redis holds a full `RESPONSE_TTL_S` of
            responses. etcd_s: until etcd's raft log holds what it keeps (`etcd_full_index`)
            at the rate Patroni writes, s. etcd_index: its applied index when measured;
            etcd_writes_per_s: that rate (None: not measured); assumed_writes_per_s: the rate
            taken instead (PATRONI_WRITES_PER_S), None when the measured one was used.
    """

    lead_s: float
    redis_s: float
    etcd_s: float
    etcd_index: int | None
    etcd_full_index: int
    etcd_writes_per_s: float | None
    assumed_writes_per_s: float | None = None

    @property
    def problems(self) -> list[str]:
        """What the run's report must say about how the warm-up was chosen."""
        out = []
        if self.etcd_index is None or self.assumed_writes_per_s is not None:
            out.append(
                f"warm-up: etcd's raft index could not be measured; assumed "
                f"{self.assumed_writes_per_s or PATRONI_WRITES_PER_S} writes/s from index "
                f"{self.etcd_index or 0}"
            )
        if self.lead_s < self.etcd_s:
            out.append(
                f"warm-up: capped at {self.lead_s:g} s, before etcd's raft log is full "
                f"({self.etcd_s:g} s): etcd is judged while it still fills"
            )
        return out


def auto_warmup_s(
    etcd_index: int | None,
    writes_per_s: float | None,
    snapshot_count: int = ETCD_SNAPSHOT_COUNT,
    response_ttl_s: float = RESPONSE_TTL_S,
) -> Warmup:
    """The warm-up before a soak's judged part: until the stores that fill by design are
    full, so that what still grows after it is growth. Redis holds every response for
    `response_ttl_s` (its memory rises for that long, then levels: a 30-minute soak from a
    fresh start saw nothing else); etcd keeps its raft log in memory up to `snapshot_count`
    entries plus the `ETCD_CATCHUP_ENTRIES` kept after each snapshot, filled at Patroni's rate
    (about 2.3 a second: 43 minutes from a fresh start; soaks saw etcd rise for about 40). At
    least `WINDOW_CAP_S` (the allocators' and pools' own warm-up), plus `WARMUP_MARGIN_S`."""
    full = snapshot_count + ETCD_CATCHUP_ENTRIES
    rate = writes_per_s if writes_per_s and writes_per_s > 0 else PATRONI_WRITES_PER_S
    etcd_s = max(0.0, (full - (etcd_index or 0)) / rate)
    lead = min(MAX_AUTO_WARMUP_S, max(WINDOW_CAP_S, response_ttl_s, etcd_s) + WARMUP_MARGIN_S)
    return Warmup(
        lead_s=round(lead),
        assumed_writes_per_s=None if rate == writes_per_s else rate,
        redis_s=response_ttl_s,
        etcd_s=round(etcd_s, 1),
        etcd_index=etcd_index,
        etcd_full_index=full,
        etcd_writes_per_s=None if writes_per_s is None else round(writes_per_s, 3),
    )


def etcd_applied_index(port: int, timeout_s: float = 5.0) -> int | None:
    """etcd's applied raft index (its `etcd_server_proposals_applied_total` gauge), None when
    it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        if line.startswith("etcd_server_proposals_applied_total "):
            return int(float(line.split()[1]))
    return None


def measure_warmup(etcd_port: int, console: Console, over_s: float = 30.0) -> Warmup:
    """`auto_warmup_s` from etcd's applied index now and its rate over `over_s` seconds at
    rest (Patroni's writes do not depend on the load: its loop renews its keys)."""
    with console.status(f"measuring Patroni's write rate to etcd for the warm-up ({over_s:g} s)…"):
        first, t0 = etcd_applied_index(etcd_port), time.monotonic()
        time.sleep(over_s)  # the measurement's window, not a wait for a state
        last, t1 = etcd_applied_index(etcd_port), time.monotonic()
    rate = (last - first) / (t1 - t0) if first is not None and last is not None else None
    return auto_warmup_s(last, rate)


def parse_args(argv: list[str] | None = None) -> SoakSettings:
    """The command line, checked before anything starts.

    Raises:
        SystemExit(2): a bad value, with a message naming the make variable.
    """
    parser = argparse.ArgumentParser(
        prog="bench-soak", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_fleet_arguments(parser, 1800.0, "30m, 90s, 1h")
    parser.add_argument("--interval", type=float, default=0.0, help="s between samples (0: auto)")
    parser.add_argument(
        "--noise", type=int, default=0, help="busy processes beside the fleet (NOISE; 0: none)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default reports/<UTC>-bench-soak)"
    )
    parser.add_argument(
        "--warmup",
        default="",
        help="a warm-up before DURATION (WARMUP): `auto` (until the stores are full: "
        "`auto_warmup_s`), or a time (45m); none: the first fifth of DURATION, at most 5m",
    )
    parser.add_argument(
        "--reanalyse",
        type=Path,
        default=None,
        help="judge a run folder again from its samples.jsonl, roles.jsonl and load/ with "
        "these settings (its warm-up unless --warmup says); starts nothing",
    )
    ns = parser.parse_args(argv)
    problems = []
    if ns.reanalyse and not (ns.reanalyse / "samples.jsonl").is_file():
        problems.append(f"--reanalyse {ns.reanalyse}: no samples.jsonl there")
    lead_s, auto = 0.0, ns.warmup.strip().lower() == "auto"
    if ns.warmup.strip() and not auto:
        try:
            lead_s = parse_duration(ns.warmup)
        except ValueError as exc:
            problems.append(f"WARMUP={ns.warmup}: {exc} (or `auto`)")
        if not 0 <= lead_s <= 86_400:
            problems.append(f"WARMUP={ns.warmup}: 0 to 24h (or `auto`)")
    if not 60 <= ns.duration <= 86_400:
        problems.append(f"DURATION={ns.duration:g} s: a soak runs 1m to 24h")
    if not 1 <= ns.users <= 100_000:
        problems.append(f"USERS={ns.users}: 1 to 100000")
    if not 0 < ns.spawn_rate <= 1000:
        problems.append(f"SPAWN_RATE={ns.spawn_rate:g}: above 0, at most 1000 phones/s")
    if not 1 <= ns.settle <= 3600:
        problems.append(f"SETTLE={ns.settle:g}: 1 to 3600 seconds")
    if ns.interval and not 0.5 <= ns.interval <= 60:
        problems.append(f"--interval={ns.interval:g}: 0.5 to 60 s (0: from the duration)")
    if not 0 <= ns.noise <= 16:
        problems.append(f"NOISE={ns.noise}: 0 to 16 busy processes")
    if problems:
        parser.error("; ".join(problems))
    return SoakSettings(
        duration_s=ns.duration,
        users=ns.users,
        spawn_rate=ns.spawn_rate,
        settle_s=ns.settle,
        interval_s=ns.interval,
        noise=ns.noise,
        out_dir=str(ns.out or ""),
        lead_s=lead_s,
        auto_warmup=auto,
        reanalyse=str(ns.reanalyse or ""),
    )


# ---- analysis (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Growth:
    """A least-squares line through a series' samples.

    Attributes:
        samples: how many points the line went through.
        start, end: the line's value at the first and the last point's time (the series' unit).
        per_hour: its slope, in the series' unit per hour.
        ratio_per_hour: `per_hour / start` (None when `start` is not above 0).
        t_stat: the slope over its standard error: how far it stands out of the noise (0 for a
            flat line, infinite for a rising line with no scatter).
    """

    samples: int
    start: float
    end: float
    per_hour: float
    ratio_per_hour: float | None
    t_stat: float


def fit_growth(points: Sequence[tuple[float, float]]) -> Growth | None:
    """The least-squares line through (t_s, value) points; None for fewer than 3 points or
    points that do not span any time."""
    n = len(points)
    if n < 3:
        return None
    ts = [p[0] for p in points]
    ys = [p[1] for p in points]
    t_mean, y_mean = sum(ts) / n, sum(ys) / n
    sxx = sum((t - t_mean) ** 2 for t in ts)
    if sxx <= 0:
        return None
    slope = sum((t - t_mean) * (y - y_mean) for t, y in zip(ts, ys, strict=True)) / sxx
    intercept = y_mean - slope * t_mean
    residual = sum((y - (intercept + slope * t)) ** 2 for t, y in zip(ts, ys, strict=True))
    stderr = math.sqrt(residual / (n - 2) / sxx)
    # Relative to the slope's scale: float rounding leaves a tiny residual on a perfect line.
    if stderr <= 1e-9 * max(abs(slope), 1e-12):
        t_stat = 0.0 if slope == 0 else math.copysign(math.inf, slope)
    else:
        t_stat = slope / stderr
    start, end = intercept + slope * ts[0], intercept + slope * ts[-1]
    per_hour = slope * 3600
    return Growth(
        samples=n,
        start=start,
        end=end,
        per_hour=per_hour,
        ratio_per_hour=per_hour / start if start > 0 else None,
        t_stat=t_stat,
    )


#: By kind, what a datastore's configuration lets it hold, MiB: a Redis node's `maxmemory`.
#: Its memory grows for as long as its data fills what it is allowed (Redis holds responses
#: for 30 minutes), and its memory alone cannot tell that from a leak: growth over the goal
#: that neither levels off nor passes the cap is not judged, and leaves the memory goal
#: inconclusive (a run long enough for the data to stop growing levels off, and is judged);
#: growth past the cap is missed. A PostgreSQL member's shared buffers need no cap here: they
#: are a shared-memory segment, judged by its size (`Sample.judged_bytes`).
MEMORY_CAPS_MIB: dict[str, float] = {"redis": float(REDIS_MAXMEMORY_MIB)}


def memory_grows(g: Growth | None, goal: float) -> bool | None:
    """Whether memory grows `goal` (a ratio) or more per hour, measurably; None: too few
    samples to say."""
    if g is None or g.ratio_per_hour is None:
        return None
    return g.ratio_per_hour >= goal and g.t_stat >= T_MIN


def levels_off(late: Growth | None, goal: float) -> bool:
    """Whether a last half's line is below `goal` (a ratio per hour) beyond doubt: its slope
    plus `T_MIN` standard errors. False when it cannot be told."""
    if late is None or late.ratio_per_hour is None:
        return False
    ratio, t = late.ratio_per_hour, late.t_stat
    stderr = 0.0 if t == 0 or math.isinf(t) else abs(ratio / t)
    return ratio + T_MIN * stderr < goal


#: How many samples in a row a count must hold a level for that level to be a pool's size in
#: `high_water_held`: one sample (a burst of connections) does not set the bar.
HOLD_SAMPLES = 3


def _held_level(counts: Sequence[int]) -> int:
    """The highest level `counts` held for `HOLD_SAMPLES` samples in a row (their maximum when
    there are fewer)."""
    if len(counts) < HOLD_SAMPLES:
        return max(counts)
    return max(min(counts[i : i + HOLD_SAMPLES]) for i in range(len(counts) - HOLD_SAMPLES + 1))


def high_water_held(series: Sequence[tuple[float, int]], half_s: float) -> bool:
    """Whether a count made no new high from `half_s` on: the most it reached at or after that
    time is no more than the highest level it held before (`_held_level`). A pool bounded by
    its service's concurrency ratchets up to the busiest moment so far and stops once it is
    large enough for the load; a leak under the same steady load keeps taking descriptors.
    False when either part has no sample. `series` in time order."""
    before = [n for t, n in series if t < half_s]
    after = [n for t, n in series if t >= half_s]
    return bool(before and after) and max(after) <= _held_level(before)


#: How many blocks `blocks_rise` averages a series into.
BLOCKS = 5


def blocks_rise(points: Sequence[tuple[float, float]]) -> bool:
    """Whether a series rises measurably, judged on the means of `BLOCKS` consecutive blocks of
    its samples (a line through them, t of 3 or more): a pool's count is autocorrelated (it
    stays at a level for minutes), which makes the t statistic of a line through every sample
    far larger than the evidence; block means are close to independent. False with fewer
    samples than blocks."""
    n = len(points)
    if n < BLOCKS:
        return False
    blocks = [points[i * n // BLOCKS : (i + 1) * n // BLOCKS] for i in range(BLOCKS)]
    g = fit_growth([(sum(t for t, _ in b) / len(b), sum(v for _, v in b) / len(b)) for b in blocks])
    return g is not None and g.per_hour > 0 and g.t_stat >= T_MIN


def descriptors_grow(g: Growth | None) -> bool | None:
    """Whether the descriptors grow: the line rises by one or more over the window, measurably;
    None: too few samples to say."""
    if g is None:
        return None
    return g.end - g.start >= 1.0 and g.t_stat >= T_MIN


@dataclass(frozen=True)
class Sample:
    """One service at one moment.

    Attributes:
        t_s: seconds since the sampling started (monotonic); wall: UTC, epoch seconds.
        service: its name (the supervisor's component, `pg0/postgres` for a member's
            postmaster and backends, `supervisor`); kind: the component's kind.
        pid: the service's main process; procs: processes in its tree.
        rss_bytes, pss_bytes: resident and proportional set sizes summed over the tree
            (pss_bytes is rss_bytes where PSS could not be read); fds: open descriptors.
        uss_bytes: unique set size summed over the tree (0 where it could not be read), in
            samples.jsonl for a reader; not judged (a shared-memory page only one process has
            touched counts as that process's own).
        sockets: the TCP and UDP sockets among `fds`; half_closed: those in CLOSE_WAIT (the
            peer closed the connection and this side kept it: how a leaked connection looks);
        peers: established connections this service opened (its local port is none of the
            tree's listening ports), by the peer's port: a pool's size per peer.
        accepted: established connections this service accepted (its local port is one of the
            tree's listening ports), by the service holding the other end (`OUTSIDE` when no
            sampled service does: phones, the harness): a client's pool seen from the server.
        sockets_read: False when the system's socket tables could not be read for this
            sample (its sockets, half_closed, peers and accepted then say nothing).
        shm_pss_bytes: the part of `pss_bytes` in shared-memory segments (`shared_segments`:
            PostgreSQL's shared buffers); shm_bytes: those segments' sizes, each counted once
            for the tree.
        relation_files: the part of `fds` that are a PostgreSQL member's relation files
            (`relation_files`), which its processes' file cache keeps open up to
            `max_files_per_process` each: left out of the descriptors judged (`judged`).
    """

    t_s: float
    wall: float
    service: str
    kind: str
    pid: int
    procs: int
    rss_bytes: int
    pss_bytes: int
    fds: int
    uss_bytes: int = 0
    sockets: int = 0
    half_closed: int = 0
    peers: dict[str, int] = field(default_factory=dict)
    sockets_read: bool = True
    accepted: dict[str, int] = field(default_factory=dict)
    shm_pss_bytes: int = 0
    shm_bytes: int = 0
    relation_files: int = 0

    def judged(self) -> Sample:
        """The sample as its descriptors are judged: less the relation files a PostgreSQL
        member keeps open. Each process's file cache (`max_files_per_process`, LRU) bounds
        them, and a process replaying WAL or a backend reading more relations opens more of
        them as the data grows (a standby's startup process held 416 of its database's 419
        files an hour in): bounded by design, as a Redis node's data is by its cap; a leak of
        processes still shows in their sockets and other descriptors."""
        if not self.relation_files:
            return self
        return dataclasses.replace(self, fds=self.fds - self.relation_files, relation_files=0)

    def judged_bytes(self, shm_base: int) -> int:
        """The memory judged: PSS outside shared-memory segments, plus what the segments'
        sizes grew by since `shm_base` (their size at the fit's first sample). A segment's
        size is fixed when it is made: touching more of it (a backend reading more of the
        shared buffers, as the data grows) allocates nothing, yet raises the PSS until the
        whole segment is touched; a new segment is memory taken, and counts whole."""
        return self.pss_bytes - self.shm_pss_bytes + self.shm_bytes - shm_base


@dataclass(frozen=True)
class ServiceFigures:
    """A service's figures after the warm-up.

    Attributes:
        service, kind: as sampled. restarts: how often its pid changed during the load.
        memory_start_mib, memory_end_mib: the memory judged (`Sample.judged_bytes`: PSS, less
            what shared-memory segments hold) at the first and last sample of the fit, MiB.
        shared_mib: the shared-memory segments' size at the last sample (PostgreSQL's shared
            buffers), MiB; None when it maps none. relation_files_start, relation_files: the
            relation files left out of its descriptors (`Sample.judged`) at the first and the
            last sample of the fit; None when none were.
        rss_end_mib: RSS at the last sample, MiB.
        memory_growth_per_hour: the fitted PSS growth per hour as a ratio (None: not fitted).
        memory_t: that slope's t statistic.
        memory_late_growth_per_hour, memory_late_t: the same over the last half of the fit's
            time only. A leak keeps its slope there; a warm-up that outlasted the warm-up
            window (a cache or an allocator's arenas still filling) loses it.
        memory_ok: below the goal over the whole fit or over its last half (None: not judged,
            also for a datastore filling its cap).
        memory_cap_mib: a datastore's cap (`MEMORY_CAPS_MIB`), None for the others.
        memory_capped_growth_mib: a datastore's PSS growth from its process's first sample
            (warm-up included) to the last, MiB; None for the others.
        memory_excused: why growth over the goal on the whole fit was not missed: "levelled
            off" (the last half is below the goal: met) or "filling its cap" (not judged);
            None when it was not excused.
        fds_start, fds_end: descriptors at the first and last sample of the fit.
        fds_per_hour: fitted descriptor growth per hour; fds_late_per_hour: over the last half
            of the fit only, said. fds_ok: no growth over the whole fit, or growth that
            levelled off (an exactly flat last half that does not look like a leak, or a pool
            that reached its size: see `service_figures`); None: not judged. fds_excused:
            "levelled off" when growth on the whole fit was excused so, else None.
            fds_change: where the descriptors went between the fit's first and last sample
            (`descriptor_change`), when their number changed.
    """

    service: str
    kind: str
    restarts: int
    samples: int
    memory_start_mib: float
    memory_end_mib: float
    rss_end_mib: float
    memory_growth_per_hour: float | None
    memory_t: float | None
    memory_ok: bool | None
    fds_start: int
    fds_end: int
    fds_per_hour: float | None
    fds_ok: bool | None
    fds_late_per_hour: float | None = None
    memory_late_growth_per_hour: float | None = None
    memory_late_t: float | None = None
    memory_cap_mib: float | None = None
    memory_capped_growth_mib: float | None = None
    memory_excused: str | None = None
    fds_change: str | None = None
    fds_excused: str | None = None
    shared_mib: float | None = None
    relation_files: int | None = None
    relation_files_start: int | None = None


def _finite(x: float | None, digits: int = 4) -> float | None:
    """JSON has no infinity: a capped number instead."""
    if x is None:
        return None
    return round(max(-1e9, min(1e9, x)), digits)


def service_figures(
    samples: Iterable[Sample],
    warmup_s: float,
    end_s: float,
    memory_goal: float,
    caps_mib: Mapping[str, float] | None = None,
    peer_names: Mapping[int, str] | None = None,
) -> list[ServiceFigures]:
    """Each service's growth over its samples from `warmup_s` to `end_s` (seconds since the
    sampling started): the line through the samples of its last process (a restart starts the
    series again; the restarts are counted over the whole load, warm-up included). `caps_mib`:
    by kind, what a datastore may hold (`MEMORY_CAPS_MIB`); `peer_names`: who listens on a port
    (`peer_names`), for where the descriptors went."""
    by_service: dict[str, list[Sample]] = {}
    for s in samples:
        if s.t_s <= end_s:
            by_service.setdefault(s.service, []).append(s)
    out = []
    for name, raw in sorted(by_service.items()):
        raw.sort(key=lambda s: s.t_s)
        restarts = sum(1 for a, b in itertools.pairwise(raw) if a.pid != b.pid)
        last_pid = raw[-1].pid
        raw_fit = [s for s in raw if s.t_s >= warmup_s and s.pid == last_pid]
        # Descriptors judged less the relation files a PostgreSQL member keeps open; the
        # count left out is said at both ends.
        relations = [s.relation_files for s in (raw_fit or raw)]
        series, fit = [s.judged() for s in raw], [s.judged() for s in raw_fit]
        # The segments' smallest size over the fit: a transient one (a parallel query's) at
        # the first sample must not lower every later value.
        shm = min((s.shm_bytes for s in fit), default=0)
        mem = fit_growth([(s.t_s, float(s.judged_bytes(shm))) for s in fit])
        half = (fit[0].t_s + fit[-1].t_s) / 2 if fit else 0.0
        late = fit_growth([(s.t_s, float(s.judged_bytes(shm))) for s in fit if s.t_s >= half])
        fds = fit_growth([(s.t_s, float(s.fds)) for s in fit])
        fds_late = fit_growth([(s.t_s, float(s.fds)) for s in fit if s.t_s >= half])
        # Growth over the whole fit is excused only when its last half is surely below the goal
        # (memory) or levelled off (descriptors, below): half the samples over half the time
        # measure a slope far less precisely, and a real leak must not pass on that noise.
        first, last = (fit[0], fit[-1]) if fit else (series[0], series[-1])
        excused = None
        if (grows := memory_grows(mem, memory_goal)) and levels_off(late, memory_goal):
            grows, excused = False, "levelled off"
        cap = (caps_mib or {}).get(series[-1].kind)
        capped = None
        if cap is not None:
            # From its process's first sample, warm-up included: all the data it took on.
            own = next(s for s in series if s.pid == last_pid)
            capped = (last.pss_bytes - own.pss_bytes) / MIB
            if grows and capped <= cap:
                grows, excused = None, "filling its cap"
        fd_grows = descriptors_grow(fds)
        fd_excused = None
        # Excused when the last half is exactly flat and the breakdown was read and does not
        # look like a leak (half-closed sockets, files, new peers: a leak tied to events stops
        # with them), or as a pool that reached its size: its growth was connections opened to
        # peers it already used or accepted from clients already connected and nothing else,
        # the last half made no new high, and its block means do not rise (a surge early on
        # must not set a bar a leak grows into). A pool's level is counted in sockets (of the
        # samples whose socket tables were read): a pipe a process holds for a moment (Redis's
        # to a snapshotting child) must not make a new high. The other descriptors' growth is
        # judged by the levels held at both ends (`held_other_growth`), for the same pipe.
        # Both excuses look at the parts that grew, each and together, not at the totals:
        # phones leaving as fast as a pool leaks would keep a total flat.
        readable = first.sockets_read and last.sockets_read
        read = [s for s in fit if s.sockets_read]
        other = held_other_growth(read) if readable else None
        leak_like = not readable or _looks(first, last, other).startswith(LEAK_LIKE)
        grown = grown_parts(first, last)
        parts_quiet = all(
            high_water_held([(s.t_s, _parts(s).get(k, 0)) for s in read], half) for k in grown
        )
        flat_late = (
            fds_late is not None and fds_late.per_hour == 0 and not leak_like and parts_quiet
        )
        pool = [(s.t_s, sum(_parts(s).get(k, 0) for k in grown)) for s in read]
        pool_levelled = (
            pool_growth(first, last, other)
            and parts_quiet
            and high_water_held(pool, half)
            and not blocks_rise([(t, float(n)) for t, n in pool if t >= half])
            and not any(
                blocks_rise([(s.t_s, float(_parts(s).get(k, 0))) for s in read if s.t_s >= half])
                for k in grown
            )
        )
        change = descriptor_change(first, last, peer_names or {}, other)
        if fd_grows and (flat_late or pool_levelled):
            fd_grows, fd_excused = False, "levelled off"
        out.append(
            ServiceFigures(
                service=name,
                kind=series[-1].kind,
                restarts=restarts,
                samples=len(fit),
                memory_start_mib=round(first.judged_bytes(shm) / MIB, 2),
                memory_end_mib=round(last.judged_bytes(shm) / MIB, 2),
                shared_mib=round(last.shm_bytes / MIB, 2) if last.shm_bytes else None,
                relation_files=relations[-1] or None,
                relation_files_start=relations[0] or None,
                rss_end_mib=round(last.rss_bytes / MIB, 2),
                memory_growth_per_hour=_finite(mem.ratio_per_hour) if mem else None,
                memory_t=_finite(mem.t_stat, 2) if mem else None,
                memory_ok=None if grows is None else not grows,
                memory_late_growth_per_hour=_finite(late.ratio_per_hour) if late else None,
                memory_late_t=_finite(late.t_stat, 2) if late else None,
                fds_start=first.fds,
                fds_end=last.fds,
                fds_per_hour=_finite(fds.per_hour, 2) if fds else None,
                fds_ok=None if fd_grows is None else not fd_grows,
                fds_late_per_hour=_finite(fds_late.per_hour, 2) if fds_late else None,
                memory_cap_mib=cap,
                memory_capped_growth_mib=None if capped is None else round(capped, 2),
                memory_excused=excused,
                fds_excused=fd_excused,
                fds_change=change if last.fds != first.fds or LEAK_LIKE in change else None,
            )
        )
    return out


#: What `descriptor_change` calls growth made only of connections to peers already in use
#: (opened to them, or accepted from clients already connected), and how it begins the growth
#: that has a leak's signs.
POOL_GROWTH = "connection pools to peers already in use"
LEAK_LIKE = "looks like a leak"
#: Who `Sample.accepted` says holds the other end when no sampled service does.
OUTSIDE = "outside"


def _parts(s: Sample) -> dict[str, int]:
    """A sample's connections by part: opened, by the peer's port; accepted, by the client."""
    return {
        **{f"to {p}": n for p, n in s.peers.items()},
        **{f"from {c}": n for c, n in s.accepted.items()},
    }


def grown_parts(first: Sample, last: Sample) -> list[str]:
    """The parts (`_parts`) that hold more connections at `last` than at `first`."""
    a, b = _parts(first), _parts(last)
    return sorted(k for k in b if b[k] > a.get(k, 0))


def held_other_growth(read: Sequence[Sample]) -> int | None:
    """How many more descriptors that are no TCP or UDP sockets a service held at the end of
    `read` (samples whose socket tables were read, in time order) than at its start: the
    fewest over the last `HOLD_SAMPLES` samples against the fewest over the first ones. A
    descriptor held for a moment at either end (a pipe to a child) is no growth, and none at
    the start masks a leak; a leak keeps what it took. None without samples."""
    others = [s.fds - s.sockets for s in read]
    if not others:
        return None
    k = min(HOLD_SAMPLES, len(others) // 2)  # the two ends never share a sample
    if k == 0:
        return others[-1] - others[0]
    return min(others[-k:]) - min(others[:k])


def descriptor_change(
    first: Sample, last: Sample, names: Mapping[int, str], other: int | None = None
) -> str:
    """Where a service's descriptors went from `first` to `last`, and what that looks like.
    Connections it opened, by peer; connections it accepted, by the client service holding
    the other end; the rest of its TCP and UDP sockets (listening, half-closed: CLOSE_WAIT, the
    peer closed and the service kept its end, other states); and the descriptors that are no
    TCP or UDP sockets (files, pipes, Unix sockets, event descriptors): `other` when the
    caller judged them over more samples (`held_other_growth`), else the two samples'
    difference. It is a pool (`POOL_GROWTH`) when it grew by connections opened to peers it
    already used, or accepted from services already connected to it, and by nothing else:
    an established connection a server accepted is held open at the client's end too, so it
    is the client's pool seen from the server (the client's own row judges it; a server that
    keeps what its clients closed shows half-closed sockets). Half-closed sockets added, other
    descriptors added, or connections opened to new peers are what a leak looks like; growth
    elsewhere (connections from outside or from new clients, other states) is not told
    apart."""
    total = last.fds - first.fds
    if not (first.sockets_read and last.sockets_read):
        return f"{total:+d}: sockets not read in the first or the last sample"
    sockets = last.sockets - first.sockets
    grew = _grown(first.peers, last.peers)
    came = _grown(first.accepted, last.accepted)
    opened, accepted = sum(grew.values()), sum(came.values())
    half = last.half_closed - first.half_closed
    others = total - sockets if other is None else other
    by_peer = ", ".join(
        f"{names.get(int(port), 'port ' + port)} {n:+d}" for port, n in grew.items()
    )
    by_client = ", ".join(f"{client} {n:+d}" for client, n in came.items())
    return (
        f"{total:+d}: connections opened {opened:+d}"
        + (f" ({by_peer})" if by_peer else "")
        + (f", accepted {accepted:+d} ({by_client})" if by_client else "")
        + f", other TCP/UDP sockets {sockets - opened - accepted:+d}"
        + (f" (half-closed {half:+d})" if half else "")
        + f", other descriptors {others:+d}"
        + (
            f" held ({total - sockets:+d} at the two samples)"
            if other is not None and other != total - sockets
            else ""
        )
        + f"; {_looks(first, last, other)}"
    )


def _grown(first: Mapping[str, int], last: Mapping[str, int]) -> dict[str, int]:
    """Each key's change from `first` to `last`, where it changed: ports in numeric order,
    then names."""
    return {
        key: last.get(key, 0) - first.get(key, 0)
        for key in sorted(
            set(first) | set(last), key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)
        )
        if last.get(key, 0) != first.get(key, 0)
    }


def _looks(first: Sample, last: Sample, other: int | None = None) -> str:
    """What the change from `first` to `last` looks like (both samples' sockets read; `other`
    as for `descriptor_change`). A pool only when each part that grew is a pool's: a part
    that fell (phones that left) does not make room for another that grew."""
    total = last.fds - first.fds
    sockets = last.sockets - first.sockets
    others = total - sockets if other is None else other
    grew = _grown(first.peers, last.peers)
    came = _grown(first.accepted, last.accepted)
    half = last.half_closed - first.half_closed
    signs = []
    if half > 0:
        signs.append(f"{half} more half-closed (CLOSE_WAIT)")
    if others > 0:
        signs.append("more descriptors that are no TCP/UDP sockets")
    if any(n > 0 and not first.peers.get(port) for port, n in grew.items()):
        signs.append("connections to peers it had none to")
    # A sign is said whatever else fell: phones that left make no room for kept sockets.
    if signs:
        return f"{LEAK_LIKE}: " + "; ".join(signs)
    if sockets + others <= 0:
        return "no more than at the start"
    known = {c: n for c, n in came.items() if c != OUTSIDE and first.accepted.get(c)}
    pooled = sum(n for n in grew.values() if n > 0) + sum(n for n in known.values() if n > 0)
    unknown = [n for c, n in came.items() if c not in known]
    rest = sockets - sum(grew.values()) - sum(came.values())
    if pooled > 0 and rest <= 0 and all(n <= 0 for n in unknown):
        return POOL_GROWTH
    return "not told apart: sockets accepted from outside or from new clients, or in other states"


def pool_growth(first: Sample, last: Sample, other: int | None = None) -> bool:
    """Whether the growth from `first` to `last` was connections opened to peers already in
    use, or accepted from services already connected, and nothing else (`descriptor_change`'s
    `POOL_GROWTH`)."""
    return first.sockets_read and last.sockets_read and _looks(first, last, other) == POOL_GROWTH


def peer_names(base_port: int, members: int = 3, redis_nodes: int = 6) -> dict[int, str]:
    """Who listens on each port of an environment at `base_port` (`env.settings.Ports`) with
    `members` PostgreSQL members and `redis_nodes` Redis nodes, the fault proxy's listeners
    named by what they lead to. A port two listeners would share keeps the first name."""
    from env.settings import SERVICE_SLOTS, Ports

    ports = Ports(base_port)
    named = [
        (ports.etcd_client, "etcd"),
        (ports.haproxy_write, "haproxy-write"),
        (ports.haproxy_read, "haproxy-read"),
        (ports.haproxy_https, "haproxy-https"),
        (ports.pgbouncer, "pgbouncer"),
        (ports.prometheus, "prometheus"),
        (ports.fault_api, "faultproxy-api"),
        (ports.proxy_pg_write, "pg-write via the fault proxy"),
        (ports.proxy_pg_read, "pg-read via the fault proxy"),
        (ports.proxy_llm, "llm via the fault proxy"),
        (ports.proxy_sharepoint, "sharepoint via the fault proxy"),
        (ports.proxy_gdrive, "gdrive via the fault proxy"),
        (ports.llm, "llm"),
        (ports.sharepoint, "sharepoint"),
        (ports.gdrive, "gdrive"),
        (ports.gateway, "gateway"),
    ]
    for i in range(members):
        named += [
            (ports.postgres(i), f"pg{i}"),
            (ports.patroni(i), f"patroni{i}"),
            (ports.proxy_pg_link(i), f"pg{i} via the fault proxy"),
        ]
    for i in range(redis_nodes):
        named += [
            (ports.redis(i), f"redis{i}"),
            (ports.proxy_redis(i), f"redis{i} via the fault proxy"),
        ]
    roles = {
        "api": ports.api,
        "hub": ports.hub,
        "worker": ports.worker,
        "scheduler": ports.scheduler,
    }
    for role, port_of in roles.items():
        named += [(port_of(i), f"{role}{i}") for i in range(1, SERVICE_SLOTS[role] + 1)]
    out: dict[int, str] = {}
    for port, name in named:
        out.setdefault(port, name)
    return out


def phone_ops(ops: Iterable[Operation], end_wall: float = math.inf) -> list[Operation]:
    """The phones' own operations that completed (ok), whose latency is judged: those started
    before `end_wall` (UTC, epoch seconds: the fleet's start plus its run time; after it the
    phones are being stopped, and their last requests race their shutdown)."""
    return [
        o for o in ops if o.kind in PHONE_KINDS and o.outcome == "ok" and o.invoked_wall < end_wall
    ]


def load_end_wall(fleet: Mapping[str, Any] | None, ops: Sequence[Operation], run_s: float) -> float:
    """When the load stopped being steady: the fleet's start (before Locust even started its
    clock) plus its run time; without the fleet's summary (a run cut short), the first
    operation's start plus the run time."""
    window = (fleet or {}).get("window") or {}
    if "start" in window:
        return float(window["start"]) + run_s
    return min((o.invoked_wall for o in ops), default=0.0) + run_s


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 < q <= 100) of sorted values by the nearest-rank method: a value
    that was measured, as HDR histograms report one."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def quantiles(ops: Iterable[Operation], kinds: Sequence[str] = PHONE_KINDS) -> dict[str, Any]:
    """Count and p50 / p95 / p99 (ms) of `ops` per kind and for all of them ("all"): exact,
    from the ledger's own latencies (the run's HDR histograms span the whole run only)."""
    by_kind: dict[str, list[float]] = {}
    for o in ops:
        if o.kind in kinds:
            ms = o.latency_s * 1000
            by_kind.setdefault(o.kind, []).append(ms)
            by_kind.setdefault("all", []).append(ms)
    out = {}
    for kind, values in sorted(by_kind.items()):
        values.sort()
        out[kind] = {
            "count": len(values),
            **{f"p{q}_ms": round(nearest_rank(values, q), 3) for q in (50, 95, 99)},
        }
    return out


def latency_windows(ops: Sequence[Operation], ramp_s: float = 0.0) -> dict[str, Any]:
    """Latency quantiles of `ops` (phone operations) in the first and last windows of the run
    (`window_s` of the span of their start times), and the last as a ratio of the first.

    The first window starts `ramp_s` after the first operation (the phones still arriving are
    no baseline). Returns {"window_s", "first", "last", "ratio"}: `first` and `last` as
    `quantiles`, `ratio` per kind {"p50", "p95", "p99"} (None where the first is 0), and where
    the windows lie (`first_start_s`, `last_end_s`: seconds since the first operation); empty
    windows when there are no operations."""
    if not ops:
        return {
            "window_s": 0.0,
            "first_start_s": 0.0,
            "last_end_s": 0.0,
            "first": {},
            "last": {},
            "ratio": {},
        }
    t0 = min(o.invoked_wall for o in ops)
    t_end = max(o.invoked_wall for o in ops)
    # A window's room is kept after the start: a warm-up of most of the run still leaves
    # the first window after it, and a short run's ramp at most half of it.
    start = t0 + min(ramp_s, max((t_end - t0) / 2, t_end - t0 - WINDOW_CAP_S))
    w = window_s(t_end - start)
    first = quantiles(o for o in ops if start <= o.invoked_wall < start + w)
    last = quantiles(o for o in ops if t_end - w < o.invoked_wall <= t_end)
    ratio = {}
    for kind in first.keys() & last.keys():
        ratio[kind] = {
            q: round(last[kind][f"{q}_ms"] / first[kind][f"{q}_ms"], 3)
            if first[kind][f"{q}_ms"]
            else None
            for q in ("p50", "p95", "p99")
        }
    return {
        "window_s": round(w, 1),
        # Seconds since the first operation, as `latency_series` counts them.
        "first_start_s": round(start - t0, 1),
        "last_end_s": round(t_end - t0, 1),
        "first": first,
        "last": last,
        "ratio": ratio,
    }


def p99_ok(windows: Mapping[str, Any], goal: float) -> bool | None:
    """Whether the last window's p99 of all phone operations is within `goal` (a ratio) of the
    first's; None when either window has fewer than MIN_WINDOW_OPS operations."""
    first, last = windows["first"].get("all"), windows["last"].get("all")
    if not first or not last or min(first["count"], last["count"]) < MIN_WINDOW_OPS:
        return None
    ratio = windows["ratio"]["all"]["p99"]
    return ratio is not None and ratio <= 1 + goal


def latency_series(ops: Sequence[Operation], bin_s: float) -> list[dict[str, float]]:
    """p50 / p95 / p99 (ms) of all phone operations per `bin_s` bin, by start time; `t_s` is
    the bin's middle, in seconds since the first operation. Empty bins are left out."""
    if not ops:
        return []
    t0 = min(o.invoked_wall for o in ops)
    bins: dict[int, list[Operation]] = {}
    for o in ops:
        bins.setdefault(int((o.invoked_wall - t0) // bin_s), []).append(o)
    out = []
    for i, group in sorted(bins.items()):
        q = quantiles(group)["all"]
        out.append({"t_s": round((i + 0.5) * bin_s, 1), **q})
    return out


@dataclass(frozen=True)
class Goal:
    """One goal's line: what it is, the figure measured, and whether it was met (None: could
    not be judged)."""

    name: str
    goal: str
    measured: str
    ok: bool | None


def goals(
    figures: Sequence[ServiceFigures],
    windows: Mapping[str, Any],
    s: SoakSettings,
    roles: RoleChanges | None = None,
) -> list[Goal]:
    """The soak's goals against its figures: memory, descriptors, restarts, p99, and spurious
    failovers (`roles`: None when no role was ever sampled, so not judged)."""
    judged_mem = [f for f in figures if f.memory_ok is not None]
    worst = max(judged_mem, key=lambda f: f.memory_growth_per_hour or 0.0, default=None)
    mem_bad = [f.service for f in judged_mem if not f.memory_ok]
    # Measurably over the goal on the whole window (`memory_grows`), yet met: its last half
    # levelled off (`levels_off`). Said, so a reader of the worst figure knows why it passes;
    # growth too noisy to measure is met for want of evidence, not levelled off.
    settled = [
        f"{f.service} ({_pct(f.memory_late_growth_per_hour)}/h)"
        for f in judged_mem
        if f.memory_excused == "levelled off"
    ]
    # A datastore filling what its configuration lets it hold: not judged, and how much of its
    # cap it took.
    capped = [
        f"{f.service} (+{f.memory_capped_growth_mib:.1f} of {f.memory_cap_mib:.0f} MiB"
        f"{_cap_reached_in(f)})"
        for f in figures
        if f.memory_excused == "filling its cap"
        and f.memory_cap_mib is not None
        and f.memory_capped_growth_mib is not None
    ]
    fd_bad = [
        f"{f.service} ({f.fds_change})" if f.fds_change else f.service
        for f in figures
        if f.fds_ok is False
    ]
    # Grew after the warm-up but levelled off: met, and said with where the descriptors went.
    fd_levelled = [
        f"{f.service} ({f.fds_change})" if f.fds_change else f.service
        for f in figures
        if f.fds_excused == "levelled off"
    ]
    fd_parts = []
    if fd_bad:
        fd_parts.append(f"growing: {'; '.join(fd_bad)}")
    if fd_levelled:
        fd_parts.append(f"levelled off in the last half: {'; '.join(fd_levelled)}")
    fd_measured = "; ".join(fd_parts) or "none"
    restarted = [f.service for f in figures if f.restarts]
    ratio = (windows.get("ratio", {}).get("all") or {}).get("p99")
    covered = role_coverage(roles, s)
    out = [
        Goal(
            "memory growth after warm-up",
            f"< {s.memory_goal:.0%} per hour, every service",
            (
                f"worst {worst.service} {_pct(worst.memory_growth_per_hour)}/h"
                + (f"; over the goal: {', '.join(mem_bad)}" if mem_bad else "")
                + (f"; levelled off in the last half: {', '.join(settled)}" if settled else "")
                + (f"; not judged, still filling their caps: {', '.join(capped)}" if capped else "")
                if worst
                else "not measured"
            ),
            # A datastore not judged leaves the goal open unless another service missed it.
            None if not judged_mem or (capped and not mem_bad) else not mem_bad,
        ),
        Goal(
            "descriptor growth after warm-up",
            "none, every service",
            fd_measured,
            None if all(f.fds_ok is None for f in figures) else not fd_bad,
        ),
        Goal(
            "service restarts during the load",
            "none",
            ", ".join(restarted) or "none",
            None if not figures else not restarted,
        ),
        Goal(
            "p99 of phone operations, last window / first",
            f"<= {1 + s.p99_goal:.2f}",
            f"{ratio:.2f}" if ratio is not None else "not measured",
            p99_ok(windows, s.p99_goal),
        ),
        Goal(
            "spurious failovers (no fault injected)",
            "none",
            (roles.summary() + f"; sampled {covered:.0%} of the run") if roles else "not measured",
            spurious_ok(roles, covered),
        ),
    ]
    return out


def _cap_reached_in(f: ServiceFigures) -> str:
    """When a datastore growing as it did would have grown by its whole cap: a run that long
    judges it whether its data stops growing first or not."""
    per_hour_mib = (f.memory_growth_per_hour or 0.0) * f.memory_start_mib
    if f.memory_cap_mib is None or f.memory_capped_growth_mib is None or per_hour_mib <= 0:
        return ""
    left = f.memory_cap_mib - f.memory_capped_growth_mib
    return f"; the whole cap in {left / per_hour_mib:.1f} h more at this slope"


#: The share of the run's samples both clusters must have answered for "no failover" to count.
ROLE_COVERAGE = 0.9


def role_coverage(roles: RoleChanges | None, s: SoakSettings) -> float:
    """The share of the load's expected samples in which both PostgreSQL and Redis answered:
    a soak cut short, or whose probes failed, has not shown that nothing failed over."""
    if roles is None:
        return 0.0
    expected = max(1.0, s.run_s / s.sample_every_s)
    return min(1.0, min(roles.pg_samples, roles.redis_samples) / expected)


def spurious_ok(roles: RoleChanges | None, covered: float) -> bool | None:
    """A failover seen fails the goal whatever the coverage; none seen meets it only when the
    run was sampled throughout (`ROLE_COVERAGE`), else it is not judged."""
    if roles is None:
        return None
    if roles.total:
        return False
    return True if covered >= ROLE_COVERAGE else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def verdict(goal_list: Sequence[Goal], fleet_verdict: str | None) -> str:
    """ "fail": a goal missed or the fleet failed (lost, duplicated requests, a failed run);
    "inconclusive": a goal could not be judged, or the fleet left requests unknown; else
    "pass"."""
    if any(g.ok is False for g in goal_list) or fleet_verdict == "fail":
        return "fail"
    if any(g.ok is None for g in goal_list) or fleet_verdict != "pass":
        return "inconclusive"
    return "pass"


EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}


# ---- sampling --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """A service process to sample: its name, kind and main pid (its tree is sampled)."""

    name: str
    kind: str
    pid: int


def services_of(
    status: Mapping[str, Any], postmaster: Callable[[Mapping[str, Any]], int | None]
) -> list[Service]:
    """Every service process of the environment from the supervisor's `/status`: the
    supervisor, each component with a running process, and for each Patroni component its
    PostgreSQL postmaster (`postmaster(component)`: Patroni daemonizes it, so it is no child)."""
    out = []
    if status.get("pid"):
        out.append(Service("supervisor", "supervisor", int(status["pid"])))
    for comp in status.get("components", []):
        if not comp.get("pid"):
            continue
        out.append(Service(comp["name"], comp["kind"], int(comp["pid"])))
        if comp["kind"] == "patroni":
            pid = postmaster(comp)
            if pid:
                out.append(Service(f"{comp['name']}/postgres", "postgres", pid))
    return out


#: How a shared-memory segment's mapping is named (`/proc/<pid>/maps`): an anonymous shared
#: mapping (PostgreSQL's main segment, its shared buffers), a System V segment, a POSIX one.
SHM_PATHS = ("/dev/zero", "/SYSV", "/dev/shm/", "/anon_hugepage")


_SHM_PATH = "(?:" + "|".join(re.escape(p) for p in SHM_PATHS) + ")"
#: A `maps`/`smaps` header line of a shared-memory segment's mapping: address range, shared
#: permissions ("rw-s"), offset, device, inode, and a path of `SHM_PATHS`.
SHM_MAPPING = re.compile(rf"^([0-9a-f]+)-([0-9a-f]+) \S{{3}}s (\S+) (\S+) (\d+) +{_SHM_PATH}", re.M)
#: Such a header in `smaps`, and its mapping's Pss line (the attribute lines start with a
#: capital, a header with a hex digit in lower case).
SHM_PSS = re.compile(SHM_MAPPING.pattern + r"[^\n]*\n(?:[A-Z][^\n]*\n)*?Pss: +(\d+) kB", re.M)


def shared_segments(pid: int) -> tuple[int, dict[tuple[str, str, str], int]]:
    """The PSS a process holds in shared-memory segments, bytes, and each mapping's size by
    its segment's (device, inode) and offset, so that a segment every process of a tree maps
    counts once, and one mapped in parts counts every part. (0, {})
    for a process that maps none or cannot be read: `maps` is read first (no page walk), and
    `smaps` only when a segment is there. Matched by regular expression over the whole text:
    split line by line, a sample of PostgreSQL's 50 processes took 1.7 s of the sampler's 2.5."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            if SHM_MAPPING.search(f.read()) is None:
                return 0, {}
        with open(f"/proc/{pid}/smaps") as f:
            text = f.read()
    except OSError:
        return 0, {}
    pss, sizes = 0, {}
    for m in SHM_PSS.finditer(text):
        lo, hi, offset, device, inode, kib = m.groups()
        sizes[(device, inode, offset)] = int(hi, 16) - int(lo, 16)
        pss += int(kib) * 1024
    return pss, sizes


#: A PostgreSQL relation file as a descriptor's target, relative to the data directory: a
#: database's (`base/<oid>/`) or the cluster's (`global/`) relation, in any of its forks
#: (free space map, visibility map, init) and segments (`.1`). Temporary relations (`t3_`),
#: temporary files, WAL, tablespaces and files since deleted do not match: they stay judged.
RELATION_FILE = re.compile(r"(?:base/\d+|global)/\d+(?:_(?:fsm|vm|init))?(?:\.\d+)?")


def relation_files(pid: int) -> tuple[int, int] | None:
    """A PostgreSQL process's descriptors, and how many of them are relation files of its
    own data directory (its working directory: PostgreSQL changes into it, and its children
    inherit it), from one listing so the two agree; None when they cannot be read."""
    base = f"/proc/{pid}/fd"
    try:
        data = os.readlink(f"/proc/{pid}/cwd") + "/"
        names = os.listdir(base)
    except OSError:
        return None
    count = 0
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:  # closed meanwhile
            continue
        count += target.startswith(data) and bool(RELATION_FILE.fullmatch(target[len(data) :]))
    return len(names), count


@dataclass(frozen=True)
class ProcessTable:
    """Every process's children by its parent's pid, and each one's start time in clock ticks
    since boot (`/proc/<pid>/stat`'s field 22: immune to steps of the wall clock, which
    psutil's `create_time` follows), from one pass over /proc (`process_table`)."""

    children: dict[int, list[int]]
    started: dict[int, int]


def process_table() -> ProcessTable:
    """The `ProcessTable` as /proc says now."""
    kids: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        # The command may hold spaces and parentheses: the fields follow its last ')', from
        # the state (field 3): the parent is field 4, the start time field 22.
        fields = stat[stat.rfind(b")") + 2 :].split()
        pid = int(name)
        kids.setdefault(int(fields[1]), []).append(pid)
        started[pid] = int(fields[19])
    return ProcessTable(kids, started)


class Sampler:
    """Samples services' process trees; keeps the psutil objects so a reused pid is told
    apart from the process it was (psutil compares start times, as Patroni does)."""

    def __init__(self) -> None:
        self.procs: dict[int, psutil.Process] = {}

    def _process(self, pid: int) -> psutil.Process:
        p = self.procs.get(pid)
        if p is None or not p.is_running():
            p = self.procs[pid] = psutil.Process(pid)
        return p

    def _tree(self, pid: int, others: set[int], table: ProcessTable) -> list[psutil.Process]:
        """The process and its descendants (`table`: read once per sample), less other
        services' subtrees (the supervisor's children are the components: they are theirs,
        not the supervisor's)."""
        main = self._process(pid)
        tree, todo, seen = [main], [pid], {pid}
        while todo:
            parent = todo.pop()
            for kid in table.children.get(parent, []):
                # A child started before its parent names a parent pid reused while the table
                # was read (one pass, not one instant): it is not this parent's.
                if kid in others or kid in seen or table.started[kid] < table.started[parent]:
                    continue
                try:
                    tree.append(self._process(kid))
                except psutil.Error:  # gone meanwhile
                    continue
                todo.append(kid)
                seen.add(kid)
        return tree

    def sample(self, services: Iterable[Service], t_s: float, wall: float) -> list[Sample]:
        """One sample per service whose main process is alive, summed over its tree (other
        services' subtrees excluded); a process that vanishes meanwhile is left out."""
        services = list(services)
        mains = {svc.pid for svc in services}
        # One system-wide read for all of them (the kernel's socket tables and every process's
        # descriptors): per process, psutil would read the whole tables again each time.
        sockets: dict[int, list[Any]] = {}
        read = True
        try:
            for c in psutil.net_connections(kind="inet"):
                if c.pid:
                    sockets.setdefault(c.pid, []).append(c)
        except (psutil.Error, OSError, RuntimeError):  # a process gone or changed meanwhile
            sockets, read = {}, False  # memory and descriptors still count
        trees: dict[Service, list[psutil.Process]] = {}
        # One read of every process's parent: psutil's children() reads them all per call.
        table = process_table()
        for svc in services:
            try:
                trees[svc] = self._tree(svc.pid, mains - {svc.pid}, table)
            except psutil.Error:
                continue
        # Who holds each end of a connection, for the server side's view of its clients' pools.
        # Keyed by both addresses: Linux gives one local port to connections to different
        # destinations, so a client's address alone may name two sockets.
        owner = {p.pid: svc.name for svc, tree in trees.items() for p in tree}
        ends = {
            (_addr(c.laddr), _addr(c.raddr)): owner.get(c.pid, OUTSIDE)
            for pid, conns in sockets.items()
            for c in conns
            if c.status == psutil.CONN_ESTABLISHED and c.raddr
        }
        out = []
        for svc, tree in trees.items():
            rss = pss = uss = fds = procs = shm_pss = relations = 0
            segments: dict[tuple[str, str, str], int] = {}
            for p in tree:
                try:
                    with p.oneshot():
                        try:
                            full = p.memory_full_info()
                            rss_p, pss_p = full.rss, getattr(full, "pss", full.rss)
                            uss_p = full.uss
                        except psutil.AccessDenied:
                            rss_p = pss_p = p.memory_info().rss
                            uss_p = 0
                        # A member's descriptors and its relation files from one listing: read
                        # apart, a process ending between them would count its files as others.
                        counted = relation_files(p.pid) if svc.kind == "postgres" else None
                        if svc.kind == "postgres" and counted is None:
                            continue
                        n_fds, n_rel = counted or (p.num_fds(), 0)
                except psutil.Error:
                    continue
                fds, relations = fds + n_fds, relations + n_rel
                rss, pss, procs = rss + rss_p, pss + pss_p, procs + 1
                shm_p, sizes = shared_segments(p.pid)
                shm_pss, segments = shm_pss + min(shm_p, pss_p), segments | sizes
                uss = uss + uss_p if uss_p and uss >= 0 else -1  # -1: unknown for the tree
            socks = [c for p in tree for c in sockets.get(p.pid, [])]
            listening = {c.laddr.port for c in socks if c.status == psutil.CONN_LISTEN}
            peers: dict[str, int] = {}
            accepted: dict[str, int] = {}
            for c in socks:
                if c.status != psutil.CONN_ESTABLISHED or not c.raddr:
                    continue
                if c.laddr.port not in listening:
                    peers[str(c.raddr.port)] = peers.get(str(c.raddr.port), 0) + 1
                else:
                    client = ends.get((_addr(c.raddr), _addr(c.laddr)), OUTSIDE)
                    accepted[client] = accepted.get(client, 0) + 1
            half_closed = sum(c.status == psutil.CONN_CLOSE_WAIT for c in socks)
            out.append(
                Sample(
                    t_s,
                    wall,
                    svc.name,
                    svc.kind,
                    svc.pid,
                    procs,
                    rss,
                    pss,
                    fds,
                    max(0, uss),
                    sockets=len(socks),
                    half_closed=half_closed,
                    peers=peers,
                    sockets_read=read,
                    accepted=accepted,
                    shm_pss_bytes=shm_pss,
                    shm_bytes=sum(segments.values()),
                    relation_files=relations,
                )
            )
        return out


def _addr(a: Any) -> tuple[str, int]:
    """A socket address as one form for IPv4 and IPv4-mapped IPv6 (a dual-stack listener's
    peers are `::ffff:127.0.0.1`)."""
    return a.ip.removeprefix("::ffff:"), a.port


def live_view(
    samples: Sequence[Sample],
    t_s: float,
    s: SoakSettings,
    first: Mapping[str, Sample],
    roles: RoleChanges | None = None,
) -> Group:
    """The live view: time, per kind of service the memory and descriptors as they are judged
    (`Sample.judged_bytes`, `Sample.judged`) against `first`, each service's first sample of
    the phase (the warm-up, then the judged part), and the failovers seen so far."""
    by_kind: dict[str, list[Sample]] = {}
    for x in samples:
        by_kind.setdefault(x.kind, []).append(x)
    phase = "warm-up" if t_s < s.warmup_s else "load" if t_s <= s.run_s else "read-back"
    since = "since warm-up" if phase == "warm-up" else "since judged"
    table = Table(title=f"bench-soak: {len(samples)} service processes, sampled")
    for col in ("kind", "n", "memory MiB", since, "fds", since):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, xs in sorted(by_kind.items()):
        base = [(x, first[x.service]) for x in xs if x.service in first]
        # Segments against the smaller size of the two samples, as the figures take the
        # smallest over the fit: a passing segment at the baseline is no lasting drop.
        mem = sum(x.judged_bytes(min(x.shm_bytes, x0.shm_bytes)) for x, x0 in base)
        mem0 = sum(x0.judged_bytes(min(x.shm_bytes, x0.shm_bytes)) for x, x0 in base)
        fds = sum(x.judged().fds for x, _ in base)
        fds0 = sum(x0.judged().fds for _, x0 in base)
        table.add_row(
            kind,
            str(len(xs)),
            f"{mem / MIB:.1f}",
            f"{(mem - mem0) / mem0:+.1%}" if mem0 else "-",
            str(fds),
            f"{fds - fds0:+d}",
        )
    bar = ProgressBar(total=s.run_s, completed=min(t_s, s.run_s), width=50)
    head = Table.grid(padding=(0, 1))
    head.add_row(bar, f"{t_s:.0f} / {s.run_s:.0f} s ({phase})")
    if roles is not None:
        head.add_row("", f"failovers so far: {roles.total} ({roles.summary()})")
    return Group(head, table)


class SamplingThread(threading.Thread):
    """Samples every service, and who leads (`roles`), every `settings.sample_every_s` into
    `samples.jsonl`, `roles.jsonl` and the live view, until stopped or `limit_s` passed
    (bounded, whatever happens to the fleet). A failed sample is logged and the loop goes on."""

    def __init__(
        self,
        settings: SoakSettings,
        discover: Callable[[], list[Service]],
        out: Path,
        live: Live,
        limit_s: float,
        roles: RoleProbe | None = None,
    ) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.settings, self.discover, self.live, self.limit_s = settings, discover, live, limit_s
        self.roles = roles
        self.path = out / "samples.jsonl"
        self.roles_path = out / "roles.jsonl"
        self.samples: list[Sample] = []
        self.role_samples: list[RoleSample] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        sampler = Sampler()
        first: dict[str, Sample] = {}
        judged = False
        every = self.settings.sample_every_s
        with open(self.path, "a") as f, open(self.roles_path, "a") as rf:
            while not self.stop_event.is_set():
                tick = time.monotonic()
                t_s = tick - self.t0
                if t_s > self.limit_s:
                    break
                try:
                    if self.roles is not None:
                        role = self.roles.sample_now(round(t_s, 2))
                        self.role_samples.append(role)
                        rf.write(json.dumps(asdict(role)) + "\n")
                        rf.flush()
                    now = sampler.sample(self.discover(), round(t_s, 2), time.time())
                    self.samples.extend(now)
                    f.writelines(json.dumps(asdict(x)) + "\n" for x in now)
                    f.flush()
                    if t_s >= self.settings.warmup_s and not judged:
                        # The live view's baselines move to the judged part's start, as the
                        # figures' do: the warm-up's filling is not what it shows from then.
                        first.clear()
                        judged = True
                    for x in now:
                        first.setdefault(x.service, x)
                    changes = role_changes(self.role_samples) if self.roles else None
                    self.live.update(live_view(now, t_s, self.settings, first, changes))
                except Exception as exc:  # one bad sample must not end the soak's record
                    if len(self.errors) < 20:
                        self.errors.append(f"{t_s:.0f} s: {type(exc).__name__}: {exc}")
                spent = time.monotonic() - tick
                if spent > every:
                    self.live.console.log(f"sampling took {spent:.1f} s, above {every:g} s")
                self.stop_event.wait(max(0.0, every - spent))


# ---- report ----------------------------------------------------------------------------------


def plot_services(
    samples: Sequence[Sample], field: str, ylabel: str, path: Path, s: SoakSettings
) -> None:
    """One panel per kind of service, a line per service: `field` over time (`judged`: the
    memory judged, `Sample.judged_bytes` from the segments' smallest size), the warm-up and
    the read-back after the load shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_kind: dict[str, dict[str, list[Sample]]] = {}
    for x in samples:
        by_kind.setdefault(x.kind, {}).setdefault(x.service, []).append(x)
    kinds = sorted(by_kind)
    cols = 4
    rows = max(1, math.ceil(len(kinds) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(16, 2.6 * rows), squeeze=False)
    scale = MIB if field.endswith("_bytes") or field == "judged" else 1
    for ax, kind in zip(axes.flat, kinds, strict=False):
        for name, xs in sorted(by_kind[kind].items()):
            base = min(x.shm_bytes for x in xs)
            ys = [
                x.judged_bytes(base) if field == "judged" else getattr(x.judged(), field)
                for x in xs
            ]
            ax.plot([x.t_s for x in xs], [y / scale for y in ys], label=name)
        ax.axvspan(0, s.warmup_s, color="grey", alpha=0.15)
        last = max(x.t_s for xs in by_kind[kind].values() for x in xs)
        if last > s.run_s:
            ax.axvspan(s.run_s, last, color="tab:orange", alpha=0.1)
        ax.set_title(kind, fontsize=9)
        ax.tick_params(labelsize=7)
        if len(by_kind[kind]) > 1:
            ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(kinds) :]:
        ax.axis("off")
    fig.supxlabel("seconds since the fleet started (grey: warm-up; orange: read-back)")
    fig.supylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_latency(
    series: Sequence[Mapping[str, float]], windows: Mapping[str, Any], path: Path
) -> None:
    """p50 / p95 / p99 of the phone operations over time, the two compared windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    t = [p["t_s"] for p in series]
    for q in ("p50", "p95", "p99"):
        ax.plot(t, [p[f"{q}_ms"] for p in series], label=q)
    w, first, last = windows["window_s"], windows["first_start_s"], windows["last_end_s"]
    if w:
        ax.axvspan(first, first + w, color="tab:green", alpha=0.12, label="first window")
        ax.axvspan(last - w, last, color="tab:red", alpha=0.12, label="last window")
    ax.set_xlabel("seconds since the first operation")
    ax.set_ylabel("latency, ms (submit, read, sync)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ok(ok: bool | None) -> str:
    return "not judged" if ok is None else "met" if ok else "MISSED"


def _ms(q: Mapping[str, Any] | None, key: str) -> str:
    return "-" if not q else f"{q[key]:.1f}"


def latency_rows(windows: Mapping[str, Any]) -> list[list[str]]:
    """Per kind (and all): count, p50, p95, p99 in the first window and the last, and the
    ratios last / first."""
    rows = []
    for kind in (*PHONE_KINDS, "all"):
        a, b = windows["first"].get(kind), windows["last"].get(kind)
        r = windows["ratio"].get(kind) or {}
        rows.append(
            [
                kind,
                str(a["count"]) if a else "0",
                *(_ms(a, f"{q}_ms") for q in ("p50", "p95", "p99")),
                str(b["count"]) if b else "0",
                *(_ms(b, f"{q}_ms") for q in ("p50", "p95", "p99")),
                *("-" if r.get(q) is None else f"{r[q]:.2f}" for q in ("p50", "p95", "p99")),
            ]
        )
    return rows


LATENCY_COLUMNS = (
    "kind", "first n", "p50 ms", "p95", "p99", "last n", "p50 ms", "p95", "p99",
    "p50 ratio", "p95", "p99",
)  # fmt: skip
SERVICE_COLUMNS = (
    "service", "kind", "PSS MiB", "at end", "RSS MiB at end", "growth / h", "t",
    "last half / h", "fds",
    "at end", "fds / h", "fds last half / h", "restarts", "goals",
)  # fmt: skip


def _goals_cell(f: ServiceFigures) -> str:
    """A service's row's verdict: missed, not judged, or met, with what was excused."""
    notes = [f"{f.shared_mib:g} MiB in shared segments"] if f.shared_mib else []
    if f.relation_files or f.relation_files_start:
        notes.append(
            f"{f.relation_files_start or 0}->{f.relation_files or 0} relation files not counted"
        )
    return _goals_verdict(f) + (f" ({'; '.join(notes)})" if notes else "")


def _goals_verdict(f: ServiceFigures) -> str:
    oks = (f.memory_ok, f.fds_ok, not f.restarts)
    if False in oks:
        return "MISSED"
    if f.memory_excused == "filling its cap":
        return f"not judged ({f.memory_excused})"
    if None in oks:
        return "not judged"
    excused = [
        f"{what} {why}"
        for what, why in (("memory", f.memory_excused), ("descriptors", f.fds_excused))
        if why
    ]
    return f"met ({', '.join(excused)})" if excused else "met"


def service_row(f: ServiceFigures) -> list[str]:
    return [
        f.service,
        f.kind,
        f"{f.memory_start_mib:.1f}",
        f"{f.memory_end_mib:.1f}",
        f"{f.rss_end_mib:.1f}",
        _pct(f.memory_growth_per_hour),
        "-" if f.memory_t is None else f"{f.memory_t:.1f}",
        _pct(f.memory_late_growth_per_hour),
        str(f.fds_start),
        str(f.fds_end),
        "-" if f.fds_per_hour is None else f"{f.fds_per_hour:+.1f}",
        "-" if f.fds_late_per_hour is None else f"{f.fds_late_per_hour:+.1f}",
        str(f.restarts),
        _goals_cell(f),
    ]


def render_markdown(summary: Mapping[str, Any]) -> str:
    """`summary.md`: the goals beside the figures, each service's memory and descriptors, the
    latency windows, the fleet's reconciliation, the plots."""
    s = summary["settings"]
    lines = [
        f"# Soak: {summary['verdict'].upper()}"
        + (" (interrupted)" if summary["interrupted"] else ""),
        "",
        f"{s['users']} phones in the `soak` shape for {s.get('lead_s', 0) + s['duration_s']:g} s "
        "against the local "
        f"environment (base port {summary['base_port']}, autoscaler off: the replicas stay put), "
        f"every service process sampled every {summary['sample_every_s']:g} s "
        f"({summary['samples']} samples of {summary['services']} services). Warm-up: the first "
        f"{summary['warmup_s']:g} s; latency windows: {summary['latency']['window_s']:g} s.",
    ]
    if w := summary.get("warmup"):
        lines += [
            "",
            f"The warm-up (WARMUP=auto) ran until the stores that fill by design were full: "
            f"Redis's responses ({w['redis_s']:g} s of them) and etcd's raft log (index "
            f"{w['etcd_full_index']} from {w['etcd_index']}, at "
            f"{w['etcd_writes_per_s'] or w.get('assumed_writes_per_s')} writes/s"
            f"{'' if w['etcd_writes_per_s'] else ' (assumed, not measured)'}: "
            f"{w['etcd_s']:g} s), and "
            f"{WARMUP_MARGIN_S:g} s more; the first latency window starts after it.",
        ]
    lines += [
        "",
        "| goal | target | measured | |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {g['name']} | {g['goal']} | {g['measured']} | {_ok(g['ok'])} |"
        for g in summary["goals"]
    ]
    lines += [
        "",
        "Latency of the phones' operations that succeeded, first window then last, and the "
        "ratios last / first:",
        "",
        "| " + " | ".join(LATENCY_COLUMNS) + " |",
        "|" + "---|" * len(LATENCY_COLUMNS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in latency_rows(summary["latency"])]
    lines += [
        "",
        "Memory is PSS summed over each service's processes (RSS counts shared pages once per "
        "process: a PostgreSQL member's shared buffers once per backend). Growth per hour is the "
        f"slope of the least-squares line through the samples after the warm-up, over the level "
        f"at its start; t is the slope over its standard error (below {T_MIN:g}: not growth). "
        "Last half / h is the same line through the last half of those samples only: growth "
        "is excused when that line is below the goal by more than three standard errors "
        "(memory that rose early and levels off: a cache, an allocator's arenas); descriptors "
        "that grew are excused when that line is exactly flat and the growth has no sign of "
        "a leak (half-closed sockets, files, new peers), or when the growth was connections "
        "to peers already in use (opened to them, or accepted from services already "
        "connected: a server's view of its clients' pools) whose sockets made no new high in "
        "the last half (over the highest level held for three samples before it) and whose "
        "block means do not rise: a pool that reached its size. "
        "PSS MiB and fds: at the warm-up's end, and at the load's end. A service that maps "
        "shared-memory segments (a PostgreSQL member's shared buffers) is judged on its PSS "
        "outside them, plus any growth of their size: a fixed segment's pages touched by more "
        "backends take no more memory; its goals cell gives the segments' size. Its "
        "descriptors are counted without its relation files, which each process's file cache "
        "bounds (`max_files_per_process`), and the cell says how many were left out.",
        "",
        "| " + " | ".join(SERVICE_COLUMNS) + " |",
        "|" + "---|" * len(SERVICE_COLUMNS),
    ]
    lines += [
        "| " + " | ".join(service_row(ServiceFigures(**f))) + " |" for f in summary["figures"]
    ]
    changed = [f for f in summary["figures"] if f.get("fds_change")]
    if changed:
        lines += [
            "",
            "Where the descriptors went, from the warm-up's end to the load's end: connections "
            "a service opened, by whom they lead to; its other TCP and UDP sockets (accepted, "
            "listening, half-closed: the peer closed and it kept its end); its other "
            "descriptors (files, pipes, Unix sockets). Said, not judged: the goal above counts "
            "them all.",
            "",
        ]
        lines += [f"- {f['service']}: {f['fds_change']}" for f in changed]
    fleet = summary.get("fleet") or {}
    if fleet:
        rec = fleet.get("reconciliation", {})
        lines += [
            "",
            f"Fleet: verdict {fleet.get('verdict')}, {rec.get('acknowledged')} acknowledged, "
            f"{rec.get('lost')} lost, {rec.get('duplicated')} duplicated, {rec.get('unknown')} "
            "unknown (its own report: `load/summary.md`).",
        ]
    roles = summary.get("roles")
    if roles:
        lines += [
            "",
            f"Failovers with no fault injected: {roles['total']} (who led was sampled "
            f"{roles['samples']} times: PostgreSQL answered {roles['pg_samples']}, Redis "
            f"{roles['redis_samples']}; every sample in `roles.jsonl`).",
        ]
        lines += [f"- {e}" for e in roles["events"][:50]]
    noise = summary.get("noise") or {}
    if noise.get("processes"):
        lines += [
            "",
            f"Noisy neighbour: {noise['processes']:g} busy processes beside the fleet, "
            f"{noise.get('cpu_s', 0):g} CPU seconds used.",
        ]
    for p in summary["problems"]:
        lines += ["", f"**problem**: {p}"]
    lines += [
        "",
        "![memory](memory.png)",
        "",
        "![descriptors](fds.png)",
        "",
        "![latency](latency.png)",
    ]
    return "\n".join(lines) + "\n"


def _rich_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


# ---- measuring -------------------------------------------------------------------------------


def load_ops(load_dir: Path) -> list[Operation]:
    """The fleet's ledger: the merged one, else (a run cut short before merging) each phone
    process's own."""
    from slo.ledger import merge, read_jsonl

    merged = load_dir / "ledger.jsonl"
    if merged.exists():
        return read_jsonl(merged)
    return merge(read_jsonl(p) for p in sorted((load_dir / "fleet").glob("ledger-*.jsonl")))


@dataclass
class SoakRecord:
    """What a soak recorded: the services' samples, who led, the fleet's summary (None: cut
    short), the sampler's problems, and the noisy neighbours' processes and CPU seconds."""

    samples: list[Sample]
    roles: list[RoleSample]
    fleet: dict[str, Any] | None
    errors: list[str]
    noise: dict[str, float]


def run_soak(s: SoakSettings, env: Any, out: Path, console: Console) -> SoakRecord:
    """The fleet against `env` (a LocalEnvironment that is up) with the sampler (and
    `s.noise` busy neighbours) beside it. Ctrl-C during the fleet is the fleet's to handle (it
    reconciles what ran); a second one ends the read-back: the samples stand."""
    from cwh.fleet import FleetOptions, run_fleet
    from env.layout import Layout
    from env.status import postgres_pid

    state = env.state()
    opts = FleetOptions(
        target=state.urls["https"].rstrip("/"),
        users=s.users,
        duration_s=s.run_s,
        spawn_rate=s.spawn_rate,
        shape="soak",
        ca_file=state.tls_certificate or "",
        registration_secret=state.registration_secret or "",
        settle_s=s.settle_s,
    )
    layout = Layout(env.settings.run_dir)

    def postmaster(comp: Mapping[str, Any]) -> int | None:
        try:
            member = int(str(comp["name"]).removeprefix("pg"))
        except ValueError:
            return None
        return postgres_pid(env.settings, layout.pg_data(member), comp)

    def discover() -> list[Service]:
        return services_of(env.supervisor_status() or {}, postmaster)

    probe = RoleProbe.of(env.settings, state.urls, state.tls_certificate or "")

    load = out / "load"
    load.mkdir(parents=True, exist_ok=True)
    fleet: dict[str, Any] | None = None
    # Bounded: the fleet's own limit is its run time + 180 s, then the read-back.
    limit = s.run_s + s.settle_s + 300
    noise = {"processes": float(s.noise), "cpu_s": 0.0}
    with Live(console=console, refresh_per_second=1, transient=False) as live:
        sampler = SamplingThread(s, discover, out, live, limit, probe)
        sampler.start()
        try:
            with noisy_neighbours(s.noise) as spinners:
                try:
                    _, _, fleet = run_fleet(opts, console, out=load, log=load / "locust.log")
                finally:
                    noise["cpu_s"] = round(cpu_seconds(spinners), 1)
        except KeyboardInterrupt:
            console.print(
                "[yellow]interrupted during the read-back: what was sampled stands[/yellow]"
            )
        finally:
            sampler.stop_event.set()
            sampler.join(timeout=60)
    return SoakRecord(sampler.samples, sampler.role_samples, fleet, sampler.errors, noise)


def analyse(
    s: SoakSettings,
    samples: list[Sample],
    ops: list[Operation],
    end_wall: float = math.inf,
    roles: RoleChanges | None = None,
    names: Mapping[int, str] | None = None,
) -> tuple[list[ServiceFigures], dict[str, Any], list[dict[str, float]], list[Goal]]:
    """The figures, latency windows and series, and the goals, from what was recorded;
    `end_wall`: the load's end (`load_end_wall`); `roles`: the failovers seen; `names`: who
    listens on each port (`peer_names`)."""
    # The load's end in the samples' time: the fleet's run time, or the last sample if cut short.
    end_s = min(s.run_s, max((x.t_s for x in samples), default=0.0))
    # After a warm-up run before the judged part, from its end (a run cut short in it leaves
    # nothing to judge); else from the first fifth, at most 5 minutes.
    fit_start = s.lead_s if s.lead_s else min(s.warmup_s, end_s / 5)
    figures = service_figures(samples, fit_start, end_s, s.memory_goal, MEMORY_CAPS_MIB, names)
    phone = phone_ops(ops, end_wall)
    windows = latency_windows(phone, s.latency_start_s)
    span = max((o.invoked_wall for o in phone), default=0.0) - min(
        (o.invoked_wall for o in phone), default=0.0
    )
    series = latency_series(phone, max(5.0, span / 60))
    return figures, windows, series, goals(figures, windows, s, roles)


def main(argv: list[str] | None = None) -> int:
    from cwh import signals
    from cwh.report import try_write_html
    from env.local import EnvironmentStartError, LocalEnvironment
    from env.process import DeadlineExceeded
    from env.settings import EnvSettings, SettingsError
    from experiments.pg_failover import wait_healthy

    s = parse_args(argv)
    console = Console()
    if s.reanalyse:
        return reanalyse(s, Path(s.reanalyse), console)
    try:
        # No autoscaler: a soak compares a service with itself over time; replicas that come
        # and go would be other services.
        base = int(os.environ.get("CWH_BENCH_BASE_PORT", str(BENCH_BASE_PORT)))
        env_settings = dataclasses.replace(
            EnvSettings.from_environ(),
            base_port=base,
            run_dir=Path(f"/var/tmp/cwh-bench-{base}"),
            autoscale=False,
            standby_of=0,  # a primary region of its own, whatever CWH_STANDBY_OF says
        )
    except (SettingsError, ValueError) as exc:  # a bad CWH_* value, a bad port
        console.print(f"[red]error:[/red] {exc}")
        return 2
    signals.install()  # SIGTERM as Ctrl-C: the fleet stops, the samples are written
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(s.out_dir or ROOT / "reports" / f"{stamp}-bench-soak").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp_versions(out)  # the versions that run, before anything changes
    env = LocalEnvironment(env_settings)
    record = SoakRecord([], [], None, [], {"processes": float(s.noise), "cpu_s": 0.0})
    warm: Warmup | None = None
    problems: list[str] = []
    interrupted = False
    try:
        with console.status(f"bringing the bench's environment up ({env_settings.run_dir})…"):
            # An earlier run's state (an interrupted experiment's, a bigger database) is no
            # baseline for a soak: its own environment, started afresh.
            env.reset()
            env.up()
            wait_healthy(env, timeout_s=180)
        if s.auto_warmup:
            warm = measure_warmup(env_settings.ports.etcd_client, console)
            s = dataclasses.replace(s, lead_s=warm.lead_s)
            problems += warm.problems
            console.print(
                f"warm-up: {warm.lead_s:g} s before the judged {s.duration_s:g} s (Redis's "
                f"responses {warm.redis_s:g} s; etcd's raft log to index {warm.etcd_full_index} "
                f"from {warm.etcd_index} at {warm.etcd_writes_per_s} writes/s: {warm.etcd_s:g} s)"
            )
        record = run_soak(s, env, out, console)
        problems += [f"sampling: {e}" for e in record.errors]
        interrupted = bool(record.fleet is None or record.fleet.get("interrupted"))
    except (EnvironmentStartError, DeadlineExceeded) as exc:
        problems.append(f"the environment did not come up: {exc}")
    except Exception as exc:  # reported with what was sampled before it
        problems.append(f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted[/yellow]")
    finally:
        try:
            with console.status("bringing the bench's environment down…"):
                env.down()
        except KeyboardInterrupt:  # a second Ctrl-C: the report below is still written
            interrupted = True
            console.print("[yellow]interrupted while stopping: `make down` finishes it[/yellow]")
    return report(
        s,
        env_settings.base_port,
        out,
        record.samples,
        record.fleet,
        problems,
        interrupted,
        console,
        try_write_html,
        roles=record.roles,
        noise=record.noise,
        names=peer_names(env_settings.base_port, env_settings.pg_members, env_settings.redis_nodes),
        warmup=warm,
    )


def reanalyse(s: SoakSettings, folder: Path, console: Console) -> int:
    """Judge a run folder again from what it recorded (its samples, the roles sampled, the
    fleet's ledger and summary; the noise, the warm-up chosen and the problems from its
    summary.json), with the settings it ran with (its summary.json's; `s`'s when it has none):
    after a change to the analysis, a long run need not be run again. A warm-up given in `s`
    cuts the same run again: that warm-up, and the rest of the run judged. Rewrites the
    folder's summaries and plots; the exit code as `report`'s."""
    from cwh.report import try_write_html

    def jsonl(name: str) -> list[dict[str, Any]]:
        path = folder / name
        lines = path.read_text().splitlines() if path.is_file() else []
        return [json.loads(line) for line in lines if line.strip()]

    samples = [Sample(**d) for d in jsonl("samples.jsonl")]
    roles = [
        RoleSample(
            **{
                **d,
                "redis_masters": tuple(d.get("redis_masters") or ()),
                "errors": tuple(d.get("errors") or ()),
            }
        )
        for d in jsonl("roles.jsonl")
    ]
    old_path, fleet_path = folder / "summary.json", folder / "load" / "summary.json"
    old = json.loads(old_path.read_text()) if old_path.is_file() else {}
    fleet = json.loads(fleet_path.read_text()) if fleet_path.is_file() else None
    warm = Warmup(**old["warmup"]) if old.get("warmup") else None
    known = {f.name for f in dataclasses.fields(SoakSettings)}
    ran = {k: v for k, v in old.get("settings", {}).items() if k in known}
    if ran:
        before = SoakSettings(**ran)
        s = dataclasses.replace(
            before,
            lead_s=s.lead_s or before.lead_s,
            duration_s=before.run_s - s.lead_s if s.lead_s else before.duration_s,
            reanalyse=s.reanalyse,
        )
        if s.duration_s < 60:
            console.print(f"[red]error:[/red] WARMUP leaves {s.duration_s:g} s of the run")
            return 2
    elif warm and not s.lead_s:
        s = dataclasses.replace(s, lead_s=warm.lead_s)
    return report(
        s,
        int(old.get("base_port", BENCH_BASE_PORT)),
        folder,
        samples,
        fleet,
        [p for p in old.get("problems", []) if not p.startswith("the fleet failed")],
        bool(old.get("interrupted")),
        console,
        try_write_html,
        roles=roles,
        noise=old.get("noise"),
        warmup=warm,
    )


def report(
    s: SoakSettings,
    base_port: int,
    out: Path,
    samples: list[Sample],
    fleet: Mapping[str, Any] | None,
    problems: list[str],
    interrupted: bool,
    console: Console,
    write_html: Callable[[Path, str, Console], Path | None],
    roles: Sequence[RoleSample] = (),
    noise: Mapping[str, float] | None = None,
    names: Mapping[int, str] | None = None,
    warmup: Warmup | None = None,
) -> int:
    """Analyse, write the run folder, print the figures; the exit code. `names`: who listens
    on each port (`peer_names`; the default topology's at `base_port` when not given);
    `warmup`: how WARMUP=auto chose the warm-up."""
    ops = load_ops(out / "load") if (out / "load").exists() else []
    end_wall = load_end_wall(fleet, ops, s.run_s)
    changes = role_changes(roles) if roles else None
    figures, windows, series, goal_list = analyse(
        s, samples, ops, end_wall, changes, names or peer_names(base_port)
    )
    fleet_verdict = fleet.get("verdict") if fleet else None
    if fleet_verdict == "fail":
        problems.append(
            "the fleet failed: see load/summary.md (lost or duplicated requests, or Locust)"
        )
    result = verdict(goal_list, fleet_verdict)
    summary = {
        # What report.html reads: a benchmark with goals says whether it met them.
        "verdict": "inconclusive" if interrupted and result == "pass" else result,
        "interrupted": interrupted,
        "settings": asdict(s),
        "base_port": base_port,
        "warmup_s": s.warmup_s,
        "warmup": asdict(warmup) if warmup else None,
        "sample_every_s": s.sample_every_s,
        "samples": len({x.t_s for x in samples}),
        "services": len({x.service for x in samples}),
        "goals": [asdict(g) for g in goal_list],
        "figures": [asdict(f) for f in figures],
        "latency": windows,
        "latency_series": series,
        "roles": {**asdict(changes), "total": changes.total} if changes else None,
        "noise": dict(noise or {}),
        "fleet": {k: fleet[k] for k in ("verdict", "operations", "reconciliation") if k in fleet}
        if fleet
        else None,
        "problems": problems,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(render_markdown(summary))
    if samples:
        plot_services(
            samples,
            "judged",
            "PSS, MiB (summed over the service's processes; less shared-memory segments)",
            out / "memory.png",
            s,
        )
        plot_services(
            samples,
            "fds",
            "open file descriptors (less PostgreSQL's relation files)",
            out / "fds.png",
            s,
        )
    if series:
        plot_latency(series, windows, out / "latency.png")
    # The terminal's table: the Markdown's, less kind and RSS (summary.md has them).
    keep = [i for i, c in enumerate(SERVICE_COLUMNS) if c not in ("kind", "RSS MiB at end")]
    console.print(
        _rich_table(
            "services after the warm-up",
            [SERVICE_COLUMNS[i] for i in keep],
            ([service_row(f)[i] for i in keep] for f in figures),
        )
    )
    console.print(
        _rich_table(
            f"latency, first and last {windows['window_s']:g} s",
            LATENCY_COLUMNS,
            latency_rows(windows),
        )
    )
    console.print(
        _rich_table(
            f"bench-soak: {summary['verdict']}",
            ("goal", "target", "measured", ""),
            ([g.name, g.goal, g.measured, _ok(g.ok)] for g in goal_list),
        )
    )
    for p in problems:
        console.print(f"[red]problem:[/red] {p}")
    write_html(out, "", console)
    console.print(f"bench-soak: {out}")
    if interrupted:
        return 130
    return EXIT_CODES[result]


if __name__ == "__main__":
    sys.exit(main())
