"""Scheduler: one active instance by leader election, periodic jobs fenced by the lease token.

The lease is a row in PostgreSQL. Taking it over after it expired increments its token; renewing
keeps it. Every periodic job runs in a transaction that first locks the lease row and checks that
it still names this holder, with this token, unexpired: a deposed leader (paused, partitioned,
slow) can never commit a run, and each run is recorded with its token in `periodic_runs`.

Nothing one cycle raises ends the loop: a job's failure is that job's (counted by outcome, logged
with its name and the real error, remembered for the SLOs), and anything else is logged with its
traceback and counted before the next cycle. The leader also measures what the SLOs of retention,
jobs and cache expiry read (`reference_impl.measures`): behaviour, not the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import Counter, Gauge

from reference_impl import backups, measures, observability
from reference_impl.errors import dependency_unavailable, error_middleware
from reference_impl.measures import FINISHED, JobRecord, Sample
from reference_impl.schema import ensure_schema
from reference_impl.settings import ServiceSettings
from reference_impl.stores import create_pool, create_redis

log = logging.getLogger("cw.scheduler")

SETTINGS = web.AppKey("settings", ServiceSettings)
STATE = web.AppKey("state", object)

BACKUP_TIMEOUT_S = 600.0
#: The least time between two attempts at a backup that did not get recorded.
BACKUP_RETRY_S = 60.0

LEASE = "scheduler"
LEASE_TTL_S = 5.0
TICK_S = 1.0
#: A job still running after this is abandoned (its transaction rolls back) and counted as a
#: failure: one stuck statement must not hold the loop, and the lease, for longer.
JOB_TIMEOUT_S = 20.0

# Retention. Intervals go to PostgreSQL as numbers through make_interval(): asyncpg encodes an
# `interval` parameter only from a timedelta, and a string such as '6 months' failed every run.
ARCHIVE_AFTER_MONTHS = 6  # the seed's "requests older than 6 months archived"
ARCHIVE_AFTER_S = 183 * 24 * 3600  # 6 months, to the day
DEAD_LETTER_RETENTION_DAYS = 14  # the seed's queue retention, "14+ days for audit trail"
#: The event log only tells a phone what changed while it was away (the requests themselves stay
#: in the hot table for 6 months and are read by id): kept past the longest offline spell we
#: support, 30 days, twice the 14-day audit retention the seed asks of the queue.
EVENT_RETENTION_DAYS = 30
#: The run log: what the jobs SLOs and the fencing checks read; a week covers the daily backup's
#: seven runs with room.
RUN_LOG_RETENTION_DAYS = 7
#: Each retention job runs this often; its statements use indexes, so this is cheap, and the
#: oldest row outlives its retention by at most this long.
RETENTION_EVERY_S = 15.0
ARCHIVE_BATCH = 1000
PURGE_BATCH = 10_000
#: How often the leader samples what the SLOs read, and how many keys of each prefix.
SAMPLE_EVERY_S = 5.0
TTL_SAMPLE_KEYS = 500
DAY_S = 24 * 3600


class Fenced(Exception):
    """The lease no longer names us with our token: the run must not commit."""


@dataclass
class Periodic:
    name: str
    every_s: float
    run: Callable[[asyncpg.Connection], Awaitable[dict[str, Any]]]
    last_s: float = 0.0  # monotonic start of the last run; 0: due at once
    record: JobRecord = field(init=False)

    def __post_init__(self) -> None:
        self.record = JobRecord(self.name, self.every_s)


def _purge(
    table: str, key: str, column: str, days: int
) -> Callable[[asyncpg.Connection], Awaitable[dict[str, Any]]]:
    """A job deleting the rows of `table` whose `column` is older than `days`, oldest first,
    at most PURGE_BATCH per run (a backlog drains over several runs)."""

    async def run(conn: asyncpg.Connection) -> dict[str, Any]:
        purged = await conn.fetchval(
            f"WITH gone AS (DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table}"
            f" WHERE {column} < now() - make_interval(days => $1) ORDER BY {column} LIMIT $2)"
            " RETURNING 1) SELECT count(*) FROM gone",
            days,
            PURGE_BATCH,
        )
        return {"purged": purged}

    return run


class SchedulerState:
    def __init__(self, app: web.Application, settings: ServiceSettings) -> None:
        self.app, self.settings = app, settings
        self.token: int | None = None
        self.pool: asyncpg.Pool
        self.redis: Any = None
        self.stopping = asyncio.Event()
        registry = app[observability.METRICS_KEY].registry
        self.leader = Gauge("cw_scheduler_leader", "1 while this instance leads", registry=registry)
        self.token_gauge = Gauge(
            "cw_scheduler_lease_token", "Fencing token held", registry=registry
        )
        # `task`, not `job`: Prometheus gives `job` to the scrape job.
        self.runs = Counter(
            "cw_scheduler_runs_total", "Periodic runs", ["task", "outcome"], registry=registry
        )
        self.cycle_errors = Counter(
            "cw_scheduler_cycle_errors_total",
            "Cycles that failed outside any job",
            ["kind"],
            registry=registry,
        )
        self.backup: asyncio.Task[dict[str, Any]] | None = None
        self.backup_token = 0
        self.backup_detail: dict[str, Any] = {}
        self.last_backup_s = -float("inf")
        self.jobs = [
            Periodic("replication_heartbeat", 1.0, self.heartbeat),
            Periodic("requeue_expired", 5.0, self.requeue_expired),
            Periodic("archive_old_requests", RETENTION_EVERY_S, self.archive_old_requests),
            Periodic(
                "purge_dead_letters",
                RETENTION_EVERY_S,
                _purge("dead_letters", "request_id", "dead_at", DEAD_LETTER_RETENTION_DAYS),
            ),
            Periodic(
                "purge_events",
                RETENTION_EVERY_S,
                _purge("events", "event_id", "created_at", EVENT_RETENTION_DAYS),
            ),
            Periodic(
                "purge_run_log",
                RETENTION_EVERY_S,
                _purge("periodic_runs", "run_id", "started_at", RUN_LOG_RETENTION_DAYS),
            ),
        ]
        self.backup_job = Periodic("backup", settings.backup_interval_s, self.backup_taken)
        self.sample: Sample | None = None
        registry.register(
            measures.Exporter(
                leading=lambda: self.token is not None,
                jobs=lambda: [j.record for j in self.all_jobs],
                sample=lambda: self.sample,
            )
        )

    @property
    def all_jobs(self) -> list[Periodic]:
        return [*self.jobs, self.backup_job] if self.settings.backup_config else self.jobs

    async def try_lead(self) -> int | None:
        """Take or renew the lease; the token when we hold it, None otherwise."""
        token: int | None = await self.pool.fetchval(
            "INSERT INTO leases (name, holder, token, expires_at)"
            " VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3))"
            " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder,"
            "  token = CASE WHEN leases.holder = EXCLUDED.holder"
            "               AND leases.expires_at > clock_timestamp()"
            "          THEN leases.token ELSE leases.token + 1 END,"
            "  expires_at = EXCLUDED.expires_at"
            " WHERE leases.holder = EXCLUDED.holder OR leases.expires_at <= clock_timestamp()"
            " RETURNING token",
            LEASE,
            self.settings.name,
            LEASE_TTL_S,
        )
        return token

    async def fenced(self, job: Periodic, token: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            held = await conn.fetchval(
                "SELECT token FROM leases WHERE name = $1 AND holder = $2"
                " AND expires_at > clock_timestamp() FOR UPDATE",
                LEASE,
                self.settings.name,
            )
            if held != token:
                raise Fenced(f"lease token is {held}, we hold {token}")
            detail = await job.run(conn)
            await conn.execute(
                "INSERT INTO periodic_runs (job, holder, token, detail) VALUES ($1, $2, $3, $4)",
                job.name,
                self.settings.name,
                token,
                json.dumps(detail),
            )

    async def run_job(self, job: Periodic, token: int) -> str:
        """Run `job` fenced, within JOB_TIMEOUT_S; returns its outcome (ok, error, fenced),
        counted and remembered. Whatever the job raises is the job's failure, never the loop's."""
        try:
            await asyncio.wait_for(self.fenced(job, token), JOB_TIMEOUT_S)
            outcome = "ok"
        except Fenced as exc:
            log.warning("%s not run: %s", job.name, exc)
            outcome = "fenced"
        except Exception as exc:
            # A database outage or failover is one line; anything else, with its traceback.
            log.error("%s failed: %r", job.name, exc, exc_info=not dependency_unavailable(exc))
            outcome = "error"
        self.runs.labels(job.name, outcome).inc()
        if outcome != "fenced":
            job.record.ran(outcome == "ok", time.time())
        return outcome

    # ---- the jobs (each inside the fenced transaction) -------------------------------------

    async def heartbeat(self, conn: asyncpg.Connection) -> dict[str, Any]:
        """The replication heartbeat: replicas compare it with their clock (lag as apps see it)."""
        beat = await conn.fetchval(
            "INSERT INTO replication_heartbeat (id, beat, written_at)"
            " VALUES (1, 1, clock_timestamp()) ON CONFLICT (id) DO UPDATE"
            " SET beat = replication_heartbeat.beat + 1, written_at = clock_timestamp()"
            " RETURNING beat"
        )
        return {"beat": beat}

    async def requeue_expired(self, conn: asyncpg.Connection) -> dict[str, Any]:
        """Release claims whose visibility expired (their worker died): claimable again."""
        released = await conn.fetch(
            "UPDATE jobs SET claimed_by = NULL, last_error = 'visibility timeout expired'"
            " WHERE claimed_by IS NOT NULL AND visible_at <= now() RETURNING job_id"
        )
        return {"released": len(released)}

    async def archive_old_requests(self, conn: asyncpg.Connection) -> dict[str, Any]:
        """Finished requests older than 6 months go to cold storage (JSON lines), then away,
        oldest first. The file is written before the rows are deleted in the same transaction:
        a failed run leaves them in the table (a repeated line in cold storage at worst)."""
        rows = await conn.fetch(
            "SELECT device_id, request_id, provider, status, created_at, updated_at"
            " FROM requests WHERE created_at < now() - make_interval(months => $1)"
            " AND status = ANY($2::text[]) ORDER BY created_at LIMIT $3",
            ARCHIVE_AFTER_MONTHS,
            list(FINISHED),
            ARCHIVE_BATCH,
        )
        if not rows:
            return {"archived": 0}
        cold = self.settings.state_dir / "cold"
        cold.mkdir(parents=True, exist_ok=True)
        path = cold / f"requests-{time.strftime('%Y%m%d', time.gmtime())}.jsonl"
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps({k: str(v) for k, v in dict(r).items()}) + "\n")
        await conn.execute(
            "DELETE FROM requests WHERE (device_id, request_id) IN"
            " (SELECT * FROM unnest($1::uuid[], $2::uuid[]))",
            [r["device_id"] for r in rows],
            [r["request_id"] for r in rows],
        )
        return {"archived": len(rows), "file": str(path)}

    async def backup_taken(self, _: asyncpg.Connection) -> dict[str, Any]:
        """The backup's run: taken outside the transaction (it takes seconds), recorded in it."""
        return self.backup_detail

    async def take_backup(self) -> dict[str, Any]:
        """A pgBackRest backup on the repository host: full when the newest full one is
        `backup_full_every_s` old (or there is none), else differential. pgBackRest then expires
        what the retention lets go (`expire-auto`). Runs outside any transaction."""
        before = await backups.info(self.settings)
        if before is None:
            raise RuntimeError("pgbackrest info failed: the repository cannot be read")
        kind = backups.type_due(before, self.settings.backup_full_every_s)
        code, out = await backups.run(
            self.settings, "backup", f"--type={kind}", timeout_s=BACKUP_TIMEOUT_S
        )
        if code == backups.LOCK_HELD:
            raise backups.Busy(out.strip()[-300:])
        if code != 0:
            raise RuntimeError(f"pgbackrest backup failed ({code}): {out.strip()[-500:]}")
        after = await backups.info(self.settings)
        return {
            "type": kind,
            "kept": after.kept if after else None,
            "wal_max": after.wal_max if after else "",
        }

    async def tend_backup(self, token: int | None) -> None:
        """Record a finished backup, fenced by the token it was started under (also after
        we lost the lease: its outcome is never left unread); start one when due and leading."""
        if self.backup is not None and self.backup.done():
            task, self.backup = self.backup, None
            try:
                self.backup_detail = task.result()
            except backups.Busy as exc:
                # Another backup holds the stanza's lock (`cwh env backup`, or one a killed
                # leader started): not a failure of ours; tried again after BACKUP_RETRY_S.
                log.info("backup skipped: %s", exc)
            except Exception as exc:
                self.runs.labels("backup", "error").inc()
                self.backup_job.record.ran(False, time.time())
                log.error("backup failed: %s", exc)
            else:
                if await self.run_job(self.backup_job, self.backup_token) == "ok":
                    detail = self.backup_detail
                    log.info("%s backup taken (%s kept)", detail["type"], detail["kept"])
        # Due from the last *recorded* backup (the run log, whoever led), not from our last
        # start: a backup fenced at its recording (the lease lapsed meanwhile) or failed is
        # taken again within BACKUP_RETRY_S, not one interval later.
        last_ok = self.backup_job.record.last_success_at
        due = (
            last_ok is None or time.time() - last_ok >= self.settings.backup_interval_s
        ) and time.monotonic() - self.last_backup_s >= BACKUP_RETRY_S
        if token is not None and self.backup is None and due and self.settings.backup_config:
            self.last_backup_s = time.monotonic()
            self.backup_token = token
            self.backup = asyncio.create_task(self.take_backup())

    # ---- the loop --------------------------------------------------------------------------

    async def run_cycle(self) -> str:
        """Renew or take the lease, then run the periodic jobs that are due; say what happened."""
        token = await self.try_lead()
        if token != self.token:
            log.info("lease: %s", f"leading with token {token}" if token else "following")
            if token is not None:
                await self.start_term()
        self.token = token
        self.leader.set(1 if token else 0)
        self.token_gauge.set(token or 0)
        if token is None:
            self.sample = None
            await self.tend_backup(None)
            return "follower"
        now = time.monotonic()
        ran: list[str] = []
        failed: list[str] = []
        for job in self.jobs:
            if now - job.last_s < job.every_s:
                continue
            job.last_s = now
            outcome = await self.run_job(job, token)
            # A job that ended (well or not) is progress: six jobs each waiting out their
            # database deadlines in one cycle must not read as a wedged loop to liveness.
            observability.tick(self.app, "lease")
            if outcome == "fenced":
                self.lose_lease()
                return "deposed"
            (ran if outcome == "ok" else failed).append(job.name)
        await self.tend_backup(token)
        return "leader" + "".join(
            f": {word} {', '.join(names)}" for word, names in (("ran", ran), ("failed", failed))
            if names
        )  # fmt: skip

    async def start_term(self) -> None:
        """Newly leading: every job is due at once, and what is known of each job restarts from
        the run log (the last success of whoever led before us)."""
        succeeded = await measures.last_successes(self.pool, [j.name for j in self.all_jobs])
        for job in self.all_jobs:
            job.last_s = 0.0
            job.record.restart(succeeded.get(job.name))

    def lose_lease(self) -> None:
        self.token = None
        self.sample = None
        self.leader.set(0)

    async def loop(self) -> None:
        observability.tick(self.app, "lease")  # a first cycle that never ends is not live
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await self.run_cycle()
            except Exception as exc:
                # This cycle is lost, the loop is not: an outage in one line, anything else (a
                # bug, a failure nobody foresaw) with its traceback.
                if dependency_unavailable(exc):
                    log.warning("database unavailable: %r", exc)
                    self.cycle_errors.labels("database").inc()
                else:
                    log.exception("scheduler cycle failed")
                    self.cycle_errors.labels("unexpected").inc()
                self.lose_lease()
            observability.tick(self.app, "lease")
            elapsed = time.monotonic() - started
            if elapsed > TICK_S:
                log.warning("cycle overran: %.2f s", elapsed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), max(0.0, TICK_S - elapsed))

    # ---- what the SLOs read ----------------------------------------------------------------

    async def take_sample(self) -> Sample:
        """Measure the rows, the backups and the Redis keys; a part that fails is left out."""
        oldest = repo = None
        ttls: dict[str, measures.KeyTtls] = {}
        try:
            oldest = await measures.oldest_ages(self.pool)
        except Exception as exc:
            log.warning(
                "oldest rows not measured: %r", exc, exc_info=not dependency_unavailable(exc)
            )
        if self.settings.backup_config:
            try:
                repo = await backups.info(self.settings, timeout_s=SAMPLE_EVERY_S)
            except Exception as exc:
                log.warning("backups not measured: %r", exc)
        if self.redis is not None:
            for prefix in ("req", "resp"):
                try:
                    async with asyncio.timeout(SAMPLE_EVERY_S):
                        ttls[prefix] = await measures.key_ttls(self.redis, prefix, TTL_SAMPLE_KEYS)
                except Exception as exc:  # redis-py's cluster errors are not all RedisError
                    log.warning("TTLs of %s:* not measured: %r", prefix, exc)
        return Sample(time.monotonic(), oldest, repo, ttls)

    async def measure_loop(self) -> None:
        """While leading, sample what the SLOs read every SAMPLE_EVERY_S."""
        observability.tick(self.app, "measure")
        while not self.stopping.is_set():
            try:
                if self.token is not None:
                    sample = await asyncio.wait_for(self.take_sample(), 4 * SAMPLE_EVERY_S)
                    # Leadership may have gone while we measured: a follower exports nothing.
                    self.sample = sample if self.token is not None else None
            except Exception:
                log.exception("measurement failed")
            observability.tick(self.app, "measure")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), SAMPLE_EVERY_S)


def _supervise(app: web.Application, task: asyncio.Task[None], loop: str) -> None:
    """A loop survives every Exception of a cycle; should it end anyway (a BaseException), the
    end is logged with its traceback at once and liveness fails at once, so the supervisor
    restarts the process instead of keeping a healthy-looking zombie."""

    def ended(t: asyncio.Task[None]) -> None:
        exc = None if t.cancelled() else t.exception()
        if exc is None:  # stopped, or cancelled at shutdown
            return
        log.critical("%s loop ended: %r", loop, exc, exc_info=exc)
        stale = time.monotonic() - app[SETTINGS].liveness_stale_s - 1
        app[observability.LAST_TICK_KEY][loop] = stale  # as if it had not ticked for too long

    task.add_done_callback(ended)


async def _run(app: web.Application) -> AsyncIterator[None]:
    state: SchedulerState = app[STATE]  # type: ignore[assignment]
    settings = app[SETTINGS]
    state.pool = await create_pool(settings.pg_write_url, max_size=4, ca_file=settings.tls_ca_file)
    await ensure_schema(state.pool)
    if settings.redis_nodes:
        state.redis = create_redis(settings)

    async def pg() -> bool:
        return bool(await state.pool.fetchval("SELECT 1", timeout=2) == 1)

    app[observability.READY_CHECKS_KEY]["postgres"] = pg
    tasks = [asyncio.create_task(state.loop()), asyncio.create_task(state.measure_loop())]
    for task, name in zip(tasks, ("lease", "measure"), strict=True):
        _supervise(app, task, name)
    yield
    state.stopping.set()
    await asyncio.wait(tasks, timeout=5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if state.backup is not None:
        state.backup.cancel()
        await asyncio.gather(state.backup, return_exceptions=True)
    if state.token is not None:
        # Hand over at once rather than after the lease expires.
        with contextlib.suppress(Exception):  # best effort: the lease expires anyway
            await state.pool.execute(
                "UPDATE leases SET expires_at = clock_timestamp() WHERE name = $1"
                " AND holder = $2 AND token = $3",
                LEASE,
                settings.name,
                state.token,
            )
    if state.redis is not None:
        with contextlib.suppress(Exception):
            await state.redis.aclose()
    await state.pool.close()


def create_app(settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    metrics = observability.install(app, settings)
    # Informational only: the SLOs read what the leader measures (cw_oldest_row_age_seconds...).
    metrics.declare("dead_letter_retention", DEAD_LETTER_RETENTION_DAYS * DAY_S)
    metrics.declare("archive_after", ARCHIVE_AFTER_S)
    metrics.declare("event_retention", EVENT_RETENTION_DAYS * DAY_S)
    metrics.declare("run_log_retention", RUN_LOG_RETENTION_DAYS * DAY_S)
    app[STATE] = SchedulerState(app, settings)
    app.cleanup_ctx.append(_run)
    return app
