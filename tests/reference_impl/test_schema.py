"""The schema's DDL runs once per change, never beside running services for nothing; and the
worker's one-statement completion keeps its fence.

Both run in the test's process against the environment's database (through pgBouncer, as the
services reach it) while the environment's own services keep running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from reference_impl import schema, worker
from reference_impl.planted import PLANTED
from reference_impl.stores import create_pool, create_redis
from tests.helpers import redis_options, service_settings

pytestmark = pytest.mark.env


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_current_schema_is_left_alone_even_when_its_tables_are_locked(
    status: dict[str, Any],
) -> None:
    """`ALTER TABLE events` took `events`'s strongest lock at every service start: a service
    starting beside busy workers waited for (or deadlocked with) them. Now a service whose
    schema is current reads one row and goes on, whoever holds what."""
    write = status["urls"]["write"]
    locked, release = threading.Event(), threading.Event()

    def hold_events() -> None:
        with psycopg.connect(write, connect_timeout=5) as conn:
            conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_events)
    holder.start()
    try:
        assert locked.wait(10), "the lock was never taken"

        async def flow() -> tuple[bool, bool]:
            pool = await create_pool(status["urls"]["pgbouncer"], ca_file=status["tls_certificate"])
            try:
                # Far within the 30 s the lock is held: the old DDL would wait all of it.
                ran = await asyncio.wait_for(schema.ensure_schema(pool), 10)
                async with pool.acquire() as conn:
                    return ran, await schema.is_applied(conn)
            finally:
                await pool.close()

        ran, applied = run(flow())
        assert holder.is_alive(), "the lock was released before the schema check returned"
    finally:
        release.set()
        holder.join(30)
    assert ran is False
    assert applied is True


def test_a_changed_schema_is_applied_once_by_services_starting_together(
    status: dict[str, Any],
) -> None:
    """A database that does not record this schema (an older release's) gets the DDL from
    exactly one of two services starting at once, beside the environment's running services,
    and records it. Both are held at the advisory lock until both wait there, so both have
    passed the first look: the second look, under the lock, is what keeps the second from
    running the DDL again."""
    write = status["urls"]["write"]
    with psycopg.connect(write, autocommit=True, connect_timeout=5) as conn:
        conn.execute("DELETE FROM schema_applied WHERE digest = %s", (schema.DIGEST,))

    def waiting_at_the_lock(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = %s",
            (schema.LOCK_ID & 0xFFFF_FFFF,),
        ).fetchone()
        return int(row[0]) if row else 0

    async def flow(gate: psycopg.Connection[Any]) -> list[bool]:
        pools = [
            await create_pool(status["urls"]["pgbouncer"], ca_file=status["tls_certificate"])
            for _ in range(2)
        ]
        try:
            starts = [asyncio.create_task(schema.ensure_schema(p)) for p in pools]
            deadline = time.monotonic() + 20
            while waiting_at_the_lock(gate) < 2:
                assert time.monotonic() < deadline, "the two never both waited at the lock"
                assert not any(t.done() for t in starts), [t.result() for t in starts if t.done()]
                await asyncio.sleep(0.05)
            gate.execute("SELECT pg_advisory_unlock(%s)", (schema.LOCK_ID,))
            return list(await asyncio.wait_for(asyncio.gather(*starts), 60))
        finally:
            for pool in pools:
                await pool.close()

    try:
        with psycopg.connect(write, autocommit=True, connect_timeout=5) as gate:
            gate.execute("SELECT pg_advisory_lock(%s)", (schema.LOCK_ID,))
            ran = run(flow(gate))
        assert sorted(ran) == [False, True]
        with psycopg.connect(write, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM schema_applied WHERE digest = %s", (schema.DIGEST,)
            ).fetchone()
        assert row == (1,)
    finally:  # whatever failed above, the environment keeps a current schema
        run(_ensure(status))


def test_a_relation_dropped_by_hand_is_made_again_at_the_next_start(
    status: dict[str, Any],
) -> None:
    """The recorded digest is not trusted over the catalog: with an index of the schema
    dropped, the next service to start runs the DDL (it makes the index again) and the one
    after it finds everything there and runs nothing."""
    write = status["urls"]["write"]
    index = "periodic_runs_job"
    assert index in schema.RELATIONS

    def exists() -> bool:
        with psycopg.connect(write, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (index,)).fetchone()
        return bool(row and row[0])

    async def two_starts() -> list[bool]:
        pool = await create_pool(status["urls"]["pgbouncer"], ca_file=status["tls_certificate"])
        try:
            return [await schema.ensure_schema(pool), await schema.ensure_schema(pool)]
        finally:
            await pool.close()

    try:
        with psycopg.connect(write, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP INDEX {index}")
        assert not exists()
        assert run(two_starts()) == [True, False]
        assert exists()
    finally:  # whatever failed above, the environment keeps a whole schema
        run(_ensure(status))


async def _ensure(status: dict[str, Any]) -> None:
    pool = await create_pool(status["urls"]["pgbouncer"], ca_file=status["tls_certificate"])
    try:
        await schema.ensure_schema(pool)
    finally:
        await pool.close()


@pytest.fixture
def claimed_job(status: dict[str, Any]) -> Any:
    """A request and its job, claimed by "worker-test" (attempt 1) and out of the running
    workers' sight for an hour, as a claim leaves it; removed afterwards."""
    device, request = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(status["urls"]["write"], autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            "INSERT INTO requests (device_id, request_id, idempotency_key, body_hash, provider,"
            " document_enc, instruction_enc, status, correlation_id)"
            " VALUES (%s, %s, 'k', '\\x00', 'gdrive', '\\x00', '\\x00', 'processing', 'c')",
            (device, request),
        )
        job_id = conn.execute(
            "INSERT INTO jobs (device_id, request_id, correlation_id, attempts, max_attempts,"
            " visible_at, claimed_by, claimed_at)"
            " VALUES (%s, %s, 'c', 1, 5, now() + interval '1 hour', 'worker-test', now())"
            " RETURNING job_id",
            (device, request),
        ).fetchone()[0]
    yield worker.Job(job_id, device, request, "c", attempts=1, max_attempts=5)
    with psycopg.connect(status["urls"]["write"], autocommit=True, connect_timeout=5) as conn:
        conn.execute("DELETE FROM jobs WHERE job_id = %s", (job_id,))
        conn.execute("DELETE FROM events WHERE request_id = %s", (request,))
        conn.execute("DELETE FROM requests WHERE device_id = %s", (device,))


async def job_state(pool: Any, job: worker.Job) -> dict[str, Any]:
    """What the database holds for `job`: its request's status, whether it has no response,
    its events, and whether the job is still queued (1) or gone (0)."""
    row = await pool.fetchrow(
        "SELECT r.status, r.response_enc IS NULL AS empty,"
        " (SELECT count(*) FROM events e WHERE e.request_id = r.request_id) AS events,"
        " (SELECT count(*) FROM jobs j WHERE j.job_id = $3) AS jobs"
        " FROM requests r WHERE r.device_id = $1 AND r.request_id = $2",
        job.device_id,
        job.request_id,
        job.job_id,
    )
    return dict(row)


def swallowing_worker(status: dict[str, Any]) -> tuple[worker.WorkerState, Any]:
    """A worker "worker-test" (not started: the test gives it its pool and Redis) with one
    `swallow_notifications` planted fault armed; its state and its planted faults."""
    app = worker.create_app(service_settings(status, "worker", "worker-test"))
    state: worker.WorkerState = app[worker.STATE]  # type: ignore[assignment]
    planted = app[PLANTED]
    planted.enabled = True
    planted.update({"swallow_notifications": 1})
    return state, planted


def test_a_completion_is_fenced_and_all_or_nothing(
    status: dict[str, Any], claimed_job: worker.Job
) -> None:
    """A completion carrying a stale claim (another attempt took the job over) changes
    nothing: no response, no event, the job still queued, and a planted fault it took is
    handed back. The claim's own completion does all three in its one statement."""
    job = claimed_job
    state, planted = swallowing_worker(status)

    async def flow() -> tuple[Any, Any, Any]:
        state.pool = await create_pool(
            status["urls"]["pgbouncer"], ca_file=status["tls_certificate"]
        )
        state.redis = create_redis(state.settings)
        try:
            stale = dataclasses.replace(job, attempts=job.attempts + 1)
            fenced = await state.complete(stale, "too late")
            seen = await job_state(state.pool, job)
            assert planted.armed["swallow_notifications"] == 1  # armed again
            planted.update({"disarm": True})  # the real completion publishes its event
            done = await state.complete(job, "the answer")
            return fenced, seen, done
        finally:
            await state.redis.aclose()
            await state.pool.close()

    fenced, seen, done = run(flow())
    assert fenced is None
    assert seen == {"status": "processing", "empty": True, "events": 0, "jobs": 1}
    assert planted.planted["swallow_notifications"] == []  # given back, not counted
    assert done is not None
    assert done["type"] == "completed", done
    assert done["request_id"] == str(job.request_id)
    with psycopg.connect(status["urls"]["write"], autocommit=True, connect_timeout=5) as conn:
        events = conn.execute(
            "SELECT event_id, payload FROM events WHERE request_id = %s", (job.request_id,)
        ).fetchall()
        request = conn.execute(
            "SELECT status, response_enc IS NOT NULL FROM requests WHERE request_id = %s",
            (job.request_id,),
        ).fetchone()
        jobs = conn.execute("SELECT count(*) FROM jobs WHERE job_id = %s", (job.job_id,))
        assert jobs.fetchone() == (0,)
    assert events == [(done["event_id"], {"status": "completed"})], events
    assert request == ("completed", True)
    node = urlsplit(status["urls"]["redis_nodes"][0])
    admin = redis.RedisCluster(host=node.hostname, port=node.port, **redis_options(status))
    try:  # the completion cached its response (sealed); the test takes it away again
        assert admin.delete(f"resp:{job.request_id}") == 1
    finally:
        admin.close()


class LostReply:
    """The environment's pool, whose `fetchrow` (the completion's statement) loses its reply:
    before the statement was sent (`commits_after_s` None), or while it is still committing on
    the server: it runs in a transaction of its own connection, which commits `commits_after_s`
    after the reply was lost (a client gone while its commit waits, for the standby say)."""

    def __init__(self, pool: Any, commits_after_s: float | None = None) -> None:
        self.pool, self.commits_after_s = pool, commits_after_s
        self.committed: asyncio.Task[None] | None = None

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        if self.commits_after_s is not None:
            conn = await self.pool.acquire()
            tx = conn.transaction()
            await tx.start()
            await conn.fetchrow(*args, **kwargs)

            async def commit_later(delay_s: float) -> None:
                try:
                    await asyncio.sleep(delay_s)  # the window the check must wait through
                    await tx.commit()
                finally:
                    await self.pool.release(conn)

            self.committed = asyncio.create_task(commit_later(self.commits_after_s))
        raise ConnectionResetError("the connection was lost before the reply")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


def test_a_swallowed_event_stays_on_record_when_the_reply_to_its_commit_is_lost(
    status: dict[str, Any], claimed_job: worker.Job
) -> None:
    """The planted record is exact whichever way a completion's statement fails: one that
    never ran gives its swallow back (armed again, not on record); one that lost its reply while
    still committing (its client gone while the commit waited) keeps it on record once the
    commit lands, since the phone never hears of that request; and a late attempt whose
    statement failed after another attempt had completed the job without an event is not taken
    for that completion."""
    job = claimed_job
    retry = dataclasses.replace(job, attempts=job.attempts + 1)
    state, planted = swallowing_worker(status)

    def record() -> tuple[list[str], int]:
        return list(planted.planted["swallow_notifications"]), planted.armed[
            "swallow_notifications"
        ]

    async def flow() -> list[Any]:
        pool = await create_pool(status["urls"]["pgbouncer"], ca_file=status["tls_certificate"])
        state.redis = create_redis(state.settings)
        seen: list[Any] = []
        try:
            state.pool = LostReply(pool)
            with pytest.raises(ConnectionResetError):
                await state.complete(job, "never sent")
            seen.append(record())
            # The claim expired and a second attempt took the job over, as a re-claim does.
            await pool.execute(
                "UPDATE jobs SET attempts = $2 WHERE job_id = $1", job.job_id, retry.attempts
            )
            # Its statement loses its reply while still committing: the check must wait for
            # the commit (a read of the job at once would find it queued, and hand back).
            state.pool = lost = LostReply(pool, commits_after_s=1.0)
            with pytest.raises(ConnectionResetError):
                await state.complete(retry, "the answer")
            assert lost.committed is not None
            await lost.committed  # the record below shows the check waited for it
            seen += [record(), await job_state(pool, job)]
            # The first attempt, late, with a swallow armed again: its statement fails too.
            planted.update({"swallow_notifications": 1})
            state.pool = LostReply(pool)
            with pytest.raises(ConnectionResetError):
                await state.complete(job, "too late")
            seen.append(record())
            return seen
        finally:
            await state.redis.aclose()
            await pool.close()

    never_ran, kept, db, late = run(flow())
    assert never_ran == ([], 1)  # handed back: armed again, not on record
    # The retry committed: the request completed with no event, and the record holds its id.
    assert db == {"status": "completed", "empty": False, "events": 0, "jobs": 0}
    assert kept == ([str(job.request_id)], 0)
    # The late attempt's failure is not that completion: handed back, the id on record once.
    assert late == ([str(job.request_id)], 1)
