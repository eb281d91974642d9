"""The scheduler on the real environment: every periodic job really succeeds, a failing job is
visible as what it is, no exception ends its loop, and old rows go when their retention says.

Faults are injected from the database side, so they reach the scheduler exactly as a real one
would: a trigger that raises (a job that fails every run), and a trigger that terminates its own
backend (a connection dropped mid-transaction, which pgBouncer reports and asyncpg then raises
as an `InterfaceError` from the transaction's exit). Each trigger counts its firings in a
sequence (`nextval` survives the rollback), so the test knows the fault happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from env.local import LocalEnvironment
from env.process import DeadlineExceeded
from experiments.harness import scrape_sum
from tests.helpers import poll, port_of, query, wait_healthy

pytestmark = pytest.mark.env

#: Each periodic job that commits a run into `periodic_runs`.
JOBS = ("replication_heartbeat", "requeue_expired", "archive_old_requests", "purge_dead_letters")
RETENTION_JOBS = ("purge_events", "purge_run_log")
LEASE_TTL_S = 5.0


def leading(primary: str) -> tuple[str, int]:
    """(holder, token) of the live scheduler lease."""
    rows = poll(
        lambda: query(
            primary,
            "SELECT holder, token FROM leases WHERE name = 'scheduler'"
            " AND expires_at > clock_timestamp()",
        ),
        15,
        "a scheduler holds the lease",
    )
    return rows[0][0], rows[0][1]


@contextlib.contextmanager
def trigger(primary: str, table: str, events: str, body: str) -> Iterator[str]:
    """A statement-level BEFORE trigger on `table` running `body` (PL/pgSQL) after counting the
    firing in a sequence; yields the sequence's name. Always removed."""
    tag = f"cwh_test_{uuid.uuid4().hex[:8]}"
    query(primary, f"CREATE SEQUENCE {tag}_fired")
    query(
        primary,
        f"CREATE FUNCTION {tag}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$"
        f" DECLARE n bigint := nextval('{tag}_fired'); BEGIN {body} RETURN NULL; END $$",
    )
    query(
        primary,
        f"CREATE TRIGGER {tag} BEFORE {events} ON {table}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {tag}()",
    )
    try:
        yield f"{tag}_fired"
    finally:
        query(primary, f"DROP TRIGGER IF EXISTS {tag} ON {table}")
        query(primary, f"DROP FUNCTION IF EXISTS {tag}()")
        query(primary, f"DROP SEQUENCE IF EXISTS {tag}_fired")


def fired(primary: str, sequence: str) -> int:
    (last, called) = query(primary, f"SELECT last_value, is_called FROM {sequence}")[0]
    return int(last) if called else 0


def log_lines(status: dict[str, Any], component: str, since: float) -> list[dict[str, Any]]:
    """The component's JSON log lines written at or after `since` (epoch seconds)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
    path = Path(status["run_dir"]) / "logs" / f"{component}.log"
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("ts", "") >= stamp:
                out.append(record)
    return out


def test_every_periodic_job_commits_a_run(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]

    def missing() -> set[str]:
        ran = {r[0] for r in query(primary, "SELECT DISTINCT job FROM periodic_runs")}
        return set(JOBS) - ran

    try:
        poll(lambda: not missing(), 60, "a committed run of every periodic job")
    except DeadlineExceeded:
        pytest.fail(f"never committed a run: {sorted(missing())}")


def the_leader(env: LocalEnvironment) -> tuple[dict[str, Any], str, str, int, int]:
    """(status, primary URL, leading scheduler, its token, its HTTP port) of a healthy env."""
    status = wait_healthy(env)
    primary = status["urls"]["members"][status["primary"]]
    holder, token = leading(primary)
    return status, primary, holder, token, port_of(status, holder)


def heartbeats_by(primary: str, holder: str, after: float, timeout_s: float, what: str) -> None:
    """Wait for a heartbeat run committed by `holder` after `after` (epoch seconds)."""
    poll(
        lambda: query(
            primary,
            "SELECT 1 FROM periodic_runs WHERE job = 'replication_heartbeat'"
            " AND holder = %s AND started_at > to_timestamp(%s)",
            (holder, after),
        ),
        timeout_s,
        what,
    )


def test_a_failing_job_is_counted_and_logged_by_name_while_the_others_run(
    local_env: LocalEnvironment,
):
    status, primary, holder, _, port = the_leader(local_env)
    errors_before = scrape_sum(port, "cw_scheduler_runs_total", outcome="error")
    started = time.time()
    with trigger(
        primary, "dead_letters", "DELETE", "RAISE EXCEPTION 'cwh test: purge refused';"
    ) as seq:
        poll(lambda: fired(primary, seq) >= 1, 60, "the purge to run into the refusal")
        # Counted as an error of that job, logged with its name and the real error.
        poll(
            lambda: scrape_sum(port, "cw_scheduler_runs_total", outcome="error") > errors_before,
            10,
            "the failed run counted",
        )
        assert (
            scrape_sum(port, "cw_scheduler_runs_total", task="purge_dead_letters", outcome="error")
            >= 1
        )
        lines = poll(
            lambda: [r for r in log_lines(status, holder, started) if "purge refused" in r["msg"]],
            10,
            "the failure in the scheduler's log",
        )
        assert all("purge_dead_letters" in r["msg"] for r in lines), lines
        assert all("database unavailable" not in r["msg"] for r in lines), lines
        # The failure is the job's alone: the lease and the other jobs carry on.
        heartbeats_by(primary, holder, time.time(), 10, "heartbeats after the failure")


def test_a_connection_killed_mid_transaction_does_not_stop_the_scheduler(
    local_env: LocalEnvironment,
):
    _, primary, holder, _, port = the_leader(local_env)
    # The next heartbeat's transaction loses its connection, once.
    with trigger(
        primary,
        "replication_heartbeat",
        "INSERT OR UPDATE",
        "IF n = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;",
    ) as seq:
        poll(lambda: fired(primary, seq) >= 1, 10, "the heartbeat's connection terminated")
        killed_at = time.time()
        ticks = scrape_sum(port, "cw_loop_ticks_total", loop="lease")
        # Longer than the lease: a scheduler whose loop died would have lost it by now.
        heartbeats_by(
            primary, holder, killed_at + LEASE_TTL_S + 1, 20,
            "the same scheduler's heartbeats after the killed connection",
        )  # fmt: skip
    # Its loop goes on. (Not "the token stayed": on a machine this loaded a cycle can overrun
    # the 5 s lease now and then, fault or not, and the lease is taken again with a new token.)
    assert scrape_sum(port, "cw_loop_ticks_total", loop="lease") > ticks + 3
    assert (
        scrape_sum(port, "cw_scheduler_runs_total", task="replication_heartbeat", outcome="error")
        >= 1
    )


def test_old_rows_are_archived_and_purged_and_recent_ones_kept(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]
    device = uuid.uuid4()
    rid = {name: uuid.uuid4() for name in ("old_done", "young_done", "old_queued")}
    ages = {"old_done": "7 months", "young_done": "5 months", "old_queued": "7 months"}
    for name, request_id in rid.items():
        query(
            primary,
            "INSERT INTO requests (device_id, request_id, idempotency_key, body_hash, provider,"
            " document_enc, instruction_enc, status, correlation_id, created_at, updated_at)"
            " VALUES (%s, %s, %s, '\\x00', 'gdrive', '\\x00', '\\x00', %s, 'test',"
            " now() - %s::interval, now() - %s::interval)",
            (device, request_id, name, "queued" if name == "old_queued" else "completed",
             ages[name], ages[name]),
        )  # fmt: skip
    letters = {"15 days": uuid.uuid4(), "13 days": uuid.uuid4()}
    for age, request_id in letters.items():
        query(
            primary,
            "INSERT INTO dead_letters (request_id, device_id, attempts, last_error, dead_at)"
            " VALUES (%s, %s, 5, 'test', now() - %s::interval)",
            (request_id, device, age),
        )
    events = {}
    for age in ("31 days", "29 days"):
        events[age] = query(
            primary,
            "INSERT INTO events (device_id, request_id, type, payload, created_at)"
            " VALUES (%s, %s, 'completed', '{}', now() - %s::interval) RETURNING event_id",
            (device, uuid.uuid4(), age),
        )[0][0]
    runs = {}
    for age in ("8 days", "6 days"):
        runs[age] = query(
            primary,
            "INSERT INTO periodic_runs (job, holder, token, started_at)"
            " VALUES ('test', 'test', 0, now() - %s::interval) RETURNING run_id",
            (age,),
        )[0][0]
    try:

        def gone() -> bool:
            left = query(
                primary,
                "SELECT (SELECT count(*) FROM requests WHERE request_id = %s)"
                " + (SELECT count(*) FROM dead_letters WHERE request_id = %s)"
                " + (SELECT count(*) FROM events WHERE event_id = %s)"
                " + (SELECT count(*) FROM periodic_runs WHERE run_id = %s)",
                (rid["old_done"], letters["15 days"], events["31 days"], runs["8 days"]),
            )
            return left[0][0] == 0

        poll(gone, 60, "old rows archived and purged")
        kept = query(
            primary,
            "SELECT (SELECT count(*) FROM requests WHERE request_id = %s),"
            " (SELECT count(*) FROM requests WHERE request_id = %s),"
            " (SELECT count(*) FROM dead_letters WHERE request_id = %s),"
            " (SELECT count(*) FROM events WHERE event_id = %s),"
            " (SELECT count(*) FROM periodic_runs WHERE run_id = %s)",
            (rid["young_done"], rid["old_queued"], letters["13 days"], events["29 days"],
             runs["6 days"]),
        )  # fmt: skip
        # Rows within their retention, and an unfinished request however old, stay.
        assert kept[0] == (1, 1, 1, 1, 1), dict(
            zip(("request 5 months", "queued 7 months", "dead letter 13 days", "event 29 days",
                 "run 6 days"), kept[0], strict=True)
        )  # fmt: skip
        cold = Path(status["run_dir"]) / "services" / "cold"
        archived = [
            json.loads(line)
            for f in cold.glob("requests-*.jsonl")
            for line in f.read_text().splitlines()
        ]
        assert str(rid["old_done"]) in {a["request_id"] for a in archived}
    finally:
        query(primary, "DELETE FROM requests WHERE device_id = %s", (device,))
        query(primary, "DELETE FROM dead_letters WHERE device_id = %s", (device,))
        query(primary, "DELETE FROM events WHERE device_id = %s", (device,))
        query(primary, "DELETE FROM periodic_runs WHERE job = 'test'")


@contextlib.contextmanager
def scratch_database(status: dict[str, Any]) -> Iterator[str]:
    """A database of its own on the primary (so an in-process scheduler leads there at once,
    beside the environment's two), dropped afterwards; yields its URL."""
    url = urlsplit(status["urls"]["members"][status["primary"]])
    name = f"cwh_test_{uuid.uuid4().hex[:8]}"
    # The path alone: the query holds TLS options whose values are paths too.
    admin = urlunsplit(url._replace(path="/postgres"))
    query(admin, f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(url._replace(path=f"/{name}"))
    finally:
        query(admin, f"DROP DATABASE {name} WITH (FORCE)")


class Escaped(BaseException):
    """What no `except Exception` catches: the loop ends."""


def test_an_unexpected_error_is_survived_and_a_loop_that_ends_fails_liveness_at_once(
    local_env: LocalEnvironment, tmp_path: Path
):
    from aiohttp.test_utils import TestClient, TestServer

    from reference_impl import scheduler
    from reference_impl.settings import ServiceSettings

    status = wait_healthy(local_env)

    async def flow(url: str) -> None:
        settings = ServiceSettings(
            role="scheduler", name="scheduler-test", port=1, state_dir=tmp_path, pg_write_url=url
        )
        app = scheduler.create_app(settings)
        state: scheduler.SchedulerState = app[scheduler.STATE]  # type: ignore[assignment]
        real = state.run_cycle
        faults: list[BaseException] = [RuntimeError("a bug in one cycle")]

        async def cycle() -> str:
            outcome = await real()
            if faults and state.token is not None:
                raise faults.pop(0)
            return outcome

        state.run_cycle = cycle  # type: ignore[method-assign]
        async with TestClient(TestServer(app)) as client:

            async def ticks() -> float:
                text = await (await client.get("/metrics")).text()
                return sum(
                    float(line.split()[-1])
                    for line in text.splitlines()
                    if line.startswith("cw_loop_ticks_total") and 'loop="lease"' in line
                )

            async def metrics() -> str:
                return await (await client.get("/metrics")).text()

            # The bug happens at the end of the first cycle led (each job ticks the loop too,
            # so a tick count alone says nothing of it), then the loop must go on.
            deadline = time.monotonic() + 30
            while 'cw_scheduler_cycle_errors_total{kind="unexpected"} 1.0' not in await metrics():
                assert time.monotonic() < deadline, "the bug never happened"
                await asyncio.sleep(0.2)
            after_bug = await ticks()
            while (await ticks()) < after_bug + 2:  # survived the bug, and went on
                assert time.monotonic() < deadline, "the loop stopped ticking after the error"
                await asyncio.sleep(0.2)
            text = await metrics()
            assert 'cw_scheduler_cycle_errors_total{kind="unexpected"} 1.0' in text
            assert 'cw_scheduler_job_last_run_ok{task="replication_heartbeat"} 1.0' in text
            assert (await client.get("/health/live")).status == 200
            faults.append(Escaped())
            deadline = time.monotonic() + 5
            while (await client.get("/health/live")).status == 200:
                assert time.monotonic() < deadline, "still live with its loop ended"
                await asyncio.sleep(0.1)

    with scratch_database(status) as url:
        asyncio.run(flow(url))
