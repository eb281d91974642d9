"""Helpers shared by the environment tests: polling with deadlines, never sleeping blindly."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import requests
from rich.console import Console

from cwh.fleet import FleetOptions, request_finish, run_fleet
from cwh.gate import GateOptions, check
from env.local import LocalEnvironment
from env.probes import RedisCredentials
from env.process import wait_until
from experiments.activities.fleet.probes import LedgerTail
from experiments.pg_failover import wait_healthy as wait_healthy_state
from slo.definitions import DEFAULT_DIR as SLO_DIR
from slo.ledger import Operation
from slo.sources import Window

T = TypeVar("T")

__all__ = [
    "fleet",
    "knobs",
    "members",
    "poll",
    "primary_of",
    "query",
    "redis_credentials",
    "redis_options",
    "service_settings",
    "toxic",
    "wait_healthy",
]


def members(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The PostgreSQL members of a status as `cwh env status --json` prints it, by name."""
    return {c["component"]: c for c in status["components"] if c["kind"] == "postgresql"}


def wait_healthy(env: LocalEnvironment, timeout_s: float = 90) -> dict[str, Any]:
    """The harness's wait for full health, its answer as JSON: the environment tests read the
    status as scripts do, through `cwh env status --json`."""
    return dict(wait_healthy_state(env, timeout_s).raw)


def primary_of(status: dict[str, Any]) -> str:
    primary = [name for name, m in members(status).items() if m["role"] == "primary"]
    assert len(primary) == 1, f"expected one primary, got {primary}"
    return primary[0]


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def archived_max(env: LocalEnvironment) -> str:
    """The newest WAL segment in the repository's archive ("" when none)."""
    done = env.pgbackrest("info", "--output=json")
    assert done.returncode == 0, done.stderr
    archives = json.loads(done.stdout)[0].get("archive", [])
    return max((a.get("max") or "" for a in archives), default="")


def switch_wal(url: str) -> str:
    """Close the primary's current segment (it is archived next); its name back."""
    (segment,) = query(url, "SELECT pg_walfile_name(pg_current_wal_lsn())")[0]
    query(url, "SELECT pg_switch_wal()")
    return str(segment)


def full_backups(env: LocalEnvironment) -> list[dict[str, Any]]:
    return [b for b in env.backups() if b["type"] == "full" and not b["error"]]


def redis_options(status: dict[str, Any], user: str = "redis") -> dict[str, Any]:
    """redis-py keyword arguments to reach a node as the user of `status["urls"][user]` (the
    harness's admin, or `redis_app` for the services' user): TLS verified against the CA."""
    url = urlsplit(status["urls"][user])
    return {
        "username": url.username,
        "password": url.password,
        "ssl": True,
        "ssl_ca_certs": status["tls_certificate"],
    }


def redis_credentials(status: dict[str, Any]) -> RedisCredentials:
    """The harness's Redis user, as `env.probes.redis_call` takes it."""
    opts = redis_options(status)
    return RedisCredentials(opts["username"], opts["password"], opts["ssl_ca_certs"])


def poll(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    return wait_until(check, timeout_s, what, interval_s)


def port_of(status: dict[str, Any], name: str) -> int:
    comp = next(c for c in status["components"] if c["component"] == name)
    return int(comp["ports"]["http"])


@contextlib.contextmanager
def knobs(status: dict[str, Any], service: str, **values: Any) -> Iterator[None]:
    """Turn a service's fault knobs for the block; always turn them back."""
    url = f"http://127.0.0.1:{port_of(status, service)}/admin/knobs"
    before = requests.get(url, timeout=5).json()
    resp = requests.post(url, json=values, timeout=5)
    assert resp.status_code == 200, resp.text
    try:
        yield
    finally:
        requests.post(url, json=before, timeout=5)


@contextlib.contextmanager
def toxic(
    status: dict[str, Any], proxy: str, kind: str, stream: str = "downstream", **attributes: Any
) -> Iterator[None]:
    """A toxic on one of the fault proxy's proxies for the block; always removed."""
    url = f"{status['urls']['fault_api']}/proxies/{proxy}/toxics"
    body = {"name": kind, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes}
    resp = requests.post(url, json=body, timeout=5)
    assert resp.status_code == 200, resp.text
    try:
        yield
    finally:
        requests.delete(f"{url}/{kind}", timeout=5)


def fleet(
    status: dict[str, Any], reports: Path, **options: Any
) -> tuple[int, Path, dict[str, Any]]:
    """A bounded fleet run against the environment whose status is given, reported under
    `reports`; `options` are FleetOptions fields (spawn rate 10 unless given)."""
    opts = FleetOptions(
        target=status["urls"]["https"],
        ca_file=status["tls_certificate"],
        **{
            "spawn_rate": 10,
            "registration_secret": status.get("registration_secret") or "",
            **options,
        },
    )
    return run_fleet(opts, Console(quiet=True), reports)


class Background:
    """A call run in a thread: `result()` once the `with` block is left (its exception raised
    there). The block's exit waits for the call, bounded by `join_s`."""

    def __init__(self, call: Callable[[], Any], join_s: float = 300) -> None:
        self.call, self.join_s = call, join_s
        self.got: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, name="test-background")

    def _run(self) -> None:
        try:
            self.got["value"] = self.call()
        except BaseException as exc:  # handed to the test in result()
            self.got["error"] = exc

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=self.join_s)

    def result(self) -> Any:
        assert not self.thread.is_alive(), f"still running after {self.join_s} s"
        if "error" in self.got:
            raise self.got["error"]
        return self.got["value"]


def finish_fleet(
    reports: Path,
    reason: str,
    when: Callable[[list[Operation]], bool] = lambda ops: True,
    timeout_s: float = 120,
) -> Path:
    """End the one fleet running under `reports` before its duration (`request_finish`: its
    phones stop and it is reconciled as a whole run) once its live ledger satisfies `when`:
    a test's fleet runs as long as the test needs it, its duration only a bound. A fleet that
    reached its bound first is left alone (its merged ledger marks the end of its phones): the
    test judges what it ran, as it did before."""
    out = poll(lambda: next(reports.glob("*-load"), None), 30, "the fleet's run folder")
    tail = LedgerTail(out / "fleet")
    ops: list[Operation] = []

    def ended_or_ready() -> str | None:
        if (out / "ledger.jsonl").exists():
            return "ended"
        ops.extend(tail.read())
        return "ready" if when(ops) else None

    if poll(ended_or_ready, timeout_s, f"the fleet's ledger: {reason}", interval_s=0.5) == "ready":
        request_finish(out, reason)
    return out


def served_after(wall: float) -> Callable[[list[Operation]], bool]:
    """`finish_fleet`'s condition: a phone's submit, sent after `wall`, was acknowledged."""
    return lambda ops: any(
        o.kind == "submit" and o.outcome == "ok" and o.invoked_wall > wall for o in ops
    )


def fleet_in_background(status: dict[str, Any], reports: Path, **options: Any) -> Background:
    """`fleet(...)` in a thread, for a test that changes the environment meanwhile."""
    return Background(lambda: fleet(status, reports, **options))


def gate(
    status: dict[str, Any], window: Window, out: Path, *only: str, definitions: Path = SLO_DIR
) -> dict[str, Any]:
    """The gate over `window` against the environment's Prometheus: verdicts by name, and the
    exit code under "exit_code"."""
    console = Console(record=True, width=200)
    code = check(
        GateOptions(
            window=window,
            prometheus_url=status["urls"]["prometheus"],
            out=out,
            only=only,
            definitions=definitions,
        ),
        console,
    )
    path = out / "slo.json"
    assert path.exists(), console.export_text()
    result = json.loads(path.read_text())
    assert result["exit_code"] == code
    return {"exit_code": code, **{v["name"]: v for v in result["verdicts"]}}


def assert_postgres_kill_recovered(result: dict[str, Any]) -> None:
    """What a SIGKILLed primary postmaster (`measure_failover(..., KILL_POSTGRES)`) must show."""
    from env.configs import worst_case_failover_s
    from env.process import pid_alive

    killed = result["killed"]
    # The fault happened: that postmaster is gone, and a promotion moved the timeline on.
    assert not pid_alive(killed["pid"])
    assert result["timeline_after"] > killed["timeline"]
    # Writes stopped for a while (the fault hurt) and came back within the promise. Stopped:
    # a write failed, or waited out the failover unanswered, which `rto_s` counts as downtime
    # (0 when no write after the fault was either: the fault hurt nothing). A quick promotion
    # can hold every write rather than fail one: containers CI once measured 1.04 s, no write
    # failed.
    assert result["rto_s"] > 0, result
    assert result["rto_s"] <= worst_case_failover_s(), result
    rec = result["reconciliation"]
    assert rec["acknowledged"] > 0
    assert rec["lost"] == 0, rec


def service_settings(status: dict[str, Any], role: str, name: str) -> Any:
    """Settings of a service run in the test's process against the environment: its database
    through pgBouncer, Redis as the services' ACL user, the environment's keys (`state_dir`)."""
    from reference_impl.settings import ServiceSettings

    redis_app = urlsplit(status["urls"]["redis_app"])
    return ServiceSettings(
        role=role,
        name=name,
        port=1,  # unused: a test binds an ephemeral port, or none
        state_dir=Path(status["run_dir"]) / "services",
        pg_write_url=status["urls"]["pgbouncer"],
        redis_nodes=",".join(
            f"{u.hostname}:{u.port}" for u in map(urlsplit, status["urls"]["redis_nodes"])
        ),
        redis_user=redis_app.username or "",
        redis_password=redis_app.password or "",
        tls_ca_file=status["tls_certificate"],
    )
