"""`cwh fleet`: a Locust fleet of phones against the local environment or a staging URL, then
the reconciliation of every acknowledged request, read back through the API.

Writes `reports/<UTC timestamp>-load/`: Locust's HTML report and CSVs, the merged ledger, HDR
percentiles, `summary.json` and `summary.md`, and points `reports/latest` at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from cwh import signals
from cwh.report.versions import stamp_versions
from env.local import free_port
from scenarios.latency import LatencyRecorder
from scenarios.profiles import FINISH_FILE, SHAPE_NAMES
from scenarios.shipping import problems, read_manifest
from slo.ledger import Operation, merge, read_jsonl, write_atomic, write_jsonl
from slo.reconcile import EXIT_CODES, acknowledged, notified_ids, reconcile
from slo.recovery import rpo_s

#: Where a `cwh load` process stands in a fleet (FleetOptions.role).
ROLES = ("local", "master", "worker")
#: How long a master waits for its workers to connect, and a worker for its master to start.
EXPECT_WORKERS_S = 300.0


@dataclass(frozen=True)
class FleetOptions:
    """Attributes:
    target: base URL of the API (HAProxy's HTTPS frontend).
    users: phones at the peak; duration_s: run length; spawn_rate: phones started per second.
    shape: one of SHAPE_NAMES; workers: Locust worker processes (1: a single process); with
        role "master", the workers it waits for (started elsewhere: `cwh load --worker`);
    mix: e.g. "ios=60,android=40"; ca_file: certificate to trust ("" = the system's).
    registration_secret: for staging systems that require one to register devices.
    arrival_rate: sessions per second (open arrival model); 0 is the closed model, where each
        phone acts after its think time. In the open model `users` is the pool of phones, the
        most sessions in flight.
    prometheus_url: the target's Prometheus, for the SLO gate ("" = the local environment's).
    settle_s: after the run, how long acknowledged requests are read back (until none is
        pending and every one answered); what is still unanswered then is unknown.
    role: "local" (the whole fleet here: one process, or `workers` processes under a master on
        loopback), "master" (Locust's master on `master_bind_host:master_port`, waiting for
        `workers` workers from anywhere, then reconciling), or "worker" (phones only, for the
        master at `master_host:master_port`; its records go to the master as messages).
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
    settle_s: float = 60.0
    role: str = "local"
    master_host: str = "127.0.0.1"
    master_port: int = 0
    master_bind_host: str = "127.0.0.1"

    def problems(self) -> list[str]:
        out = []
        if self.role not in ROLES:
            out.append(f"role {self.role!r}: one of {', '.join(ROLES)}")
        if self.role != "local" and not 1 <= self.master_port <= 65535:
            out.append(f"--master-port={self.master_port}: 1 to 65535")
        if self.role == "worker" and not self.master_host:
            out.append("--worker needs --master-host (the master's address)")
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
        if not 1 <= self.settle_s <= 3600:
            out.append(f"SETTLE={self.settle_s:g}: 1 to 3600 seconds")
        if not 1 <= self.workers <= 64:
            out.append(f"WORKERS={self.workers}: 1 to 64")
        try:
            weights = dict(p.split("=", 1) for p in self.mix.split(","))
            if set(weights) - {"ios", "android"} or sum(map(int, weights.values())) <= 0:
                raise ValueError
        except ValueError:
            out.append(f"MIX={self.mix!r}: like ios=60,android=40")
        return out


def role_arguments(opts: FleetOptions) -> list[str]:
    """Locust's arguments for the process's place in the fleet."""
    # A worker that joins mid-run (one restarted) gets its share of phones at once.
    rebalance = ["--enable-rebalancing"]
    if opts.role == "master":
        return [
            "--master",
            "--master-bind-host",
            opts.master_bind_host,
            "--master-bind-port",
            str(opts.master_port),
            "--expect-workers",
            str(opts.workers),
            # Bounded: a master whose workers never come gives up (and says so).
            "--expect-workers-max-wait",
            f"{EXPECT_WORKERS_S:g}",
            *rebalance,
        ]
    if opts.role == "worker":
        return [
            "--worker",
            "--master-host",
            opts.master_host,
            "--master-port",
            str(opts.master_port),
        ]
    if opts.workers == 1:
        return []
    # The master's port: a free one, on loopback. Locust's fixed default (5557, on every
    # interface) made two fleets on one machine collide, the second's workers joining the
    # first's master.
    port = free_port()
    return [
        "--processes",
        str(opts.workers),
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        str(port),
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(port),
        *rebalance,
    ]


def run_arguments(opts: FleetOptions, out: Path) -> list[str]:
    """Locust's arguments for the process that runs the test (alone, or as the master)."""
    return [
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
        f"{LOCUST_STOP_TIMEOUT_S:g}",
        "--exit-code-on-error",
        "0",
        *role_arguments(opts),
    ]


def run_locust(opts: FleetOptions, out: Path, console: Console, log: Path | None = None) -> int:
    """Run Locust headless, its periodic stats on the terminal as the live view; with `log`,
    its output goes to that file instead (a caller with a live view of its own)."""
    fleet_dir = out / "fleet"
    fleet_dir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "locust", "-f", str(root / "scenarios" / "locustfile.py")]
    if opts.role == "worker":
        # Phones only: the master has the run's time, shape and stats.
        cmd += role_arguments(opts)
    else:
        cmd += run_arguments(opts, out)
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
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(open(log, "a")) if log is not None else None
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=output, stderr=output)
        return _wait_locust(opts, proc, console)


def _wait_locust(opts: FleetOptions, proc: subprocess.Popen[bytes], console: Console) -> int:
    """Locust's exit code, bounded in time; Ctrl-C lets it stop its phones first."""
    # Bounded: the run time plus a margin for start and stop, and for a master the wait for
    # its workers. A worker's life is its master's to decide: Locust ends it when the master
    # says so, when it cannot reach one for 300 s at the start, or hears none for 60 s.
    limit = None
    if opts.role != "worker":
        limit = opts.duration_s + 180 + (EXPECT_WORKERS_S if opts.role == "master" else 0)
    try:
        return proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        console.print(
            f"[red]error:[/red] Locust had not ended {limit:.0f} s after it started: stopped"
        )
        interrupted_wait(proc, 0.0)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C (or the experiment's SIGINT to the fleet's group) reached Locust too: it is
        # stopping its phones and writing their ledgers. Wait for that rather than kill it
        # (subprocess.run would, after 0.25 s), so what ran is still reconciled.
        console.print("[yellow]interrupted: Locust is stopping its phones…[/yellow]")
        signals.pass_on(proc)
        interrupted_wait(proc, LOCUST_STOP_TIMEOUT_S + 30)
        return INTERRUPTED


def request_finish(out: Path, reason: str) -> bool:
    """Ask the fleet running into `out` to end its run now, as if its duration were up: its
    phones stop and the run is reconciled and judged as any other (no interrupt). The reason
    goes into the summary (`finished_early`). False when it was asked already."""
    path = out / "fleet" / FINISH_FILE
    if path.exists():
        return False
    write_atomic(path, json.dumps({"reason": reason, "wall": time.time()}))
    return True


def finished_early(out: Path, before: float) -> dict[str, Any] | None:
    """Why and when the run in `out` was ended before its duration (`request_finish`), if it
    was asked to before the wall time `before` (its duration's end), else None."""
    path = out / "fleet" / FINISH_FILE
    if not path.exists():
        return None
    asked: dict[str, Any] = json.loads(path.read_text())
    return asked if asked["wall"] < before else None


def interrupted_wait(
    proc: subprocess.Popen[bytes], grace_s: float, signalled_s: float = 15.0
) -> int:
    """Locust's exit code after an interrupt: its own stop, bounded by `grace_s`; then one
    SIGINT of ours (the interrupt was ours alone), then a kill. Another Ctrl-C skips ahead."""
    for action in (None, signal.SIGINT, signal.SIGKILL):
        if action is not None:
            proc.send_signal(action)
        try:
            return proc.wait(timeout=grace_s if action is None else signalled_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            continue
    return proc.wait()


#: run_locust's code for a run interrupted by Ctrl-C or SIGINT (what a shell reports for it).
INTERRUPTED = 130
#: Locust's --stop-timeout: how long a stopping phone may finish its task.
LOCUST_STOP_TIMEOUT_S = 10.0

#: Statuses a request leaves by itself: the read-back waits for them to end.
PENDING = ("queued", "processing")
#: 429s in a row a read-back pass honours for one request before moving on.
RATE_LIMITED_TRIES = 3
#: Devices read back at once. Each device's requests are read one after the other (its rate
#: limit, 20/s, is per device), so the read-back's pace is this many devices' limits: at 16, a
#: 30-minute soak's 10,000 acknowledged requests over 50 phones took four waves of ~15 s and
#: ran past a 60 s settle (hundreds unknown); at 64 they are one wave, paced by the API.
READ_BACK_DEVICES = 64
#: Request ids per bulk status read (`POST /v1/request-statuses`, at most the API's
#: `STATUS_BATCH_MAX`). One GET per request bounded the read-back at about 230 reads/s here, so a
#: 30-minute soak's 26,000 acknowledged requests were half unknown after a 60 s settle.
READ_BACK_BATCH = 500


def identities(fleet_dir: Path) -> dict[str, tuple[str, str]]:
    """device id -> (client id, client secret), as every phone process shipped them."""
    out: dict[str, tuple[str, str]] = {}
    for path in fleet_dir.glob("identities-*.jsonl"):
        for line in path.read_text().splitlines():
            device_id, client_id, secret = json.loads(line)
            out[device_id] = (client_id, secret)
    return out


async def _retry_after(r: aiohttp.ClientResponse, deadline: float) -> None:
    """Wait as a 429's Retry-After says (1 s when it says nothing), never past `deadline`."""
    wait = float(r.headers.get("Retry-After", "1"))
    await asyncio.sleep(max(0.0, min(wait, deadline - time.monotonic())))


async def _token(
    s: aiohttp.ClientSession, target: str, ident: tuple[str, str], deadline: float
) -> str | None:
    """A device's access token, or None when the API did not give one before `deadline` (any
    failure). The token endpoint may be rate limited per address: its 429s are honoured."""
    form = {"grant_type": "client_credentials", "client_id": ident[0], "client_secret": ident[1]}
    while time.monotonic() < deadline:
        try:
            async with s.post(f"{target}/oauth/token", data=form) as r:
                if r.status == 429:
                    await _retry_after(r, deadline)
                    continue
                return str((await r.json())["access_token"]) if r.status == 200 else None
        # TypeError: a 200 whose JSON is not an object (null, a list): no answer, not a crash.
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return None
    return None


class Tokens:
    """Access tokens of the fleet's devices, asked once and kept across read-back passes (a
    burst of token calls from one address is what a rate limit refuses)."""

    def __init__(self, target: str, idents: dict[str, tuple[str, str]]) -> None:
        self.target, self.idents = target, idents
        self.tokens: dict[str, str] = {}

    async def get(self, s: aiohttp.ClientSession, device_id: str, deadline: float) -> str | None:
        ident = self.idents.get(device_id)
        if device_id not in self.tokens and ident is not None:
            token = await _token(s, self.target, ident, deadline)
            if token is not None:
                self.tokens[device_id] = token
        return self.tokens.get(device_id)

    def forget(self, device_id: str) -> None:
        """A token the API refused (expired): ask again next time."""
        self.tokens.pop(device_id, None)


async def _status(
    s: aiohttp.ClientSession, target: str, token: str, rid: str, deadline: float
) -> tuple[bool, str | None]:
    """(answered, status): (True, None) for a 404 of its own device (not there); (False, None)
    when the API did not answer (5xx, timeout, connection error, 429 a few times in a row: the
    next pass asks again, so one rate-limited request does not hold up its device's others);
    (False, "unauthorized") when it refused the token."""
    for _ in range(RATE_LIMITED_TRIES):
        if time.monotonic() >= deadline:
            break
        try:
            async with s.get(
                f"{target}/v1/requests/{rid}", headers={"Authorization": f"Bearer {token}"}
            ) as r:
                if r.status == 429:  # the per-device rate limit: honour it, within the deadline
                    await _retry_after(r, deadline)
                    continue
                if r.status == 404:
                    return True, None
                if r.status == 200:
                    return True, str((await r.json())["status"])
                return False, "unauthorized" if r.status == 401 else None
        # TypeError: a 200 whose JSON is not an object (null, a list): no answer, not a crash.
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return False, None
    return False, None


def _same_id(rid: str) -> str:
    """A request id in one form whatever its case or hyphens (as a UUID), else as it is."""
    try:
        return str(uuid.UUID(rid))
    except ValueError:
        return rid


async def _statuses(
    s: aiohttp.ClientSession, target: str, token: str, rids: list[str], deadline: float
) -> tuple[str, dict[str, str | None]]:
    """Statuses of `rids` (one device's) in one call: ("ok", request id -> status, None for those
    the API says are not there); ("absent", {}) when the API has no bulk read; ("unauthorized",
    {}) when it refused the token; ("unknown", {}) when it did not answer (5xx, timeout,
    connection error, 429 a few times in a row, a body not as documented)."""
    for _ in range(RATE_LIMITED_TRIES):
        if time.monotonic() >= deadline:
            break
        try:
            async with s.post(
                f"{target}/v1/request-statuses",
                json={"request_ids": rids},
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                if r.status == 429:
                    await _retry_after(r, deadline)
                    continue
                # No such route (an older API), or a batch larger than this API takes.
                if r.status in (404, 405, 413, 422):
                    return "absent", {}
                if r.status == 401:
                    return "unauthorized", {}
                if r.status != 200:
                    return "unknown", {}
                body = await r.json()
                # Matched as UUIDs: the API answers in its canonical form, whatever form the
                # ledger holds.
                ours = {_same_id(rid): rid for rid in rids}
                got: dict[str, str | None] = {}
                for row in body["requests"]:
                    if (rid := ours.get(_same_id(str(row["request_id"])))) is not None:
                        got[rid] = str(row["status"])
                for missing in body["missing"]:
                    if (rid := ours.get(_same_id(str(missing)))) is not None:
                        got[rid] = None
                return "ok", got
        # TypeError: a 200 whose JSON is not as documented (null, a list): no answer, not a crash.
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return "unknown", {}
    return "unknown", {}


async def read_back(
    opts: FleetOptions,
    tokens: Tokens,
    rids: list[str],
    acked: dict[str, dict[str, Any]],
    deadline: float,
    request_timeout_s: float = 10.0,
) -> dict[str, str | None]:
    """One pass over `rids`, read through the API with each device's token, in bulk
    (`READ_BACK_BATCH` per call) or, where the API has no bulk read, one GET each: request id ->
    status (None: the API says it is not there). What the API could not answer before
    `deadline` (monotonic) is left out: unknown, never lost. Never raises for the API's sake."""
    ctx = ssl.create_default_context(cafile=opts.ca_file or None)
    statuses: dict[str, str | None] = {}
    by_device: dict[str, list[str]] = {}
    for rid in rids:
        by_device.setdefault(acked[rid]["device_id"], []).append(rid)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=READ_BACK_DEVICES),
        timeout=aiohttp.ClientTimeout(total=request_timeout_s),
    ) as s:
        sem = asyncio.Semaphore(READ_BACK_DEVICES)
        # Whether this pass reads in bulk: off for the rest of the pass at the first answer that
        # the API has no bulk read (a proxy's passing 404 only costs this pass that speed).
        bulk = True

        async def device(device_id: str, rids: list[str]) -> None:
            nonlocal bulk
            async with sem:
                token = await tokens.get(s, device_id, deadline)
                if token is None:  # its requests stay unknown this pass
                    return
                if bulk:
                    for at in range(0, len(rids), READ_BACK_BATCH):
                        chunk = rids[at : at + READ_BACK_BATCH]
                        outcome, got = await _statuses(s, opts.target, token, chunk, deadline)
                        if outcome == "unauthorized":
                            tokens.forget(device_id)
                            return
                        if outcome == "absent":  # asked again on the next pass
                            bulk = False
                            break
                        statuses.update(got)  # "unknown": this chunk is asked again next pass
                    else:
                        return
                for rid in rids:  # one GET each: an API without the bulk read
                    if rid in statuses:
                        continue
                    answered, status = await _status(s, opts.target, token, rid, deadline)
                    if answered:
                        statuses[rid] = status
                    elif status == "unauthorized":
                        tokens.forget(device_id)
                        return

        remaining = max(0.0, deadline - time.monotonic())
        with contextlib.suppress(TimeoutError):  # what was read so far stands
            async with asyncio.timeout(remaining):
                await asyncio.gather(*(device(d, r) for d, r in by_device.items()))
    return statuses


async def settle(
    opts: FleetOptions,
    fleet_dir: Path,
    acked: dict[str, dict[str, Any]],
    timeout_s: float,
    request_timeout_s: float = 10.0,
    tokens: Tokens | None = None,
) -> dict[str, str | None]:
    """Read back until every acknowledged request has a final answer, or `timeout_s` passed:
    pending ones (queued, processing) and unknown ones are asked again, final ones are not.
    Returns request id -> status (None: not there); unknowns at the deadline are left out.
    `tokens`: the devices' tokens (default: asked afresh from the identities in `fleet_dir`)."""
    deadline = time.monotonic() + timeout_s
    tokens = tokens or Tokens(opts.target, identities(fleet_dir))
    known: dict[str, str | None] = {}
    while True:
        todo = [r for r in acked if r not in known or known[r] in PENDING]
        if not todo or time.monotonic() >= deadline:
            return known
        known.update(await read_back(opts, tokens, todo, acked, deadline, request_timeout_s))
        if any(r not in known or known[r] in PENDING for r in todo):
            await asyncio.sleep(max(0.0, min(2.0, deadline - time.monotonic())))


async def _device_events(
    s: aiohttp.ClientSession, target: str, token: str, deadline: float
) -> set[str] | None:
    """The request ids with an event in a device's log (`/v1/sync` from the start, page by
    page), or None when the log could not be read whole before `deadline`."""
    seen: set[str] = set()
    since = "0"
    while time.monotonic() < deadline:
        try:
            async with s.get(
                f"{target}/v1/sync",
                params={"since": since},
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                if r.status == 429:
                    await _retry_after(r, deadline)
                    continue
                if r.status != 200:
                    return None
                body = await r.json()
            seen.update(str(e["request_id"]) for e in body["events"])
            if not body["more"] or body["next_cursor"] == since:
                return seen
            since = str(body["next_cursor"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return None
    return None


async def catch_up(
    opts: FleetOptions,
    tokens: Tokens,
    unheard: dict[str, str],
    timeout_s: float = 30.0,
    request_timeout_s: float = 10.0,
) -> dict[str, bool]:
    """For completed requests no phone heard of (request id -> device id), what each device's
    event log says, as an app opening again would sync: request id -> whether its event is
    there. A request whose device's log could not be read is left out (unknown)."""
    deadline = time.monotonic() + timeout_s
    by_device: dict[str, list[str]] = {}
    for rid, device_id in unheard.items():
        by_device.setdefault(device_id, []).append(rid)
    out: dict[str, bool] = {}
    ctx = ssl.create_default_context(cafile=opts.ca_file or None)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=32),
        timeout=aiohttp.ClientTimeout(total=request_timeout_s),
    ) as s:

        async def device(device_id: str, rids: list[str]) -> None:
            token = await tokens.get(s, device_id, deadline)
            events = await _device_events(s, opts.target, token, deadline) if token else None
            if events is not None:
                out.update((rid, rid in events) for rid in rids)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(device(d, r) for d, r in by_device.items()))
    return out


async def read_back_run(
    opts: FleetOptions, fleet_dir: Path, ops: list[Operation]
) -> tuple[dict[str, str | None], dict[str, bool]]:
    """After the run: every acknowledged request's status (`settle`), then the event logs of
    the devices whose completed requests no phone heard of (`catch_up`)."""
    acked = acknowledged(ops)
    tokens = Tokens(opts.target, identities(fleet_dir))
    statuses = await settle(opts, fleet_dir, acked, timeout_s=opts.settle_s, tokens=tokens)
    heard = notified_ids(ops)
    unheard = {
        rid: acked[rid]["device_id"]
        for rid, status in statuses.items()
        if status == "completed" and rid not in heard
    }
    return statuses, await catch_up(opts, tokens, unheard)


def run_worker(opts: FleetOptions, console: Console, out: Path | None = None) -> int:
    """Phones for a master elsewhere until it says the run is over; Locust's exit code. The
    folder keeps only the phones' own state (identities, offline queues): every record goes to
    the master."""
    out = (
        out or Path("reports") / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-load-worker"
    ).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"worker for {opts.master_host}:{opts.master_port}; phones' state in {out}")
    return run_locust(opts, out, console)


def run_fleet(
    opts: FleetOptions,
    console: Console,
    reports: Path = Path("reports"),
    out: Path | None = None,
    log: Path | None = None,
) -> tuple[int, Path, dict[str, Any]]:
    """Returns (exit code, report folder, summary); the folder is `out`, else a new one under
    `reports` that `reports/latest` then points at; `log`: a file for Locust's output (else the
    terminal). Exit code: 0 pass, 1 the run failed or lost or duplicated a request, 2
    inconclusive (acknowledged requests left unknown)."""
    # Absolute: Locust runs from the project root, whatever the caller's directory.
    own_folder = out is None
    out = (out or reports / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-load").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp_versions(out)  # the versions that run, before anything changes
    # An earlier run's finish in the same folder would end this one at its first tick, and its
    # merged ledger would say this one's phones had ended (what `stop_fleet` watches for).
    (out / "fleet" / FINISH_FILE).unlink(missing_ok=True)
    (out / "ledger.jsonl").unlink(missing_ok=True)
    started = time.time()
    code = run_locust(opts, out, console, log)
    ended = time.time()
    fleet_dir = out / "fleet"
    # Every process that ran phones shipped its records to the master, which says in
    # sources.json what arrived from each: an incomplete one would make the reconciliation
    # quietly count less than was done.
    manifest = read_manifest(fleet_dir)
    errors, warnings = problems(manifest)
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for error in errors:
        console.print(f"[red]error:[/red] {error}: the run cannot be reconciled in full")
    if errors:
        code = code or 1
    ops = merge([read_jsonl(p) for p in sorted(fleet_dir.glob("ledger-*.jsonl"))])
    write_jsonl(out / "ledger.jsonl", ops)
    latency = LatencyRecorder()
    for path in fleet_dir.glob("hdr-*.json"):
        latency.add_encoded(json.loads(path.read_text()))
    hdr = latency.summary()
    write_atomic(out / "hdr-percentiles.json", json.dumps(hdr, indent=2))
    statuses, events = asyncio.run(read_back_run(opts, fleet_dir, ops))
    rec = reconcile(ops, statuses, events)
    # No fault events in a plain run: each loss counts from its acknowledgement to the end.
    rec["rpo_s"] = round(rpo_s(rec["lost_acked_walls"], [], ended), 3)
    kinds: dict[str, dict[str, int]] = {}
    for op in ops:
        kinds.setdefault(op.kind, {"ok": 0, "fail": 0, "info": 0})[op.outcome] += 1
    verdict = "fail" if code != 0 or not ops else rec["verdict"]
    summary = {
        # Reports are shared (CI artifacts, mode 0644): the registration secret stays out.
        "options": {
            **opts.__dict__,
            "registration_secret": "***" if opts.registration_secret else "",
        },
        # The SLO gate evaluates Prometheus over exactly this window.
        "window": {"start": started, "end": ended},
        "locust_exit_code": code,
        "interrupted": code == INTERRUPTED,
        "finished_early": finished_early(out, before=started + opts.duration_s),
        "verdict": verdict,
        "operations": kinds,
        "latency": hdr,
        "reconciliation": rec,
        # Who ran phones, and what of theirs arrived (scenarios/shipping.py).
        "fleet": {
            "sources": (manifest or {}).get("sources", {}),
            "errors": errors,
            "warnings": warnings,
        },
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    write_atomic(out / "summary.md", summary_markdown(opts, summary))
    if own_folder:
        point_latest(out)
    return EXIT_CODES[verdict], out, summary


def summary_markdown(opts: FleetOptions, summary: dict[str, Any]) -> str:
    """`summary.md`: the verdict, operations, HDR percentiles and the reconciliation."""
    kinds, hdr, rec = summary["operations"], summary["latency"], summary["reconciliation"]
    lines = [
        f"# Load run: {summary['verdict'].upper()}",
        "",
        f"- target {opts.target}, {opts.users} phones ({opts.mix}), shape {opts.shape}, "
        f"{opts.duration_s:g} s, {opts.workers} worker process(es)",
        "",
    ]
    if early := summary.get("finished_early"):
        lines[-1:-1] = [
            f"- ended {summary['window']['end'] - summary['window']['start']:.0f} s in, before "
            f"its {opts.duration_s:g} s: {early['reason']}"
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
    if any(k.endswith(" (ramp-up)") for k in hdr):
        lines += [
            "",
            "Operations started while the phones were still arriving are measured apart "
            '("(ramp-up)"); the latency objectives read the others, the steady phase.',
        ]
    lines += [
        "",
        f"Reconciliation: {rec['acknowledged']} acknowledged, {rec['lost']} lost "
        f"(RPO {rec['rpo_s']:g} s), {rec['duplicated']} duplicated, {rec['completed']} completed, "
        f"{rec['never_notified']} never notified ({rec['notified_after_run']} notified only "
        f"after the phones stopped), {rec['unknown']} unknown (the read-back got no answer for "
        f"them); {rec['info_submits']} submits with no answer (info).",
    ]
    if rec["unknown"]:
        lines += [
            "",
            f"**Inconclusive**: {rec['unknown']} acknowledged request(s) could not be read back "
            f"within {opts.settle_s:g} s (5xx, timeouts, rate limits): they may or may not be "
            f"lost. First ids: {', '.join(rec['unknown_ids'][:5])}.",
        ]
    return "\n".join(lines) + "\n"


#: The replica counts a load run reports: each HPA's current replicas, as kube-state-metrics has
#: them (the local supervisor exports the same names).
REPLICAS_QUERY = (
    "max by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_current_replicas)"
)


def replica_steps(values: list[float]) -> list[int]:
    """The replica counts in order, each change once: [3, 3, 4, 6, 6, 3] -> [3, 4, 6, 3]."""
    out: list[int] = []
    for v in values:
        if not out or out[-1] != int(v):
            out.append(int(v))
    return out


def add_replicas(out: Path, prometheus_url: str, console: Console) -> dict[str, list[int]]:
    """Each HPA's replica counts over the run (from Prometheus), into `summary.json` and a line
    of `summary.md`: what a ramp did to the topology. Nothing when Prometheus has none."""
    from slo.sources import Prometheus, SourceUnavailable

    summary = json.loads((out / "summary.json").read_text())
    window = summary["window"]
    try:
        series = Prometheus(prometheus_url).timed_by_label(
            REPLICAS_QUERY, "horizontalpodautoscaler", window["start"], window["end"], 2.0
        )
    except SourceUnavailable as exc:
        console.print(f"[yellow]replica counts not read:[/yellow] {exc}")
        return {}
    steps = {name: replica_steps([v for _, v in points]) for name, points in series.items()}
    steps = {name: s for name, s in sorted(steps.items()) if s}
    if not steps:
        return {}
    summary["replicas"] = steps
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    line = "Replicas (each HPA's current count, in order): " + "; ".join(
        f"{name} {' → '.join(map(str, s))}" for name, s in steps.items()
    )
    with open(out / "summary.md", "a") as f:
        f.write(f"\n{line}.\n")
    return steps


def point_latest(folder: Path) -> None:
    """`latest` beside `folder` points at it."""
    latest = folder.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(folder.name)
