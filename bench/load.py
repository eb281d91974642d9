"""`make bench-load`: what the load generator itself can do, against a trivial aiohttp sink on
loopback (bench/sink.py), so the system under test is out of the picture.

1. Throughput: requests per CPU-second (per core) of our phone user (ledger, outbox, socket,
   HDR histograms) side by side with a plain Locust FastHttpUser making the same HTTP requests,
   alternated over rounds in the same run. The ratio is the figure: absolute rates on a shared
   2-core machine are noise.
2. Connected phones: phones spawned up to PHONES over WORKERS generator processes (Locust's
   --processes), each holding its socket open and sending heartbeats at the sink's period, idle
   otherwise; each phone's connections leave from one of several loopback source addresses (so
   no (source, sink) pair runs out of ephemeral ports) and every process raises its descriptor
   limit (scenarios/sockets.py). The sink counts the phones whose heartbeat is flowing. Reports
   the most held at once, the generator's memory per phone and CPU per 1,000 heartbeats/s over
   the hold, and what stopped the count from going higher.

Each figure is printed beside its goal (issue #17 goal 4: 20,000 phones, ratio 0.7); exit 1 when
one is missed. Writes reports/<UTC timestamp>-bench-load/ (bench.json, bench.md, connected.png).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bench.load_figures import (
    PHONES_GOAL,
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
from cwh.report import try_write_html
from env.process import pid_alive, terminate_then_kill, wait_until
from scenarios.sockets import SPARE_FDS, fds_needed, loopback_sources, raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent
console = Console()
HTTP_NAMES = ("submit", "read", "sync")


class Sinks:
    """`n` sink processes sharing one port (admin ports: the next `n`), each raising its
    descriptor limit for its share of `phones`; a context manager that always stops them."""

    def __init__(self, port: int, n: int, heartbeat_s: float, phones: int) -> None:
        self.port, self.n, self.heartbeat_s = port, n, heartbeat_s
        self.admin_ports = [port + 1 + i for i in range(n)]
        self.fds = fds_needed(phones, n, per_phone=1)  # idle HTTP connections close in 10 s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.usage: list[psutil.Process] = []

    def __enter__(self) -> Sinks:
        try:
            for admin in self.admin_ports:
                cmd = [sys.executable, "-m", "bench.sink", "--port", str(self.port)]
                cmd += ["--admin-port", str(admin), "--heartbeat", f"{self.heartbeat_s:g}"]
                cmd += ["--fds", str(self.fds)]
                self.procs.append(subprocess.Popen(cmd, cwd=ROOT))
                self.usage.append(psutil.Process(self.procs[-1].pid))
                self.usage[-1].cpu_percent(None)  # starts the measurement
            wait_until(lambda: self.stats() is not None, timeout_s=20, what="the sink to listen")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for p in self.procs:
            terminate_then_kill([p.pid], grace_s=5)
            p.wait(timeout=10)

    def stats(self) -> dict[str, Any] | None:
        """The sinks' counters, summed (`by_source`: open sockets per source address)."""
        total: dict[str, Any] = {"by_source": {}}
        try:
            for admin in self.admin_ports:
                got = requests.get(f"http://127.0.0.1:{admin}/stats", timeout=2).json()
                for src, n in got.pop("by_source", {}).items():
                    total["by_source"][src] = total["by_source"].get(src, 0) + n
                for k, v in got.items():
                    total[k] = total.get(k, 0) + v
        except requests.RequestException:
            return None
        return total

    def cpu_percent(self) -> float:
        """The sink processes' CPU since the last call, summed (100 is one core)."""
        total = 0.0
        for p in self.usage:
            with contextlib.suppress(psutil.Error):
                total += p.cpu_percent(None)
        return total


def locust_cmd(
    locustfile: Path, host: str, users: int, rate: float, secs: int, csv_: Path
) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-H", host,
        "-u", str(users), "-r", f"{rate:g}", "-t", f"{secs}s", "--csv", str(csv_),
        "--stop-timeout", "5", "--exit-code-on-error", "0", "--only-summary",
        "--loglevel", "WARNING",
    ]  # fmt: skip


def phone_env(
    fleet_dir: Path, users: int, secs: float, think_mean_s: float, workers: int = 1
) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CWH_FLEET_DIR": str(fleet_dir),
        "CWH_OFFLINE_CHANCE": "0",
        # The same requests as the plain user's: no retries of acknowledged submits.
        "CWH_RESUBMIT_CHANCE": "0",
        "CWH_THINK_MEAN_S": f"{think_mean_s:g}",
        "CWH_THINK_CAP_S": f"{max(10.0, think_mean_s * 10):g}",
        "CWH_USERS": str(users),
        "CWH_DURATION_S": f"{secs:g}",
        "CWH_WORKERS": str(workers),
    }  # fmt: skip


def http_requests(csv_prefix: Path) -> tuple[int, int]:
    """(requests, failures) of the HTTP calls both users make, from Locust's stats CSV."""
    total = fails = 0
    with open(f"{csv_prefix}_stats.csv") as f:
        for row in csv.DictReader(f):
            if row["Name"] in HTTP_NAMES and row["Type"] in ("GET", "POST"):
                total += int(row["Request Count"])
                fails += int(row["Failure Count"])
    return total, fails


def timed_run(cmd: list[str], env: dict[str, str], timeout_s: float, log: Path) -> float:
    """Run Locust (its output to `log`); its CPU time (user + system) in seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "a") as out:
        subprocess.run(
            cmd, env=env, cwd=ROOT, timeout=timeout_s, check=True, stdout=out, stderr=out
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def throughput(sinks: Sinks, work: Path, users: int, secs: int, rounds: int) -> dict[str, Any]:
    host = f"http://127.0.0.1:{sinks.port}"
    per_core: dict[str, list[float]] = {"phone": [], "plain": []}
    rps: dict[str, list[float]] = {"phone": [], "plain": []}
    for i in range(rounds):
        for who, locustfile in (
            ("plain", ROOT / "bench" / "plain_locustfile.py"),
            ("phone", ROOT / "scenarios" / "locustfile.py"),
        ):
            csv_ = work / f"{who}-{i}"
            env = phone_env(work / f"fleet-{who}-{i}", users, secs, think_mean_s=0)
            with console.status(f"throughput round {i + 1}/{rounds}: {who} users, {secs} s"):
                cmd = locust_cmd(locustfile, host, users, users, secs, csv_)
                cpu = timed_run(cmd, env, secs + 60, work / "locust.log")
            n, fails = http_requests(csv_)
            if fails or not n:
                raise SystemExit(f"{who}: {fails} of {n} requests failed against the sink")
            per_core[who].append(n / cpu)
            rps[who].append(n / secs)
            console.log(
                f"{who}: {n} requests in {secs} s, {cpu:.1f} CPU-s: {n / cpu:.0f} per core-s"
            )
    phone, plain = statistics.median(per_core["phone"]), statistics.median(per_core["plain"])
    return {
        "users": users,
        "seconds_per_run": secs,
        "rounds": rounds,
        "requests_per_cpu_second": {"phone": per_core["phone"], "plain": per_core["plain"]},
        "requests_per_second": rps,
        "median_phone_per_core": round(phone),
        "median_plain_per_core": round(plain),
        "ratio_phone_to_plain": round(phone / plain, 3),
    }


@dataclass
class Usage:
    """What the generator processes use at one moment (see `GeneratorUsage.sample`)."""

    cpu_percent: float = 0.0
    rss_mb: float = 0.0
    max_fds: int = 0
    fd_limit: int = 0


class GeneratorUsage:
    """CPU percent (summed over the Locust processes: 200 is both cores), resident memory
    (summed), and descriptors (the process with the most, and the lowest soft limit), sampled;
    psutil's CPU percent needs the same Process objects between samples."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.procs: dict[int, psutil.Process] = {}

    def sample(self) -> Usage:
        try:
            root = psutil.Process(self.root_pid)
            for p in [root, *root.children(recursive=True)]:
                if p.pid not in self.procs:
                    self.procs[p.pid] = p
                    p.cpu_percent(None)  # the first call only starts the measurement
        except psutil.Error:
            pass
        u = Usage()
        limits = []
        for pid, p in list(self.procs.items()):
            try:
                with p.oneshot():
                    u.cpu_percent += p.cpu_percent(None)
                    u.rss_mb += p.memory_info().rss / 2**20
                    u.max_fds = max(u.max_fds, p.num_fds())
                    limits.append(p.rlimit(psutil.RLIMIT_NOFILE)[0])
            except psutil.Error:
                del self.procs[pid]
        u.fd_limit = min(limits, default=0)
        return u


#: The live table's short column names, in the order of Sample's fields.
LIVE_COLUMNS = ("s", "live", "open", "beats", "gen CPU %", "gen MB", "gen fds", "fd lim", "sink %")


def live_table(s: Sample, phones: int, workers: int, sources: int) -> Table:
    table = Table(
        title=f"connected phones: aim {phones}, goal {PHONES_GOAL} "
        f"({workers} generator processes, {sources} source address(es))"
    )
    for name in LIVE_COLUMNS:
        table.add_column(name)
    values = s.to_json().values()
    table.add_row(*(str(round(v, 1) if isinstance(v, float) else v) for v in values))
    return table


@dataclass(frozen=True)
class ConnectedPlan:
    """The connected phase's settings.

    Attributes:
        phones: phones to spawn. rate: spawned per second. hold_s: seconds to hold them after
        the ramp. workers: generator processes. sources: loopback source addresses.
        heartbeat_s: the sink's heartbeat period (what the phones beat at).
    """

    phones: int
    rate: float
    hold_s: int
    workers: int
    sources: tuple[str, ...]
    heartbeat_s: float


def run_connected(sinks: Sinks, work: Path, plan: ConnectedPlan) -> list[Sample]:
    """Run the fleet, sampling the sink and the generator every 2 s; the samples."""
    host = f"http://127.0.0.1:{sinks.port}"
    secs = int(plan.phones / plan.rate) + plan.hold_s
    cmd = locust_cmd(
        ROOT / "scenarios" / "locustfile.py", host, plan.phones, plan.rate, secs, work / "connected"
    )
    if plan.workers > 1:
        cmd += ["--processes", str(plan.workers)]
    # Idle phones: a socket and its heartbeats, one request now and then.
    env = phone_env(work / "fleet-connected", plan.phones, secs, 600, plan.workers)
    env["CWH_SOURCE_ADDRESSES"] = ",".join(plan.sources)
    series: list[Sample] = []
    t0 = time.monotonic()
    # Its own session: the master forks worker processes, and all of them must stop with it.
    log = open(work / "locust.log", "a")  # noqa: SIM115 (closed after the process)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=log, stderr=log)
    usage = GeneratorUsage(proc.pid)
    sinks.cpu_percent()  # the sinks' CPU from here
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while proc.poll() is None and time.monotonic() - t0 < secs + 60:
                time.sleep(2)  # the sampling period of the series, not a synchronisation
                stats = sinks.stats()
                u = usage.sample()
                if stats is None:
                    # The sinks' admin did not answer in time (a loaded machine): no sample,
                    # rather than a zero that would split the hold window.
                    continue
                series.append(
                    Sample(
                        t_s=round(time.monotonic() - t0, 1),
                        live_phones=stats.get("live_phones", 0),
                        open_sockets=stats.get("open_sockets", 0),
                        heartbeats=stats.get("pings", 0),
                        generator_cpu_percent=round(u.cpu_percent, 1),
                        generator_rss_mb=round(u.rss_mb, 1),
                        generator_max_fds=u.max_fds,
                        generator_fd_limit=u.fd_limit,
                        sink_cpu_percent=round(sinks.cpu_percent(), 1),
                    )
                )
                live.update(live_table(series[-1], plan.phones, plan.workers, len(plan.sources)))
                if len(series) == 1 or len(series) % 15 == 0:
                    sources = stats.get("by_source", {})
                    console.log(f"open sockets by source address: {sources}")
    finally:
        group = [proc.pid, *usage.procs]
        terminate_then_kill([p for p in group if p == proc.pid or pid_alive(p)], grace_s=15)
        proc.wait(timeout=30)
        log.close()
    return series


def connect_failures(csv_path: Path) -> int:
    if not csv_path.exists():
        return 0
    with open(csv_path) as f:
        return sum(int(r["Failure Count"]) for r in csv.DictReader(f) if r["Name"] == "connect")


def connected(sinks: Sinks, work: Path, plan: ConnectedPlan) -> dict[str, Any]:
    series = run_connected(sinks, work, plan)
    phones = plan.phones
    best = max(series, key=lambda p: p.live_phones) if series else None
    full_at = next((p.t_s for p in series if p.live_phones >= phones), None)
    fails = connect_failures(work / "connected_stats.csv")
    hold = hold_figures(hold_window(series), plan.heartbeat_s)
    cores = psutil.cpu_count() or 1
    return {
        "goal": phones,
        "spawn_rate": plan.rate,
        "workers": plan.workers,
        "sources": list(plan.sources),
        "sinks": sinks.n,
        "cores": cores,
        "max_live_phones": best.live_phones if best else 0,
        "reached_goal_at_s": full_at,
        # From the samples' own times, not an assumed sampling period.
        "held_goal_for_s": round(
            sum(
                b.t_s - a.t_s
                for a, b in itertools.pairwise(series)
                if a.live_phones >= phones and b.live_phones >= phones
            ),
            1,
        ),
        "connect_failures": fails,
        "hold": asdict(hold) if hold else None,
        "memory_per_phone_kb": memory_per_phone_kb(series),
        "peak_generator_cpu_percent": max((p.generator_cpu_percent for p in series), default=0),
        "peak_generator_fds": max((p.generator_max_fds for p in series), default=0),
        "generator_fd_limit": min((p.generator_fd_limit for p in series), default=0),
        "bounded_by": what_bounded(series, phones, fails, cores),
        "series": [p.to_json() for p in series],
    }


def plot(series: list[dict[str, float]], aim: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    t = [p["t_s"] for p in series]
    ax.plot(t, [p["live_phones"] for p in series], label="phones with heartbeats flowing")
    ax.axhline(PHONES_GOAL, linestyle="--", color="grey", label=f"goal {PHONES_GOAL}")
    if aim != PHONES_GOAL:
        ax.axhline(aim, linestyle=":", color="grey", label=f"aim {aim}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("phones")
    ax2 = ax.twinx()
    for key, colour, label in (
        ("generator_cpu_percent", "tab:red", "generator CPU %"),
        ("sink_cpu_percent", "tab:orange", "sink CPU %"),
    ):
        ax2.plot(t, [p[key] for p in series], color=colour, alpha=0.5, label=label)
    ax2.set_ylabel("CPU % (200 = both cores)")
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.9))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def goals_table(tp: dict[str, Any] | None, conn: dict[str, Any] | None) -> Table:
    table = Table(title="bench-load: issue #17 goal 4")
    for col in ("figure", "measured", "goal", ""):
        table.add_column(col)
    for row in goal_rows(tp, conn):
        table.add_row(*(cell.replace("**", "") for cell in row))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("CWH_BENCH_PORT", "21500")),
        help="the sinks' shared port; their admin ports are the next --sinks (CWH_BENCH_PORT)",
    )
    parser.add_argument("--users", type=int, default=50, help="flat-out users, throughput runs")
    parser.add_argument("--seconds", type=int, default=15, help="length of each throughput run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--phones", type=int, default=PHONES_GOAL, help="connected phones to aim for"
    )
    parser.add_argument("--spawn-rate", type=float, default=150.0)
    parser.add_argument("--hold", type=int, default=45, help="seconds to hold the phones")
    parser.add_argument("--workers", type=int, default=2, help="generator processes (connected)")
    parser.add_argument(
        "--sources", type=int, default=0, help="loopback source addresses (0: 1 per 5,000 phones)"
    )
    parser.add_argument("--sinks", type=int, default=2, help="sink processes sharing the port")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=15.0,
        help="the sink's heartbeat period, s (the reference hub's is 30: 15 beats twice as often)",
    )
    parser.add_argument("--only", choices=("throughput", "connected"), help="run one part")
    args = parser.parse_args()
    out = ROOT / "reports" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-bench-load"
    work = out / "work"  # Locust's CSVs and log, the phones' stores: kept for a post-mortem
    work.mkdir(parents=True)
    # The bench's own process too: it samples every process's descriptors.
    console.log(f"bench: {raise_fd_limit(SPARE_FDS).describe()}")
    plan = ConnectedPlan(
        phones=args.phones,
        rate=args.spawn_rate,
        hold_s=args.hold,
        workers=args.workers,
        sources=loopback_sources(args.sources or sources_needed(args.phones)),
        heartbeat_s=args.heartbeat,
    )
    tp = conn = None
    with Sinks(args.port, args.sinks, args.heartbeat, args.phones) as sinks:
        if args.only != "connected":
            tp = throughput(sinks, work, args.users, args.seconds, args.rounds)
        if args.only != "throughput":
            conn = connected(sinks, work, plan)
    if conn:
        plot(conn["series"], args.phones, out / "connected.png")
    v = verdict(tp, conn)
    data = {"verdict": "pass" if v.ok else "fail", "throughput": tp, "connected": conn}
    (out / "bench.json").write_text(json.dumps(data, indent=2))
    lines = report_lines(tp, conn, args.heartbeat)
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    try_write_html(out, "", console)  # the figures and the plots, in one page
    body = [line for line in lines if not line.startswith(("![", "|"))]
    console.print("\n".join(body))
    console.print(goals_table(tp, conn))
    console.print(f"report: {out}  verdict: {data['verdict']}")
    raise SystemExit(0 if v.ok else 1)


if __name__ == "__main__":
    main()
