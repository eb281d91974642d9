"""Scheduler: one active instance by leader election, periodic jobs fenced by the lease token.

The lease is a row in PostgreSQL. Taking it over after it expired increments its token; renewing
keeps it. Every periodic job runs in a transaction that first locks the lease row and checks that
it still names this holder, with this token, unexpired: a deposed leader (paused, partitioned,
slow) can never commit a run, and each run is recorded with its token in `periodic_runs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import Counter, Gauge

from reference_impl import observability
from reference_impl.errors import error_middleware
from reference_impl.schema import ensure_schema
from reference_impl.settings import ServiceSettings
from reference_impl.stores import create_pool

log = logging.getLogger("cw.scheduler")

SETTINGS = web.AppKey("settings", ServiceSettings)
STATE = web.AppKey("state", object)

BACKUP_RETENTION_S = 7 * 24 * 3600  # the seed's daily backups, kept 7 days
BACKUP_TIMEOUT_S = 600.0

LEASE = "scheduler"
LEASE_TTL_S = 5.0
TICK_S = 1.0
ARCHIVE_AFTER = "6 months"
ARCHIVE_AFTER_S = 183 * 24 * 3600  # what the gate is told: 6 months, to the day
DEAD_LETTER_RETENTION = "14 days"
DEAD_LETTER_RETENTION_S = 14 * 24 * 3600


class Fenced(Exception):
    """The lease no longer names us with our token: the run must not commit."""


@dataclass
class Periodic:
    name: str
    every_s: float
    run: Callable[[asyncpg.Connection], Awaitable[dict[str, Any]]]
    last_s: float = 0.0


def _recorded(detail: dict[str, Any]) -> Callable[[asyncpg.Connection], Awaitable[dict[str, Any]]]:
    """A job body that only records what was done outside the transaction."""

    async def run(_: asyncpg.Connection) -> dict[str, Any]:
        return detail

    return run


class SchedulerState:
    def __init__(self, app: web.Application, settings: ServiceSettings) -> None:
        self.app, self.settings = app, settings
        self.token: int | None = None
        self.beat = 0
        self.pool: asyncpg.Pool
        self.stopping = asyncio.Event()
        registry = app[observability.METRICS_KEY].registry
        self.leader = Gauge("cw_scheduler_leader", "1 while this instance leads", registry=registry)
        self.token_gauge = Gauge(
            "cw_scheduler_lease_token", "Fencing token held", registry=registry
        )
        self.runs = Counter(
            "cw_scheduler_runs_total", "Periodic runs", ["job", "outcome"], registry=registry
        )
        self.backup: asyncio.Task[dict[str, Any]] | None = None
        self.backup_token = 0
        self.last_backup_s = -float("inf")
        self.jobs = [
            Periodic("replication_heartbeat", 1.0, self.heartbeat),
            Periodic("requeue_expired", 5.0, self.requeue_expired),
            Periodic("archive_old_requests", 60.0, self.archive_old_requests),
            Periodic("purge_dead_letters", 60.0, self.purge_dead_letters),
        ]

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
        """Finished requests older than 6 months go to cold storage (JSON lines), then away."""
        rows = await conn.fetch(
            "SELECT device_id, request_id, provider, status, created_at, updated_at"
            " FROM requests WHERE created_at < now() - $1::interval"
            " AND status IN ('completed', 'failed', 'dead_lettered') LIMIT 1000",
            ARCHIVE_AFTER,
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

    async def purge_dead_letters(self, conn: asyncpg.Connection) -> dict[str, Any]:
        purged = await conn.fetch(
            "DELETE FROM dead_letters WHERE dead_at < now() - $1::interval RETURNING request_id",
            DEAD_LETTER_RETENTION,
        )
        return {"purged": len(purged)}

    async def take_base_backup(self) -> dict[str, Any]:
        """`pg_basebackup` through the write path into `<state>/backups/<UTC time>/`, then drop
        backups older than the retention. Runs outside any transaction: it takes seconds."""
        root = self.settings.state_dir / "backups"
        root.mkdir(parents=True, exist_ok=True)
        name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        partial = root / f"{name}.partial"
        proc = await asyncio.create_subprocess_exec(
            "pg_basebackup",
            "-d",
            self.settings.backup_dsn,
            "-D",
            str(partial),
            "-Ft",
            "-z",
            "-X",
            "fetch",
            "--checkpoint=fast",
            "--no-password",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), BACKUP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"pg_basebackup took over {BACKUP_TIMEOUT_S:.0f} s") from None
        except asyncio.CancelledError:
            proc.kill()  # shutting down: no orphaned pg_basebackup
            await proc.wait()
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise RuntimeError(f"pg_basebackup failed: {out.decode(errors='replace')[-500:]}")
        final = root / name
        partial.rename(final)
        size = sum(f.stat().st_size for f in final.iterdir())
        expired = [
            d
            for d in root.iterdir()
            if d != final and time.time() - d.stat().st_mtime > BACKUP_RETENTION_S
        ]
        for d in expired:
            shutil.rmtree(d, ignore_errors=True)
        return {"path": str(final), "bytes": size, "expired": len(expired)}

    async def tend_backup(self, token: int) -> None:
        """Start a base backup when one is due; record a finished one, fenced."""
        if self.backup is not None and self.backup.done():
            task, self.backup = self.backup, None
            try:
                detail = task.result()
            except Exception as exc:
                self.runs.labels("base_backup", "error").inc()
                log.error("base backup failed: %s", exc)
                return
            job = Periodic("base_backup", self.settings.backup_interval_s, _recorded(detail))
            try:
                await self.fenced(job, self.backup_token)
                self.runs.labels("base_backup", "ok").inc()
                log.info("base backup %s (%d bytes)", detail["path"], detail["bytes"])
            except Fenced as exc:
                self.runs.labels("base_backup", "fenced").inc()
                log.warning("base backup taken but not recorded: %s", exc)
        due = time.monotonic() - self.last_backup_s >= self.settings.backup_interval_s
        if self.backup is None and due and self.settings.backup_dsn:
            self.last_backup_s = time.monotonic()
            self.backup_token = token
            self.backup = asyncio.create_task(self.take_base_backup())

    # ---- the loop --------------------------------------------------------------------------

    async def run_cycle(self) -> str:
        """Renew or take the lease, then run the periodic jobs that are due; say what happened."""
        token = await self.try_lead()
        if token != self.token:
            log.info("lease: %s", f"leading with token {token}" if token else "following")
        self.token = token
        self.leader.set(1 if token else 0)
        self.token_gauge.set(token or 0)
        if token is None:
            return "follower"
        now = time.monotonic()
        ran = []
        for job in self.jobs:
            if now - job.last_s < job.every_s:
                continue
            job.last_s = now
            try:
                await self.fenced(job, token)
                self.runs.labels(job.name, "ok").inc()
                ran.append(job.name)
            except Fenced as exc:
                self.runs.labels(job.name, "fenced").inc()
                log.warning("%s not run: %s", job.name, exc)
                self.token = None
                return "deposed"
        await self.tend_backup(token)
        return "leader" + (f": ran {', '.join(ran)}" if ran else "")

    async def loop(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await self.run_cycle()
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                log.warning("database unavailable: %r", exc)
                self.leader.set(0)
                self.token = None
            observability.tick(self.app, "lease")
            elapsed = time.monotonic() - started
            if elapsed > TICK_S:
                log.warning("cycle overran: %.2f s", elapsed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), max(0.0, TICK_S - elapsed))


async def _run(app: web.Application) -> AsyncIterator[None]:
    state: SchedulerState = app[STATE]  # type: ignore[assignment]
    state.pool = await create_pool(app[SETTINGS].pg_write_url, max_size=4)
    await ensure_schema(state.pool)

    async def pg() -> bool:
        return bool(await state.pool.fetchval("SELECT 1", timeout=2) == 1)

    app[observability.READY_CHECKS_KEY]["postgres"] = pg
    task = asyncio.create_task(state.loop())
    yield
    state.stopping.set()
    await asyncio.wait([task], timeout=5)
    if state.backup is not None:
        state.backup.cancel()
        await asyncio.gather(state.backup, return_exceptions=True)
    if state.token is not None:
        # Hand over at once rather than after the lease expires.
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await state.pool.execute(
                "UPDATE leases SET expires_at = clock_timestamp() WHERE name = $1"
                " AND holder = $2 AND token = $3",
                LEASE,
                app[SETTINGS].name,
                state.token,
            )
    await state.pool.close()


def create_app(settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    metrics = observability.install(app, settings)
    metrics.declare("backup_retention", BACKUP_RETENTION_S)
    metrics.declare("dead_letter_retention", DEAD_LETTER_RETENTION_S)
    metrics.declare("archive_after", ARCHIVE_AFTER_S)
    app[STATE] = SchedulerState(app, settings)
    app.cleanup_ctx.append(_run)
    return app
