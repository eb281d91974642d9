"""PostgreSQL faults: the primary's postmaster killed, the primary node lost, a planned
switchover, latency on the replication link, two primaries lost in turn, and writes held by a
table lock (a stall that fails nothing).

The kills reuse `experiments.pg_failover` (the failover tests and `make bench-failover` use the
same steps); every injection is recorded in the run's fault journal.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import requests
from psycopg import sql

from env.process import wait_until
from experiments import harness
from experiments.activities.network.actions import add_toxic
from experiments.pg_failover import KILL_PATRONI, KILL_POSTGRES, Fault, pg_members, primary_of
from experiments.settings import ChaosSettings, Configuration


def _kill(s: ChaosSettings, fault: Fault, timeout_s: float) -> dict[str, Any]:
    env = harness.environment(s)
    before = env.state()
    killed = fault.inject(env, before)
    entry = harness.mark(s, "inject", f"{fault.name}-{killed['name']}", **killed)
    # The fault took effect only when a new primary serves (a different member, or the same
    # one on a higher timeline after Patroni restarted it).
    wait_until(
        lambda: fault.took_effect(killed, env.state()),
        env.settings.timeout(timeout_s),
        f"{fault.name}: a new primary serves",
        interval_s=0.2,
    )
    now = env.state()
    after = primary_of(now)
    timeline = pg_members(now)[after].detail["timeline"] if after else None
    return {
        **killed,
        "injected_wall": entry["wall"],
        "new_primary": after,
        "new_timeline": timeline,
    }


def kill_primary_postgres(timeout_s: float = 60, *, configuration: Configuration) -> dict[str, Any]:
    """SIGKILL the primary's postmaster; Patroni lives on. Returns once a primary serves."""
    return _kill(harness.settings_of(configuration), KILL_POSTGRES, timeout_s)


def lose_primary_node(
    down_s: float = 60, timeout_s: float = 60, *, configuration: Configuration
) -> dict[str, Any]:
    """Lose the primary node: SIGKILL its Patroni (and so its postgres) and keep it down for
    `down_s` (bounded by the supervisor's hold); the leader key must expire first.

    On the kubernetes runtime, the primary's pod deleted through chaosk8s with a 1 s grace (a
    StatefulSet's pod is never force-deleted), returning once a pod with another uid is
    labelled primary and Ready, waiting at least Patroni's ttl + loop_wait + a pod start
    (`experiments.kube.members.delete_pg_primary`); its StatefulSet starts it again once it
    stopped, so `down_s` does not apply."""
    s = harness.settings_of(configuration)
    if s.env.runtime == "kubernetes":
        from experiments.kube.api import connect
        from experiments.kube.members import delete_pg_primary

        return delete_pg_primary(s, connect(s.env), timeout_s)
    result = _kill(s, KILL_PATRONI, timeout_s)
    # KILL_PATRONI holds the node 300 s (the failover tests' choice): shorten it to `down_s`.
    harness.environment(s).hold(result["name"], down_s)
    return result


def lose_primaries_in_turn(
    times: int = 2, down_s: float = 90, timeout_s: float = 60, *, configuration: Configuration
) -> list[dict[str, Any]]:
    """A cascading failure: lose the primary node, wait for the new primary to serve, lose
    that one too. With asynchronous replication (or before the new primary has a synchronous
    standby) acknowledged writes can be lost: the measurement must show it."""
    return [
        lose_primary_node(down_s=down_s, timeout_s=timeout_s, configuration=configuration)
        for _ in range(times)
    ]


def switchover(
    candidate: str = "", timeout_s: float = 60, *, configuration: Configuration
) -> dict[str, Any]:
    """A planned switchover through Patroni's REST API, to `candidate` (default: the sync
    standby). Returns once the candidate serves as primary."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    status = env.state()
    leader = primary_of(status)
    target = candidate or status.pg_sync_standby
    if not leader or not target:
        raise RuntimeError(f"no switchover possible: leader {leader}, candidate {target}")
    port = status.component(leader).port("patroni")
    resp = requests.post(
        f"http://127.0.0.1:{port}/switchover",
        json={"leader": leader, "candidate": target},
        auth=env.patroni_auth(),
        timeout=30,
    )
    if resp.status_code != 200:
        raise RuntimeError(f"Patroni refused the switchover: {resp.status_code} {resp.text}")
    entry = harness.mark(
        s, "inject", f"switchover-{leader}-{target}", leader=leader, candidate=target
    )
    wait_until(
        lambda: primary_of(env.state()) == target,
        env.settings.timeout(timeout_s),
        f"{target} serves as primary",
        interval_s=0.2,
    )
    harness.mark(s, "restore", f"switchover-{leader}-{target}")
    return {"leader": leader, "candidate": target, "injected_wall": entry["wall"]}


def replication_link_latency(
    latency_ms: int = 1500, jitter_ms: int = 0, *, configuration: Configuration
) -> dict[str, Any]:
    """Latency on the current primary's replication link (WAL to both standbys): replay lag
    grows past the 1 s objective; with a synchronous standby, commits wait for it too."""
    primary = primary_of(harness.environment(harness.settings_of(configuration)).state())
    if primary is None:
        raise RuntimeError("no primary")
    return add_toxic(
        f"{primary}-replication",
        "latency",
        {"latency": latency_ms, "jitter": jitter_ms},
        stream="downstream",
        name="replication-latency",
        configuration=configuration,
    )


def lock_writes(
    seconds: float = 8.0, table: str = "requests", *, configuration: Configuration
) -> dict[str, Any]:
    """Hold a SHARE lock on `table` for `seconds` through the write path, as a migration or a
    batch job does: every write to it (submits, the workers' status changes) waits, reads go
    on, nothing fails (a stall). The fault runs from when the lock was granted to its release,
    which also happens when this action is interrupted (or its process dies: PostgreSQL drops
    the lock with the connection)."""
    s = harness.settings_of(configuration)
    url = harness.environment(s).state().urls["write"]
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(table)))
        entry = harness.mark(s, "inject", f"lock-{table}", table=table, seconds=seconds)
        try:
            time.sleep(seconds)
        finally:
            conn.rollback()  # the end of the transaction releases the lock
            done = harness.mark(s, "restore", f"lock-{table}")
    return {"locked_s": round(done["wall"] - entry["wall"], 3), "injected_wall": entry["wall"]}
