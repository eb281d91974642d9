"""bench-etcd: does etcd's memory level off under Patroni's writes, and after how many?

A soak sees etcd's memory rise for as long as it lasts (+15 to +19 %/h in 30- and 75-minute
soaks): Patroni writes about 2.3 times a second, and what etcd holds for them (its raft log up to
a snapshot, the revisions until a compaction, its Go heap's high-water) fills over hours. This
benchmark plays hours of those writes in minutes, on a lone etcd per configuration started with
the environment's own memory flags (`env.commands.etcd_memory_flags`), its compaction retention
scaled by the acceleration so it keeps as many revisions as at Patroni's pace. Puts the size of
Patroni's keys (measured on the environment's etcd: members 185 B, status 20 B), paced at
`--rate` a second per configuration, its memory and Go heap sampled as it goes.

The memory judged is etcd's anonymous memory (its heap, its stacks), not its PSS: two thirds of
a lone etcd's PSS is its executable's pages, whose share moves with how many etcd processes run
on the machine (a soak's etcd lost 12 MiB of PSS while this benchmark's two ran).

Per configuration (snapshot count): memory at the first sample and at the end, the peak, the
**high-water growth** (the highest memory of the second half of the writes against the highest
of the first half: a snapshot's sawtooth counts by its peaks) beside the goal, and the writes
after which the peak never rose by more than 5 % again, in hours of Patroni's pace: how long a
soak must run before etcd's memory is level. Exit 1 when the environment's snapshot count
misses the goal or was not measured; the others are there to compare against.

Time-bound behaviour is not accelerated (the Go runtime's forced collection every 2 minutes,
etcd's batching of commits), and Patroni's pace is counted in revisions, not raft entries.

Writes reports/<UTC timestamp>-bench-etcd/ (bench.json, bench.md, memory.png, report.html).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from rich.console import Console
from rich.progress import Progress

from cwh import signals
from cwh.report import try_write_html
from cwh.report.versions import stamp_versions
from env.commands import (
    ETCD_RETENTION_S,
    ETCD_SNAPSHOT_COUNT,
    PATRONI_WRITES_PER_S,
    etcd_memory_flags,
)
from env.process import DeadlineExceeded, terminate_then_kill, wait_until

ROOT = Path(__file__).resolve().parent.parent
console = Console()
#: The most the high-water may grow from the first half of the writes to the second.
GOAL = 0.05
#: Patroni's keys and their values' sizes on the environment's etcd; members are most writes.
KEYS = (("members/pg0", 185), ("members/pg1", 185), ("members/pg2", 185), ("status", 20))
MIB = 1024 * 1024


@dataclass
class Point:
    writes: int
    anon_mib: float
    pss_mib: float
    heap_mib: float


@dataclass
class Run:
    snapshot_count: int
    points: list[Point] = field(default_factory=list)
    error: str | None = None
    elapsed_s: float = 0.0


def patroni_hours(writes: float) -> float:
    """How long Patroni takes to write `writes` times, hours."""
    return writes / PATRONI_WRITES_PER_S / 3600


def high_water_growth(points: Sequence[tuple[int, float]]) -> float | None:
    """The highest memory of the second half of the writes over the first half's, less 1;
    None without a sample in each half."""
    if not points:
        return None
    half = points[-1][0] / 2
    first = [m for w, m in points if w <= half]
    last = [m for w, m in points if w > half]
    if not first or not last:
        return None
    return max(last) / max(first) - 1


def levelled_at(points: Sequence[tuple[int, float]], tolerance: float = GOAL) -> int | None:
    """The fewest writes after which memory never exceeds the peak so far by more than
    `tolerance`; None when no such point leaves at least half the writes after it (a slow
    rise stays within the tolerance of any of its last few samples: not a level)."""
    peak = 0.0
    for i, (writes, mib) in enumerate(points[:-1]):
        if writes > points[-1][0] / 2:
            return None
        peak = max(peak, mib)
        if all(m <= peak * (1 + tolerance) for _, m in points[i + 1 :]):
            return writes
    return None


def memory(pid: int, url: str) -> tuple[float, float, float]:
    """(anonymous memory, PSS, Go heap in use) of etcd, MiB; OSError when it is gone."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        kib = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.endswith("kB\n")}
    if "Anonymous" not in kib:  # an exited child not yet reaped has an empty rollup
        raise OSError(f"etcd (pid {pid}) has exited")
    metrics = requests.get(f"{url}/metrics", timeout=5).text.splitlines()
    heap = next(ln for ln in metrics if ln.startswith("go_memstats_heap_inuse_bytes "))
    return kib["Anonymous"] / 1024, kib["Pss"] / 1024, float(heap.split()[1]) / MIB


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_etcd(
    data: Path, port: int, flags: list[str], procs: list[subprocess.Popen[bytes]]
) -> None:
    """An etcd on `port` (and `port` + 1), added to `procs` at once (the caller stops it
    whatever happens next), answering /health within 30 s."""
    if busy := [p for p in (port, port + 1) if port_in_use(p)]:
        raise RuntimeError(f"port {busy[0]} is in use (an earlier run's etcd? --port moves it)")
    client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    argv = [
        "etcd",
        *("--name", "bench", "--data-dir", str(data), "--log-level", "warn"),
        *("--listen-client-urls", client, "--advertise-client-urls", client),
        *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
        *("--initial-cluster", f"bench={peer}", *flags),
    ]
    log = open(data.parent / f"etcd-{port}.log", "wb")  # noqa: SIM115 (the child's, closed below)
    try:
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    finally:
        log.close()
    proc = procs[-1]
    wait_until(
        lambda: proc.poll() is not None or requests.get(f"{client}/health", timeout=1).ok,
        30,
        f"etcd on {port} answering /health",
    )
    if proc.poll() is not None:
        tail = (data.parent / f"etcd-{port}.log").read_text()[-500:]
        raise RuntimeError(f"etcd on {port} exited: {tail}")


def drive(run: Run, pid: int, url: str, args: argparse.Namespace, advance: threading.Event) -> None:
    """Puts at `args.rate` a second until `args.writes`, a sample every `args.sample_every`."""
    http = requests.Session()
    keys = itertools.cycle(KEYS)  # members three times in four, as Patroni's loop
    period, next_at = 1 / args.rate, time.monotonic()
    started = next_at
    try:
        for n in range(1, args.writes + 1):
            key, size = next(keys)
            value = (f"{n}:" + "x" * size)[:size]
            http.post(
                f"{url}/v3/kv/put",
                json={
                    "key": base64.b64encode(f"/service/bench/{key}".encode()).decode(),
                    "value": base64.b64encode(value.encode()).decode(),
                },
                timeout=10,
            ).raise_for_status()
            if n % args.sample_every == 0 or n == args.writes:
                run.points.append(Point(n, *memory(pid, url)))
                advance.set()
            next_at += period
            if (wait := next_at - time.monotonic()) > 0:
                time.sleep(wait)  # pacing the writes, not a synchronization
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        run.elapsed_s = time.monotonic() - started
        advance.set()


def measure(args: argparse.Namespace, workdir: Path) -> list[Run]:
    acceleration = args.rate / PATRONI_WRITES_PER_S
    runs = [Run(c) for c in args.snapshot_counts]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        threads = []
        advance = threading.Event()
        for i, run in enumerate(runs):
            port = args.port + 10 * i
            flags = etcd_memory_flags(ETCD_RETENTION_S / acceleration, run.snapshot_count)
            start_etcd(workdir / f"data-{port}", port, flags, procs)
            url = f"http://127.0.0.1:{port}"
            threads.append(
                threading.Thread(
                    target=drive, args=(run, procs[-1].pid, url, args, advance), daemon=True
                )
            )
        for t in threads:
            t.start()
        hours = patroni_hours(args.writes)
        with Progress(console=console, transient=True) as bar:
            tasks = [
                bar.add_task(
                    f"snapshot-count {r.snapshot_count} ({hours:.1f} h of Patroni)",
                    total=args.writes,
                )
                for r in runs
            ]
            while any(t.is_alive() for t in threads):
                advance.wait(timeout=1.0)
                advance.clear()
                for task, r in zip(tasks, runs, strict=True):
                    bar.update(task, completed=r.points[-1].writes if r.points else 0)
        for t in threads:
            t.join()
    finally:
        terminate_then_kill([p.pid for p in procs], grace_s=10)
        for p in procs:
            p.wait(timeout=5)  # reaped: terminate_then_kill saw them exit
    return runs


def figures(run: Run) -> dict[str, object]:
    pts = [(p.writes, p.anon_mib) for p in run.points]
    growth = high_water_growth(pts)
    level = levelled_at(pts)
    done = pts[-1][0] if pts else 0
    return {
        "snapshot_count": run.snapshot_count,
        "environment": run.snapshot_count == ETCD_SNAPSHOT_COUNT,
        "writes_per_s": round(done / run.elapsed_s, 1) if run.elapsed_s > 0 else None,
        "first_mib": pts[0][1] if pts else None,
        "last_mib": pts[-1][1] if pts else None,
        "peak_mib": max(m for _, m in pts) if pts else None,
        "peak_pss_mib": max(p.pss_mib for p in run.points) if pts else None,
        "peak_heap_mib": max(p.heap_mib for p in run.points) if pts else None,
        "high_water_growth": growth,
        "met": run.error is None and growth is not None and growth <= GOAL,
        "levelled_at_writes": level,
        "levelled_at_patroni_h": None if level is None else patroni_hours(level),
        "error": run.error,
    }


def report_lines(args: argparse.Namespace, rows: list[dict[str, object]]) -> list[str]:
    hours = patroni_hours(args.writes)
    lines = [
        f"# bench-etcd: {args.writes:,} puts at {args.rate:g}/s per configuration "
        f"({hours:.1f} h of Patroni's {PATRONI_WRITES_PER_S} a second)",
        "",
        "| snapshot-count | anonymous memory first / last / peak, MiB | Go heap peak "
        f"| writes/s reached | high-water growth (goal <= {GOAL:.0%}) | levelled after |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " (the environment's)" if r["environment"] else ""
        if r["first_mib"] is None:
            lines.append(f"| {r['snapshot_count']:,}{mark} | no sample: {r['error']} | | | | |")
            continue
        growth, level = r["high_water_growth"], r["levelled_at_writes"]
        grew = "-" if growth is None else f"{growth:+.1%}"
        if level is None:
            levelled = "not levelled"
        else:
            levelled = f"{level:,} writes ({r['levelled_at_patroni_h']:.1f} h of Patroni)"
        error = f" error: {r['error']}" if r["error"] else ""
        lines.append(
            f"| {r['snapshot_count']:,}{mark} "
            f"| {r['first_mib']:.1f} / {r['last_mib']:.1f} / {r['peak_mib']:.1f} "
            f"| {r['peak_heap_mib']:.1f} | {r['writes_per_s']} "
            f"| {grew} {'met' if r['met'] else 'missed'} "
            f"| {levelled}{error} |"
        )
    return lines


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r in runs:
        hours = [patroni_hours(p.writes) for p in r.points]
        ax.plot(hours, [p.anon_mib for p in r.points], label=f"snapshot-count {r.snapshot_count}")
    ax.set_xlabel("hours of Patroni's writes")
    ax.set_ylabel("etcd anonymous memory, MiB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("CWH_BENCH_ETCD_PORT", "21570")),
        help="the first etcd's client port (+1 its peer port; the next etcd +10)",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="puts a second per etcd")
    parser.add_argument("--writes", type=int, default=30000, help="puts per etcd")
    parser.add_argument("--sample-every", type=int, default=1000, help="puts between samples")
    parser.add_argument(
        "--snapshot-counts",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[ETCD_SNAPSHOT_COUNT, 10000],
        help="comma-separated; each its own etcd, at once",
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.sample_every < 1 or args.writes < 2 * args.sample_every:
        parser.error("--rate must be > 0 and --writes at least two samples' worth")
    if len(set(args.snapshot_counts)) != len(args.snapshot_counts) or min(args.snapshot_counts) < 1:
        parser.error("--snapshot-counts: distinct counts, each at least 1")
    if not shutil.which("etcd"):
        raise SystemExit("etcd is not installed: apt-get install etcd-server (or `make deps`)")
    signals.install()  # SIGTERM as Ctrl-C: the etcds are stopped either way
    with tempfile.TemporaryDirectory(prefix="cwh-bench-etcd-") as tmp:
        try:
            runs = measure(args, Path(tmp))
        except (RuntimeError, DeadlineExceeded) as exc:
            raise SystemExit(f"bench-etcd: {exc}") from None
    out = ROOT / "reports" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-bench-etcd"
    out.mkdir(parents=True)
    stamp_versions(out)  # the versions that run, before anything changes
    rows = [figures(r) for r in runs]
    ours = next((r for r in rows if r["environment"]), None)
    verdict = "pass" if ours is not None and ours["met"] else "fail"
    (out / "bench.json").write_text(
        json.dumps(
            {
                "verdict": verdict,
                "goal": GOAL,
                "options": vars(args),
                "figures": rows,
                "samples": {str(r.snapshot_count): [asdict(p) for p in r.points] for r in runs},
            },
            indent=2,
        )
    )
    lines = report_lines(args, rows)
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    plot(runs, out / "memory.png")
    try_write_html(out, "", console)
    console.print("\n".join(lines))
    console.print(f"report: {out}  verdict: {verdict}")
    raise SystemExit(0 if verdict == "pass" else 1)


if __name__ == "__main__":
    main()
