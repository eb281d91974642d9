"""The database schema, applied idempotently by every service at start-up.

Requests are hash-partitioned by device, as the seed plans for sharding. Durable state (requests,
the job queue, dead letters, the per-device event log, scheduler leases) lives here; Redis holds
only what may be lost (caches, rate-limit counters, notification fan-out).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re

import asyncpg

log = logging.getLogger(__name__)

PARTITIONS = 8

DDL = [
    """CREATE TABLE IF NOT EXISTS devices (
        device_id uuid PRIMARY KEY,
        platform text NOT NULL CHECK (platform IN ('ios', 'android')),
        name text NOT NULL,
        client_id text NOT NULL UNIQUE,
        secret_hash bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS requests (
        device_id uuid NOT NULL,
        request_id uuid NOT NULL,
        idempotency_key text NOT NULL,
        body_hash bytea NOT NULL,
        provider text NOT NULL,
        document_enc bytea NOT NULL,
        instruction_enc bytea NOT NULL,
        status text NOT NULL,
        response_enc bytea,
        error text,
        correlation_id text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (device_id, request_id),
        UNIQUE (device_id, idempotency_key)
    ) PARTITION BY HASH (device_id)""",
    *(
        f"CREATE TABLE IF NOT EXISTS requests_p{i} PARTITION OF requests"
        f" FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {i})"
        for i in range(PARTITIONS)
    ),
    "CREATE INDEX IF NOT EXISTS requests_created ON requests (created_at)",
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id bigserial PRIMARY KEY,
        device_id uuid NOT NULL,
        request_id uuid NOT NULL UNIQUE,
        correlation_id text NOT NULL,
        attempts int NOT NULL DEFAULT 0,
        max_attempts int NOT NULL,
        visible_at timestamptz NOT NULL DEFAULT now(),
        claimed_by text,
        claimed_at timestamptz,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_visible ON jobs (visible_at, job_id)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        request_id uuid PRIMARY KEY,
        device_id uuid NOT NULL,
        attempts int NOT NULL,
        last_error text,
        dead_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        event_id bigserial PRIMARY KEY,
        device_id uuid NOT NULL,
        request_id uuid NOT NULL,
        type text NOT NULL,
        payload jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp()
    )""",
    # When the id was taken, not when its transaction began (`now()`): a transaction that
    # waited long before its insert made an event look settled the moment it committed
    # (`settled`, below). Also for a table made before.
    "ALTER TABLE events ALTER COLUMN created_at SET DEFAULT clock_timestamp()",
    "CREATE INDEX IF NOT EXISTS events_device ON events (device_id, event_id)",
    """CREATE TABLE IF NOT EXISTS leases (
        name text PRIMARY KEY,
        holder text,
        token bigint NOT NULL DEFAULT 0,
        expires_at timestamptz NOT NULL DEFAULT '-infinity'
    )""",
    """CREATE TABLE IF NOT EXISTS periodic_runs (
        run_id bigserial PRIMARY KEY,
        job text NOT NULL,
        holder text NOT NULL,
        token bigint NOT NULL,
        started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        detail jsonb
    )""",
    """CREATE TABLE IF NOT EXISTS replication_heartbeat (
        id int PRIMARY KEY,
        beat bigint NOT NULL,
        written_at timestamptz NOT NULL
    )""",
    # Retention: the scheduler's purges, and the oldest-row ages the SLOs read, by index.
    "CREATE INDEX IF NOT EXISTS dead_letters_dead_at ON dead_letters (dead_at)",
    "CREATE INDEX IF NOT EXISTS events_created ON events (created_at)",
    "CREATE INDEX IF NOT EXISTS periodic_runs_started ON periodic_runs (started_at)",
    "CREATE INDEX IF NOT EXISTS periodic_runs_job ON periodic_runs (job, started_at)",
]


def settled(settle_param: str, alias: str = "") -> str:
    """A SQL boolean: the event row may be passed by a cursor, no smaller id of its device can
    still commit. Event ids come from a sequence inside concurrent transactions, so they commit
    out of order. A row is settled when its id was taken (`created_at`, `clock_timestamp()` at
    the insert) more than `settle_param` seconds ago *and* before every transaction still in
    progress that writes (holds a transaction id) began: any event such a transaction inserted,
    or will, takes a later, larger id. The first half keeps the fresh rows of an idle log
    waiting a moment; the second is what no timing assumption can break (a commit held by a
    lock, or by a slow synchronous standby, for longer than any settle window). The 100 ms
    margin covers the id and the timestamp being read a moment apart within one insert."""
    col = f"{alias}.created_at" if alias else "created_at"
    return (
        f"({col} < clock_timestamp() - make_interval(secs => {settle_param})"
        f" AND {col} < (SELECT coalesce(min(xact_start), 'infinity') - interval '100 ms'"
        " FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()))"
    )


#: Serializes schema changes between services starting together; a transaction-level lock,
#: because session locks do not survive pgBouncer's transaction pooling.
LOCK_ID = 0x6377_0001

#: What the DDL above amounts to. A service starts by looking for it among the digests the
#: database records, and runs the DDL only when it is not there: `CREATE INDEX IF NOT EXISTS`
#: locks its table before it finds the index there, and `ALTER TABLE events` locks `events`
#: outright, so at every start the DDL took locks that running services hold in their own orders
#: (the submit `requests` then `jobs`, the claim `jobs` then `requests`), and one side died with
#: "deadlock detected". A set rather than one value: in a rolling release the old release's
#: services, restarted, must not take the new one's recorded schema for a change.
DIGEST = hashlib.sha256("\n;\n".join(DDL).encode()).hexdigest()

#: Every table, partition and index the DDL creates. A recorded digest counts only while they all
#: exist: one dropped by hand (or by a restore of part of the database) is made again at the
#: next start, as it was before the digest. `to_regclass` looks a name up without locking it, so
#: the check still takes no lock.
RELATIONS = tuple(
    re.findall(r"CREATE (?:UNIQUE )?(?:TABLE|INDEX) IF NOT EXISTS ([\w.\"]+)", "\n".join(DDL))
)

MARKER_DDL = """CREATE TABLE IF NOT EXISTS schema_applied (
    digest text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

#: The tables the DDL may lock, all taken at once before it runs: the order cannot match every
#: running statement's (the submit locks `requests` then `jobs`, the claim the reverse), so the
#: LOCK is bounded as a whole by LOCK_TIMEOUT_MS and starts over. That is below PostgreSQL's
#: `deadlock_timeout` (1 s): a service queued behind it is let go before its own deadlock check
#: runs, so in a cycle this side gives up first. (`lock_timeout` would bound each of its sixteen
#: lock waits apart, eight tables and the partitions, not the statement.)
TABLES = (
    "devices",
    "requests",
    "jobs",
    "dead_letters",
    "events",
    "leases",
    "periodic_runs",
    "replication_heartbeat",
)
LOCK_TIMEOUT_MS = 500
#: How many times a schema change is tried before the service's start fails (with the backoff
#: below and the LOCK's own wait, up to about 40 s of trying; the supervisor then restarts it).
LOCK_ATTEMPTS = 40
RETRIED = (
    asyncpg.LockNotAvailableError,
    asyncpg.DeadlockDetectedError,
    asyncpg.QueryCanceledError,  # the LOCK's statement_timeout
)


async def is_applied(
    conn: asyncpg.Connection, digest: str = DIGEST, relations: tuple[str, ...] = RELATIONS
) -> bool:
    """Whether the database records `digest` as applied and still has every relation it made
    (False on one that records none)."""
    try:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT FROM schema_applied WHERE digest = $1)"
                " AND NOT EXISTS (SELECT FROM unnest($2::text[]) AS r(name)"
                " WHERE to_regclass(name) IS NULL)",
                digest,
                list(relations),
            )
        )
    except asyncpg.UndefinedTableError:
        return False


async def ensure_schema(pool: asyncpg.Pool) -> bool:
    """Bring the schema to `DDL`; True when the DDL ran, False when it was already applied."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _ensure_schema(pool)
        except RETRIED as exc:
            if attempt >= LOCK_ATTEMPTS:
                raise
            log.info("schema: %s beside running services (attempt %d)", type(exc).__name__, attempt)
            await asyncio.sleep(min(1.0, 0.05 * attempt) * random.uniform(0.5, 1.0))


async def _ensure_schema(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as conn:
        if await is_applied(conn):  # the common case: one row read, no lock taken
            return False
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
            await conn.execute(MARKER_DDL)
            # Another service may have applied it while this one waited for the lock.
            if await is_applied(conn):
                return False
            existing = await conn.fetch(
                "SELECT name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, i)"
                " WHERE to_regclass(name) IS NOT NULL ORDER BY i",
                list(TABLES),
            )
            if existing:
                names = ", ".join(row["name"] for row in existing)
                await conn.execute(f"SET LOCAL statement_timeout = {LOCK_TIMEOUT_MS}")
                await conn.execute(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
                # Back to the configured bound: an index build on a large table may take long.
                await conn.execute("SET LOCAL statement_timeout TO DEFAULT")
            for statement in DDL:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_applied (digest) VALUES ($1) ON CONFLICT DO NOTHING", DIGEST
            )
        return True
