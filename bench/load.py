"""`make bench-load`: what the load generator itself can do, against a trivial aiohttp sink on
loopback (bench/sink.py), so the system under test is out of the picture.

1. Throughput: requests per CPU-second (per core) of our phone user (ledger, outbox, socket,
   HDR histograms) side by side with a plain Locust FastHttpUser making the same HTTP requests,
   alternated over rounds in the same run. The ratio is the figure: absolute rates on a shared
   2-core machine are noise.
2. Connected phones: phones spawned up to PHONES, each holding its socket open and sending
   heartbeats, idle otherwise; the sink counts the phones whose heartbeat is flowing. Reports the
   most held at once, and what stopped it from going higher (failures, generator CPU, file
   descriptors).

Writes reports/<UTC timestamp>-bench-load/ (bench.json, bench.md, connected.png).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import requests
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cwh.report import try_write_html
from env.process import pid_alive, terminate_then_kill, wait_until

ROOT = Path(__file__).resolve().parent.parent
console = Console()
HTTP_NAMES = ("submit", "read", "sync")


class Sinks:
    """`n` sink processes sharing one port; a context manager that always stops them."""

    def __init__(self, port: int, n: int, heartbeat_s: float) -> None:
        self.port, self.n, self.heartbeat_s = port, n, heartbeat_s
        self.admin_ports = [port + 1 + i for i in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Sinks:
        for admin in self.admin_ports:
            cmd = [sys.executable, "-m", "bench.sink", "--port", str(self.port)]
            cmd += ["--admin-port", str(admin), "--heartbeat", f"{self.heartbeat_s:g}"]
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT))
        wait_until(lambda: self.stats() is not None, timeout_s=20, what="the sink to listen")
        return self

    def __exit__(self, *_: object) -> None:
        for p in self.procs:
            terminate_then_kill([p.pid], grace_s=5)
            p.wait(timeout=10)

    def stats(self) -> dict[str, int] | None:
        total: dict[str, int] = {}
        try:
            for admin in self.admin_ports:
                for k, v in (
                    requests.get(f"http://127.0.0.1:{admin}/stats", timeout=2).json().items()
                ):
                    total[k] = total.get(k, 0) + v
        except requests.RequestException:
            return None
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


class GeneratorUsage:
    """CPU percent (summed over the Locust processes: 200 is both cores) and open file
    descriptors, sampled; psutil's CPU percent needs the same Process objects between samples."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.procs: dict[int, psutil.Process] = {}

    def sample(self) -> tuple[float, int]:
        try:
            root = psutil.Process(self.root_pid)
            for p in [root, *root.children(recursive=True)]:
                if p.pid not in self.procs:
                    self.procs[p.pid] = p
                    p.cpu_percent(None)  # the first call only starts the measurement
        except psutil.Error:
            pass
        cpu, fds = 0.0, 0
        for pid, p in list(self.procs.items()):
            try:
                cpu += p.cpu_percent(None)
                fds += p.num_fds()
            except psutil.Error:
                del self.procs[pid]
        return cpu, fds


def connected(
    sinks: Sinks, work: Path, phones: int, rate: float, hold_s: int, workers: int
) -> dict[str, Any]:
    host = f"http://127.0.0.1:{sinks.port}"
    secs = int(phones / rate) + hold_s
    cmd = locust_cmd(
        ROOT / "scenarios" / "locustfile.py", host, phones, rate, secs, work / "connected"
    )
    if workers > 1:
        cmd += ["--processes", str(workers)]
    # Idle phones: a socket and its heartbeats, one request now and then.
    env = phone_env(work / "fleet-connected", phones, secs, think_mean_s=600, workers=workers)
    series: list[dict[str, float]] = []
    t0 = time.monotonic()
    # Its own session: the master forks worker processes, and all of them must stop with it.
    log = open(work / "locust.log", "a")  # noqa: SIM115 (closed after the process)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=log, stderr=log)
    usage = GeneratorUsage(proc.pid)
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while proc.poll() is None and time.monotonic() - t0 < secs + 60:
                time.sleep(2)  # the sampling period of the series, not a synchronisation
                stats = sinks.stats() or {}
                cpu, fds = usage.sample()
                point = {
                    "t_s": round(time.monotonic() - t0, 1),
                    "live_phones": stats.get("live_phones", 0),
                    "open_sockets": stats.get("open_sockets", 0),
                    "generator_cpu_percent": round(cpu, 1),
                    "generator_fds": fds,
                }
                series.append(point)
                table = Table(
                    title=f"connected phones (goal {phones}, {workers} generator processes)"
                )
                for k in point:
                    table.add_column(k)
                table.add_row(*(str(v) for v in point.values()))
                live.update(table)
    finally:
        group = [proc.pid, *usage.procs]
        terminate_then_kill([p for p in group if p == proc.pid or pid_alive(p)], grace_s=15)
        proc.wait(timeout=30)
        log.close()
    best = max(series, key=lambda p: p["live_phones"]) if series else {}
    connect_fail = 0
    path = work / "connected_stats.csv"
    if path.exists():
        with open(path) as f:
            connect_fail = sum(
                int(r["Failure Count"]) for r in csv.DictReader(f) if r["Name"] == "connect"
            )
    full_at = next((p["t_s"] for p in series if p["live_phones"] >= phones), None)
    return {
        "goal": phones,
        "spawn_rate": rate,
        "workers": workers,
        "max_live_phones": best.get("live_phones", 0),
        "reached_goal_at_s": full_at,
        # From the samples' own times, not an assumed sampling period.
        "held_goal_for_s": round(
            sum(
                b["t_s"] - a["t_s"]
                for a, b in itertools.pairwise(series)
                if a["live_phones"] >= phones and b["live_phones"] >= phones
            ),
            1,
        ),
        "connect_failures": connect_fail,
        "peak_generator_cpu_percent": max((p["generator_cpu_percent"] for p in series), default=0),
        "peak_generator_fds": max((p["generator_fds"] for p in series), default=0),
        "fd_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "series": series,
    }


def plot(series: list[dict[str, float]], goal: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    t = [p["t_s"] for p in series]
    ax.plot(t, [p["live_phones"] for p in series], label="phones with heartbeats flowing")
    ax.axhline(goal, linestyle="--", color="grey", label=f"goal {goal}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("phones")
    ax2 = ax.twinx()
    ax2.plot(
        t,
        [p["generator_cpu_percent"] for p in series],
        color="tab:red",
        alpha=0.5,
        label="generator CPU %",
    )
    ax2.set_ylabel("generator CPU % (200 = both cores)")
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.9))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_lines(tp: dict[str, Any] | None, conn: dict[str, Any] | None, hb: float) -> list[str]:
    lines = ["# bench-load", ""]
    if tp:
        lines += [
            f"Throughput ({tp['users']} flat-out users, {tp['rounds']} alternated rounds of "
            f"{tp['seconds_per_run']} s, sink on loopback): phone user "
            f"{tp['median_phone_per_core']} requests per CPU-second, plain FastHttpUser "
            f"{tp['median_plain_per_core']}: ratio **{tp['ratio_phone_to_plain']}**.",
            "",
        ]
    if conn:
        lines += [
            f"Connected phones (goal {conn['goal']}, {conn['workers']} generator processes, "
            f"heartbeat {hb:g} s): **{conn['max_live_phones']}** at most with heartbeats "
            f"flowing; goal reached at {conn['reached_goal_at_s']} s, held "
            f"{conn['held_goal_for_s']} s; {conn['connect_failures']} failed connects; generator "
            f"CPU peak {conn['peak_generator_cpu_percent']} % of 200; generator FDs peak "
            f"{conn['peak_generator_fds']} (hard limit {conn['fd_hard_limit']} per process).",
            "",
            "![connected phones](connected.png)",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("CWH_BENCH_PORT", "21500")))
    parser.add_argument("--users", type=int, default=50, help="flat-out users, throughput runs")
    parser.add_argument("--seconds", type=int, default=15, help="length of each throughput run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phones", type=int, default=10_000, help="connected phones to aim for")
    parser.add_argument("--spawn-rate", type=float, default=150.0)
    parser.add_argument("--hold", type=int, default=45, help="seconds to hold the phones")
    parser.add_argument("--workers", type=int, default=2, help="generator processes (connected)")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="sink's heartbeat interval")
    parser.add_argument("--only", choices=("throughput", "connected"), help="run one part")
    args = parser.parse_args()
    out = ROOT / "reports" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-bench-load"
    work = out / "work"  # Locust's CSVs and log, the phones' stores: kept for a post-mortem
    work.mkdir(parents=True)
    tp = conn = None
    with Sinks(args.port, 2, args.heartbeat) as sinks:
        if args.only != "connected":
            tp = throughput(sinks, work, args.users, args.seconds, args.rounds)
        if args.only != "throughput":
            conn = connected(sinks, work, args.phones, args.spawn_rate, args.hold, args.workers)
    if conn:
        plot(conn["series"], args.phones, out / "connected.png")
    (out / "bench.json").write_text(json.dumps({"throughput": tp, "connected": conn}, indent=2))
    lines = report_lines(tp, conn, args.heartbeat)
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    try_write_html(out, "", console)  # the figures and the plots, in one page
    console.print("\n".join(line for line in lines if not line.startswith("![")))
    console.print(f"report: {out}")


if __name__ == "__main__":
    main()
