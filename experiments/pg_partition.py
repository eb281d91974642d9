"""A network partition of the PostgreSQL primary: cut off from its replicas and from etcd while
its clients (HAProxy, and through it pgBouncer and the services) still reach it.

The split-brain case Patroni must fence: the isolated primary can no longer renew its leader
key, so after the key's TTL it must demote itself, while the majority side promotes the
synchronous standby. Until it does, it may still take writes. This module measures, from the
client's side and from the database's:

- `fenced_after_s`: when the isolated primary stopped claiming the primary role (Patroni's
  `/primary`, what HAProxy routes by, no longer 200), counted from the cut;
- `promoted_after_s`: when another member served as the one primary;
- `both_primary_s`: how long both claimed it (0 when the old one was fenced first);
- `acknowledged_by_isolated`: writes a client was told were committed, by the isolated primary,
  after the cut (the ledger knows which member answered each);
- `committed_on_isolated`: rows the isolated primary holds from after the cut that the new
  primary lacks (read from it, still isolated, before the partition heals: the rewind that
  follows discards them);
- and, like every failover measurement, RTO and the reconciliation (acknowledged writes lost).

Only the containers runtime can cut one member off from some peers and not others
(`env.containers.partition`); elsewhere it says so.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import psycopg
import requests

from env import containers
from env.local import LocalEnvironment
from env.process import wait_until
from env.state import EnvStatus
from experiments.pg_failover import Fault, measure_failover, pg_members, primary_of


def peers_of(status: EnvStatus, member: str) -> list[str]:
    """What a member must be cut off from for a partition of it: etcd, the other members, and
    the fault proxy (the replication links go through it)."""
    others = [name for name in pg_members(status) if name != member]
    return ["etcd", "faultproxy", *others]


class PrimaryPartition:
    """The fault, with a watcher that times the old primary's fencing while it lasts."""

    def __init__(self) -> None:
        self.cut_at = 0.0
        self.port = 0
        self.fenced_at: float | None = None
        self.promoted_at: float | None = None
        self.isolated_rows: dict[str, Any] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.fault = Fault("partition-primary", self.inject, self.took_effect, self.restore)

    def inject(self, env: LocalEnvironment, status: EnvStatus) -> dict[str, Any]:
        name = primary_of(status)
        assert name is not None, "no primary to cut off"
        member = pg_members(status)[name]
        self.port = member.port("patroni")
        cut = containers.partition(env.settings, name, peers_of(status, name))
        self.cut_at = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, name="fencing", daemon=True)
        self._watcher.start()
        return {
            "name": name,
            "timeline": member.detail["timeline"],
            "postgres_port": member.port("postgres"),
            "cut_from": cut["peers"],
            "cut_wall": time.time(),
        }

    def _watch(self) -> None:
        """Poll the isolated member's `/primary` from the host (which the cut spares)."""
        while not self._stop.is_set() and self.fenced_at is None:
            try:
                claims = requests.get(f"http://127.0.0.1:{self.port}/primary", timeout=1)
                if claims.status_code != 200:
                    self.fenced_at = time.monotonic()
            except requests.RequestException:
                self.fenced_at = time.monotonic()  # no answer: no client is routed to it
            self._stop.wait(0.2)

    def took_effect(self, killed: dict[str, Any], now: EnvStatus) -> bool:
        """Another member serves as the primary (the old one may still claim it too)."""
        claims = [n for n, m in pg_members(now).items() if m.role == "primary"]
        new = [n for n in claims if n != killed["name"]]
        if new and self.promoted_at is None:
            self.promoted_at = time.monotonic()
        return bool(new)

    def restore(self, env: LocalEnvironment, killed: dict[str, Any]) -> None:
        """Read what the isolated primary committed, then heal the partition."""
        try:
            self.isolated_rows = isolated_commits(env, killed)
        finally:
            self._stop.set()
            containers.heal(env.settings, killed["name"])
            if self._watcher is not None:
                self._watcher.join(timeout=5)

    def timings(self) -> dict[str, float | None]:
        def since_cut(t: float | None) -> float | None:
            return round(t - self.cut_at, 3) if t is not None else None

        both = None
        if self.promoted_at is not None:
            end = self.fenced_at if self.fenced_at is not None else time.monotonic()
            both = round(max(0.0, end - self.promoted_at), 3)
        return {
            "fenced_after_s": since_cut(self.fenced_at),
            "promoted_after_s": since_cut(self.promoted_at),
            "both_primary_s": both,
        }


def isolated_commits(env: LocalEnvironment, killed: dict[str, Any]) -> dict[str, Any]:
    """Rows of the write loop's table the isolated member holds from after the cut that the new
    primary lacks: committed there (acknowledged or not), and about to be rewound away."""
    status = env.state()
    since = killed["cut_wall"]
    sql = "SELECT id FROM harness_writes WHERE written_at >= to_timestamp(%s)"
    isolated = status.urls["members"][killed["name"]]
    there = read_member(isolated, sql, (since,), env.settings.timeout(60))
    with psycopg.connect(status.urls["write"], connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT id FROM harness_writes WHERE id = ANY(%s)", (sorted(there),)
        ).fetchall()
    missing = there - {r[0] for r in rows}
    return {"committed_after_cut": len(there), "missing_on_new_primary": sorted(missing)}


def read_member(url: str, sql: str, params: tuple[Any, ...], timeout_s: float) -> set[str]:
    """The first column of `sql` on a member that may be restarting: a member demoting itself
    restarts as a replica (of no one) and answers again once started."""

    def read() -> tuple[set[str]]:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return ({str(r[0]) for r in conn.execute(sql, params).fetchall()},)

    return wait_until(read, timeout_s, "the isolated member readable", 0.5)[0]


def measure_partition(env: LocalEnvironment, rate_per_s: float = 50.0) -> dict[str, Any]:
    """A write loop through the write path, the primary cut off, the partition healed once a
    new primary serves and writes recovered; the environment whole again at the end.

    Raises:
        containers.NeedsContainers: on any runtime but containers (before anything is done).
    """
    if env.settings.runtime != "containers":
        raise containers.NeedsContainers("a partition of the PostgreSQL primary")
    fault = PrimaryPartition()
    result = measure_failover(env, fault.fault, rate_per_s=rate_per_s)
    killed = result["killed"]
    return {
        **result,
        **fault.timings(),
        "acknowledged_by_isolated": acknowledged_by(result["ok_after_fault_by_server"], killed),
        "committed_on_isolated": len(fault.isolated_rows.get("missing_on_new_primary", [])),
        "isolated_rows": fault.isolated_rows,
    }


def acknowledged_by(by_server: Counter[str] | dict[str, int], killed: dict[str, Any]) -> int:
    """Writes acknowledged after the cut by the isolated member (the ledger records the port of
    the member that answered each)."""
    return int(by_server.get(str(killed["postgres_port"]), 0))
