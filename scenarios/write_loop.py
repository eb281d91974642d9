"""A steady, bounded write loop against a PostgreSQL URL (normally HAProxy's write path).

The simplest client there is: one row per operation, each recorded in the operation ledger with
the member that answered. Used by the failover tests and `make bench-failover`; the device
fleets arrive in `scenarios/` with their own clients.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg

from slo.ledger import Operation, Outcome

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS harness_writes (
    id text PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
)"""


class WriteLoop:
    """Insert rows at up to `rate_per_s` until stopped or `max_ops`/`max_duration_s` is reached.

    Runs in a thread. A connection error mid-statement makes the operation `info` (the commit may
    or may not have happened); an error while connecting makes it `fail`.
    """

    def __init__(
        self,
        url: str,
        rate_per_s: float = 50.0,
        max_ops: int = 100_000,
        max_duration_s: float = 600.0,
        statement_timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.interval_s = 1.0 / rate_per_s
        self.max_ops = max_ops
        self.max_duration_s = max_duration_s
        self.statement_timeout_s = statement_timeout_s
        self.ops: list[Operation] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="write-loop", daemon=True)
        self._lock = threading.Lock()

    def prepare(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(TABLE_DDL)

    def start(self) -> WriteLoop:
        self._thread.start()
        return self

    def stop(self) -> list[Operation]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.snapshot()

    def snapshot(self) -> list[Operation]:
        with self._lock:
            return list(self.ops)

    def _connect(self) -> psycopg.Connection:
        timeout_ms = int(self.statement_timeout_s * 1000)
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, int(self.statement_timeout_s)),
            options=f"-c statement_timeout={timeout_ms}",
            prepare_threshold=None,  # safe behind pgBouncer's transaction pooling too
        )

    def _record(self, op: Operation) -> None:
        with self._lock:
            self.ops.append(op)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        started = time.monotonic()
        next_at = started
        count = 0
        while (
            not self._stop.is_set()
            and count < self.max_ops
            and time.monotonic() - started < self.max_duration_s
        ):
            now = time.monotonic()
            if now < next_at:
                self._stop.wait(next_at - now)
                continue
            next_at += self.interval_s
            count += 1
            op_id = uuid.uuid4().hex
            invoked, wall = time.monotonic(), time.time()
            if conn is None or conn.closed:
                try:
                    conn = self._connect()
                except psycopg.Error as exc:
                    conn = None
                    self._record(
                        Operation(
                            op_id,
                            "write",
                            invoked,
                            time.monotonic(),
                            wall,
                            "fail",
                            None,
                            str(exc).strip()[:200],
                        )
                    )
                    continue
            try:
                row = conn.execute(
                    "INSERT INTO harness_writes (id) VALUES (%s) RETURNING inet_server_port()",
                    (op_id,),
                ).fetchone()
                server = str(row[0]) if row else None
                self._record(
                    Operation(op_id, "write", invoked, time.monotonic(), wall, "ok", server)
                )
            except psycopg.Error as exc:
                # The statement may have committed before the connection broke: unknown.
                # A read-only primary (being demoted) refused it for sure: that is a fail.
                refused = isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)
                outcome: Outcome = "fail" if refused else "info"
                self._record(
                    Operation(
                        op_id,
                        "write",
                        invoked,
                        time.monotonic(),
                        wall,
                        outcome,
                        None,
                        str(exc).strip()[:200],
                    )
                )
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def present_ids(url: str, ids: list[str]) -> set[str]:
    """Which of `ids` the database at `url` holds now."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("SELECT id FROM harness_writes WHERE id = ANY(%s)", (ids,)).fetchall()
    return {r[0] for r in rows}
