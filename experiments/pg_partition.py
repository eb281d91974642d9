"""A network partition of the PostgreSQL primary: cut off from its replicas and from etcd while
its clients (HAProxy, and through it pgBouncer and the services) still reach it.

The split-brain case Patroni must fence: the isolated primary can no longer renew its leader
key, so after the key's TTL it must demote itself, while the majority side promotes the
synchronous standby. Until it does, it may still take writes. Measured from the client's side
and from the database's:

- `fenced_after_s`: when the isolated primary stopped claiming the primary role, counted from
  the cut: its Patroni's `/primary` (what HAProxy routes writes by) answering non-200 as many
  times in a row as HAProxy needs to mark it down (no answer counts as neither); None when it
  still claimed it when the partition healed;
- `promoted_after_s`: when another member's `/primary` first answered 200;
- `both_primary_s`: how long both claimed it (up to the heal when the old one never stopped);
- `acknowledged_by_isolated`: writes a client was told were committed by the isolated member,
  completed after the cut (the ledger records which member answered each);
- `committed_on_isolated`: rows the isolated member holds from around the cut on that the new
  primary lacks (read from each member directly, before the heal: the rewind that follows
  discards them), None when the isolated member could not be read in time;
- and, like every failover measurement, RTO and the reconciliation (acknowledged writes lost).

Only the containers runtime can cut one member off from some peers and not others
(`env.containers.partition`); elsewhere it says so.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import requests

from env import containers
from env.configs import HAPROXY_PG_FALL
from env.local import LocalEnvironment
from env.process import DeadlineExceeded, wait_until
from env.state import EnvStatus
from experiments.pg_failover import Fault, measure_failover, pg_members, primary_of
from slo.ledger import Operation

#: Rows from this long before the cut count: a transaction's `now()` is its start.
SINCE_SLACK_S = 5.0
#: How long the isolated member may take to answer a read before the heal; past it the count is
#: unknown, and the partition heals. It restarts as a replica when it demotes itself, and its
#: shutdown waits for its walsenders, stuck on the dropped links until `wal_sender_timeout`
#: (PostgreSQL's 60 s) ends them: seen here, "the database system is shutting down" for 20 s
#: and more.
READ_ISOLATED_S = 90.0


def peers_of(status: EnvStatus, member: str) -> list[str]:
    """What a member must be cut off from for a partition of it: etcd, the other members, and
    the fault proxy (the replication links go through it)."""
    others = [name for name in pg_members(status) if name != member]
    return ["etcd", "faultproxy", *others]


def claims_primary(patroni_port: int) -> bool | None:
    """Patroni's `/primary` on 127.0.0.1: True on 200, False on another answer, None when
    there was no answer within a second (a slow member is not a fenced one)."""
    try:
        return requests.get(f"http://127.0.0.1:{patroni_port}/primary", timeout=1).ok
    except requests.RequestException:
        return None


class FencingWatch:
    """Times, from the cut, the isolated member's fencing and another member's promotion, a
    fifth of a second apart, from Patroni's own answers (the host still reaches every member).
    """

    def __init__(self, isolated_port: int, other_ports: list[int], cut_at: float) -> None:
        self.isolated_port = isolated_port
        self.other_ports = other_ports
        self.cut_at = cut_at  # monotonic, taken as the cut began
        self.last_answer: bool | None = True  # the isolated member's last `claims_primary`
        self.fenced_at: float | None = None
        self.promoted_at: float | None = None
        self.healed_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fencing-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        refusals, first_refusal = 0, 0.0
        while not self._stop.is_set():
            if self.fenced_at is None:
                claims = claims_primary(self.isolated_port)
                answered = time.monotonic()
                self.last_answer = claims
                if claims is False:
                    refusals += 1
                    first_refusal = first_refusal if refusals > 1 else answered
                elif claims:
                    refusals = 0
                # Fenced from its first refusal, once HAProxy would have marked it down.
                if refusals >= HAPROXY_PG_FALL:
                    self.fenced_at = first_refusal
            if self.promoted_at is None:
                for port in self.other_ports:
                    if claims_primary(port):
                        self.promoted_at = time.monotonic()
                        break
            if self.fenced_at is not None and self.promoted_at is not None:
                return
            self._stop.wait(0.2)

    def healed(self) -> None:
        self.healed_at = time.monotonic()
        self._stop.set()
        self._thread.join(timeout=5)

    def timings(self) -> dict[str, float | None]:
        def since_cut(t: float | None) -> float | None:
            return round(t - self.cut_at, 3) if t is not None else None

        # Unknown when it had stopped answering before it refused: no answer is no verdict.
        known = self.fenced_at is not None or self.last_answer is not None
        both = None
        if self.promoted_at is not None and known:
            end = self.fenced_at if self.fenced_at is not None else self.healed_at
            both = round(max(0.0, (end or time.monotonic()) - self.promoted_at), 3)
        return {
            "fenced_after_s": since_cut(self.fenced_at),
            "fencing_known": known,
            "promoted_after_s": since_cut(self.promoted_at),
            "both_primary_s": both,
            "healed_after_s": since_cut(self.healed_at),
        }


def cut_primary(env: LocalEnvironment, status: EnvStatus) -> tuple[dict[str, Any], FencingWatch]:
    """Cut the primary off (`peers_of`) and start timing its fencing; what was cut."""
    name = primary_of(status)
    if name is None:
        raise RuntimeError("no single primary to cut off")
    members = pg_members(status)
    member = members[name]
    others = [m.port("patroni") for n, m in members.items() if n != name]
    # From the moment the cut begins, as the write loop's RTO counts from the fault.
    cut_at, cut_wall = time.monotonic(), time.time()
    cut = containers.partition(env.settings, name, peers_of(status, name))
    try:
        watch = FencingWatch(member.port("patroni"), others, cut_at)
        return {
            "name": name,
            "timeline": member.detail["timeline"],
            "postgres_port": member.port("postgres"),
            "cut_from": cut["peers"],
            "cut_wall": cut_wall,
        }, watch
    except BaseException:  # nobody would heal a cut they were not told of
        containers.heal(env.settings, name)
        raise


def isolated_rows(
    env: LocalEnvironment, isolated: str, since_wall: float, table: str, key: str
) -> dict[str, Any]:
    """Rows of `table` (its text key `key`) the isolated member holds from `SINCE_SLACK_S`
    before `since_wall` on that the promoted member lacks, each member read directly. Read
    before the heal: once healed, the isolated member is rewound and they are gone.

    `committed`, `missing`: those from `since_wall` on (the partition's); `missing_before` the
    ones written in the slack before it that never reached the new primary (a failover's own
    tail, or a transaction begun before the cut); `missing_ids` all of them."""
    status = env.state()
    promoted = next(
        (n for n, m in pg_members(status).items() if n != isolated and m.role == "primary"), None
    )
    if promoted is None:
        return {"committed": None, "missing": None, "error": "no other member is primary"}
    at = "written_at" if table == "harness_writes" else "created_at"
    sql = (
        f"SELECT {key}::text, EXTRACT(EPOCH FROM {at})::float8 >= %s FROM {table}"
        f" WHERE {at} >= to_timestamp(%s)"
    )
    try:
        rows = read_member(
            status.urls["members"][isolated],
            sql,
            (since_wall, since_wall - SINCE_SLACK_S),
            env.settings.timeout(READ_ISOLATED_S),
        )
        there = set(rows)
        have = read_member(
            status.urls["members"][promoted],
            f"SELECT {key}::text FROM {table} WHERE {key}::text = ANY(%s)",
            (sorted(there),),
            env.settings.timeout(READ_ISOLATED_S),
        )
    except (DeadlineExceeded, psycopg.Error) as exc:
        return {"committed": None, "missing": None, "error": str(exc)[:300]}
    missing = sorted(there - set(have))
    after = [i for i in missing if rows[i]]
    return {
        "committed": sum(1 for i in there if rows[i]),
        "missing": len(after),
        "missing_before": len(missing) - len(after),
        "missing_ids": missing,
    }


def read_member(url: str, sql: str, params: tuple[Any, ...], timeout_s: float) -> dict[str, Any]:
    """First column -> second column (None without one) of `sql` on a member that may be
    restarting: a member demoting itself restarts as a replica (of no one), and answers again
    once started."""

    def read() -> tuple[dict[str, Any]]:
        with psycopg.connect(url, connect_timeout=5) as conn:
            rows = conn.execute(sql, params).fetchall()
        return ({str(r[0]): (r[1] if len(r) > 1 else None) for r in rows},)

    return wait_until(read, timeout_s, "the member readable", 0.5)[0]


class PrimaryPartition:
    """The fault for `measure_failover`: cut, fencing timed, rows counted, healed."""

    def __init__(self) -> None:
        self.watch: FencingWatch | None = None
        self.rows: dict[str, Any] = {}
        self.fault = Fault(
            "partition-primary", self.inject, self.took_effect, self.restore, self.account
        )

    def inject(self, env: LocalEnvironment, status: EnvStatus) -> dict[str, Any]:
        killed, self.watch = cut_primary(env, status)
        return killed

    def took_effect(self, killed: dict[str, Any], now: EnvStatus) -> bool:
        """Another member answers as the primary (the old one may still claim it too)."""
        return self.watch is not None and self.watch.promoted_at is not None

    def restore(self, env: LocalEnvironment, killed: dict[str, Any]) -> None:
        try:
            self.rows = isolated_rows(
                env, killed["name"], killed["cut_wall"], "harness_writes", "id"
            )
        finally:
            containers.heal(env.settings, killed["name"])
            if self.watch is not None:
                self.watch.healed()

    def account(self, ops: list[Operation], killed: dict[str, Any]) -> dict[str, Any]:
        assert self.watch is not None
        cut_at, port = self.watch.cut_at, str(killed["postgres_port"])
        return {
            **self.watch.timings(),
            # Completed after the cut: acknowledged by a member the cluster had cut off.
            "acknowledged_by_isolated": len(
                isolated := [
                    o.op_id
                    for o in ops
                    if o.outcome == "ok" and o.server == port and o.completed_s >= cut_at
                ]
            ),
            "acknowledged_by_isolated_ids": isolated[:200],
            "committed_on_isolated": self.rows.get("missing"),
            "isolated_rows": self.rows,
        }


def measure_partition(env: LocalEnvironment, rate_per_s: float = 50.0) -> dict[str, Any]:
    """A write loop through the write path, the primary cut off, the partition healed once a
    new primary serves and writes recovered; the environment whole again at the end.

    Raises:
        containers.NeedsContainers: on any runtime but containers (before anything is done).
    """
    if env.settings.runtime != "containers":
        raise containers.NeedsContainers("a partition of the PostgreSQL primary")
    return measure_failover(env, PrimaryPartition().fault, rate_per_s=rate_per_s)
