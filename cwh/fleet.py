"""`cwh fleet`: a Locust fleet of phones against the local environment or a staging URL, then
the reconciliation of every acknowledged request, read back through the API.

Writes `reports/<UTC timestamp>-load/`: Locust's HTML report and CSVs, the merged ledger, HDR
percentiles, `summary.json` and `summary.md`, and points `reports/latest` at it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from scenarios.latency import LatencyRecorder
from scenarios.profiles import SHAPE_NAMES
from slo.ledger import merge, read_jsonl, write_jsonl
from slo.reconcile import acknowledged, reconcile


@dataclass(frozen=True)
class FleetOptions:
    """Attributes:
    target: base URL of the API (HAProxy's HTTPS frontend).
    users: phones at the peak; duration_s: run length; spawn_rate: phones started per second.
    shape: one of SHAPE_NAMES; workers: Locust worker processes (1: a single process);
    mix: e.g. "ios=60,android=40"; ca_file: certificate to trust ("" = the system's).
    registration_secret: for staging systems that require one to register devices.
    arrival_rate: sessions per second (open arrival model); 0 is the closed model, where each
        phone acts after its think time. In the open model `users` is the pool of phones, the
        most sessions in flight.
    prometheus_url: the target's Prometheus, for the SLO gate ("" = the local environment's).
    """

    target: str
    users: int = 20
    duration_s: float = 60.0
    spawn_rate: float = 10.0
    shape: str = "steady"
    workers: int = 1
    mix: str = "ios=60,android=40"
    ca_file: str = ""
    registration_secret: str = ""
    arrival_rate: float = 0.0
    prometheus_url: str = ""

    def problems(self) -> list[str]:
        out = []
        if not self.target.startswith(("https://", "http://")):
            out.append(f"TARGET={self.target!r}: an http(s) URL")
        if not 1 <= self.users <= 100_000:
            out.append(f"USERS={self.users}: 1 to 100000")
        if not 5 <= self.duration_s <= 86_400:
            out.append(f"DURATION={self.duration_s:g}: 5 to 86400 seconds")
        if self.shape not in SHAPE_NAMES:
            out.append(f"SHAPE={self.shape!r}: one of {', '.join(SHAPE_NAMES)}")
        if not 0 <= self.arrival_rate <= 10_000:
            out.append(f"ARRIVAL_RATE={self.arrival_rate:g}: 0 (closed model) to 10000 sessions/s")
        if self.prometheus_url and not self.prometheus_url.startswith(("https://", "http://")):
            out.append(f"PROMETHEUS_URL={self.prometheus_url!r}: an http(s) URL")
        if not 1 <= self.workers <= 64:
            out.append(f"WORKERS={self.workers}: 1 to 64")
        try:
            weights = dict(p.split("=", 1) for p in self.mix.split(","))
            if set(weights) - {"ios", "android"} or sum(map(int, weights.values())) <= 0:
                raise ValueError
        except ValueError:
            out.append(f"MIX={self.mix!r}: like ios=60,android=40")
        return out


def run_locust(opts: FleetOptions, out: Path, console: Console) -> int:
    """Run Locust headless, its periodic stats on the terminal as the live view."""
    fleet_dir = out / "fleet"
    fleet_dir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(root / "scenarios" / "locustfile.py"),
        "--headless",
        "-H",
        opts.target,
        "-u",
        str(opts.users),
        "-r",
        f"{opts.spawn_rate:g}",
        "-t",
        f"{int(opts.duration_s)}s",
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "locust.html"),
        "--stop-timeout",
        "10",
        "--exit-code-on-error",
        "0",
    ]
    if opts.workers > 1:
        cmd += ["--processes", str(opts.workers)]
    env = {
        **os.environ,
        "CWH_FLEET_DIR": str(fleet_dir),
        "CWH_CA_FILE": opts.ca_file,
        "CWH_SHAPE": opts.shape,
        "CWH_MIX": opts.mix,
        "CWH_REGISTRATION_SECRET": opts.registration_secret,
        # Workers lack Locust's --run-time; the shapes read these instead (storm timing).
        "CWH_USERS": str(opts.users),
        "CWH_DURATION_S": f"{opts.duration_s:g}",
        "CWH_SPAWN_RATE": f"{opts.spawn_rate:g}",
        "CWH_ARRIVAL_RATE": f"{opts.arrival_rate:g}",
        "CWH_WORKERS": str(opts.workers),
        "PYTHONPATH": str(root),
    }
    console.print(f"[bold]fleet[/bold]: {' '.join(cmd[3:])}")
    # Bounded: the run time plus a margin for start and stop.
    return subprocess.run(cmd, env=env, cwd=root, timeout=opts.duration_s + 180).returncode


async def read_back(
    opts: FleetOptions, fleet_dir: Path, acked: dict[str, dict[str, Any]]
) -> dict[str, str | None]:
    """The status of every acknowledged request, read through the API with its device's token
    (None when the API says it does not exist)."""
    idents: dict[str, tuple[str, str]] = {}
    for db in fleet_dir.glob("phones-*.sqlite"):
        conn = sqlite3.connect(db)
        for device_id, client_id, secret in conn.execute(
            "SELECT device_id, client_id, client_secret FROM identities"
        ):
            idents[device_id] = (client_id, secret)
        conn.close()
    ctx = ssl.create_default_context(cafile=opts.ca_file or None)
    statuses: dict[str, str | None] = {}
    by_device: dict[str, list[str]] = {}
    for rid, info in acked.items():
        by_device.setdefault(info["device_id"], []).append(rid)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=32), timeout=aiohttp.ClientTimeout(total=30)
    ) as s:

        async def device(device_id: str, rids: list[str]) -> None:
            client_id, secret = idents[device_id]
            form = {"grant_type": "client_credentials", "client_id": client_id}
            token = ""
            for _ in range(20):  # the token endpoint is rate limited per address: honour it
                async with s.post(
                    f"{opts.target}/oauth/token", data={**form, "client_secret": secret}
                ) as r:
                    if r.status == 429:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    token = (await r.json())["access_token"]
                    break
            if not token:
                return
            for rid in rids:
                for _ in range(20):  # the per-device rate limit may say 429: honour it
                    async with s.get(
                        f"{opts.target}/v1/requests/{rid}",
                        headers={"Authorization": f"Bearer {token}"},
                    ) as r:
                        if r.status == 429:
                            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                            continue
                        statuses[rid] = (await r.json())["status"] if r.status == 200 else None
                        break

        sem = asyncio.Semaphore(16)

        async def bounded(device_id: str, rids: list[str]) -> None:
            async with sem:
                await device(device_id, rids)

        await asyncio.gather(*(bounded(d, r) for d, r in by_device.items()))
    return statuses


async def settle(
    opts: FleetOptions, fleet_dir: Path, acked: dict[str, dict[str, Any]], timeout_s: float
) -> dict[str, str | None]:
    """Read back until no acknowledged request is still queued or processing (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = await read_back(opts, fleet_dir, acked)
        pending = [r for r, s in statuses.items() if s in ("queued", "processing")]
        if not pending or time.monotonic() >= deadline:
            return statuses
        await asyncio.sleep(2)


def run_fleet(
    opts: FleetOptions,
    console: Console,
    reports: Path = Path("reports"),
    out: Path | None = None,
) -> tuple[int, Path, dict[str, Any]]:
    """Returns (exit code, report folder, summary); the folder is `out`, else a new one under
    `reports` that `reports/latest` then points at."""
    # Absolute: Locust runs from the project root, whatever the caller's directory.
    own_folder = out is None
    out = (out or reports / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-load").resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    code = run_locust(opts, out, console)
    ended = time.time()
    fleet_dir = out / "fleet"
    # Every process that ran phones must have left its ledger, or the reconciliation would
    # quietly count less than was done.
    ran = {p.stem.removeprefix("phones-") for p in fleet_dir.glob("phones-*.sqlite")}
    wrote = {p.stem.removeprefix("ledger-") for p in fleet_dir.glob("ledger-*.jsonl")}
    if missing := sorted(ran - wrote):
        console.print(
            f"[red]error:[/red] Locust process(es) {', '.join(missing)} ran phones "
            "but left no ledger: the run cannot be reconciled"
        )
        code = code or 1
    ledgers = [read_jsonl(p) for p in sorted(fleet_dir.glob("ledger-*.jsonl"))]
    ops = merge(ledgers)
    write_jsonl(out / "ledger.jsonl", ops)
    latency = LatencyRecorder()
    for path in fleet_dir.glob("hdr-*.json"):
        latency.add_encoded(json.loads(path.read_text()))
    hdr = latency.summary()
    (out / "hdr-percentiles.json").write_text(json.dumps(hdr, indent=2))
    acked = acknowledged(ops)
    statuses = asyncio.run(settle(opts, fleet_dir, acked, timeout_s=60))
    rec = reconcile(ops, statuses)
    kinds: dict[str, dict[str, int]] = {}
    for op in ops:
        kinds.setdefault(op.kind, {"ok": 0, "fail": 0, "info": 0})[op.outcome] += 1
    summary = {
        "options": opts.__dict__,
        # The SLO gate evaluates Prometheus over exactly this window.
        "window": {"start": started, "end": ended},
        "locust_exit_code": code,
        "operations": kinds,
        "latency": hdr,
        "reconciliation": rec,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    verdict = "PASS" if code == 0 and rec["valid"] and ops else "FAIL"
    lines = [
        f"# Load run: {verdict}",
        "",
        f"- target {opts.target}, {opts.users} phones ({opts.mix}), shape {opts.shape}, "
        f"{opts.duration_s:g} s, {opts.workers} worker process(es)",
        "",
    ]
    if opts.arrival_rate:
        lines[-1:-1] = [
            f"- open arrivals: {opts.arrival_rate:g} sessions/s scheduled; latencies marked "
            "'from intended start' include any wait for a free phone (no coordinated omission)"
        ]
    lines += ["| kind | ok | fail | info |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['ok']} | {v['fail']} | {v['info']} |" for k, v in sorted(kinds.items())]
    lines += [
        "",
        "| latency (HDR) | count | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['count']} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | {v['max_ms']} |"
        for k, v in hdr.items()
    ]
    lines += [
        "",
        f"Reconciliation: {rec['acknowledged']} acknowledged, {rec['lost']} lost, "
        f"{rec['duplicated']} duplicated, {rec['completed']} completed, "
        f"{rec['never_notified']} never notified, {rec['info_submits']} unknown.",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    if own_folder:
        point_latest(out)
    exit_code = 0 if verdict == "PASS" else 1
    return exit_code, out, summary


def point_latest(folder: Path) -> None:
    """`latest` beside `folder` points at it."""
    latest = folder.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(folder.name)
