"""Chaos actions only the containers runtime can give (`env.containers`): a real network
partition, a frozen container, CPU starved and memory squeezed at run time.

On any other runtime each raises `NeedsContainers` before touching anything (`cwh chaos run`
refuses such an experiment with exit code 2 first). Every fault is journalled, and undone by
`restore_everything` (`experiments.harness.restore_all`) whatever happened.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import requests

from env import containers
from env.process import DeadlineExceeded
from experiments import harness
from experiments.pg_failover import pg_members, primary_of
from experiments.pg_partition import peers_of, read_member
from experiments.settings import Configuration
from slo.ledger import write_atomic


def partition_primary(
    hold_s: float = 30, timeout_s: float = 60, *, configuration: Configuration
) -> dict[str, Any]:
    """Cut the PostgreSQL primary off from its replicas, etcd and the replication links for
    `hold_s` (its clients still reach it), then heal. Returns when the isolated member stopped
    claiming the primary role (fenced) and another served as primary, in seconds from the cut,
    how long both claimed it, and the requests the isolated member committed that the new
    primary lacks (read from it before the heal; the rewind that follows discards them)."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    before = env.state()
    name = primary_of(before)
    if name is None:
        raise RuntimeError("no single primary to cut off")
    members = pg_members(before)
    member = members[name]
    others = [m.port("patroni") for n, m in members.items() if n != name]
    cut = containers.partition(s.env, name, peers_of(before, name))
    fault = f"partition-primary-{name}"
    entry = harness.mark(s, "inject", fault, **cut)
    t0 = time.monotonic()
    fenced = promoted = None
    deadline = t0 + s.env.timeout(timeout_s)
    try:
        while time.monotonic() < deadline and (fenced is None or promoted is None):
            now = time.monotonic() - t0
            if fenced is None and not _claims_primary(member.port("patroni")):
                fenced = round(now, 3)
            # Patroni's own answers, a fifth of a second apart (the whole status takes longer).
            if promoted is None and any(_claims_primary(port) for port in others):
                promoted = round(now, 3)
            time.sleep(0.2)
        remaining = t0 + hold_s - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        isolated = _isolated_requests(env.state(), name, entry["wall"], s.env.timeout(60))
    finally:
        containers.heal(s.env, name)
        harness.mark(s, "restore", fault)
    both = None
    if promoted is not None:
        both = round(max(0.0, (fenced if fenced is not None else hold_s) - promoted), 3)
    result = {
        "member": name,
        "cut_from": cut["peers"],
        "fenced_after_s": fenced,
        "promoted_after_s": promoted,
        "both_primary_s": both,
        **isolated,
    }
    # For chaos.json and chaos.md (`cwh.chaos`), beside the journal.
    write_atomic(harness.run_dir(s) / "partition.json", json.dumps(result, indent=2))
    return result


def _claims_primary(patroni_port: int) -> bool:
    """Patroni's `/primary` answers 200: what HAProxy routes writes by."""
    try:
        return requests.get(f"http://127.0.0.1:{patroni_port}/primary", timeout=1).ok
    except requests.RequestException:
        return False


def _isolated_requests(status: Any, member: str, since: float, timeout_s: float) -> dict[str, Any]:
    """Requests the isolated member holds from after the cut that the new primary lacks."""
    sql = "SELECT request_id::text FROM requests WHERE created_at >= to_timestamp(%s)"
    try:
        there = read_member(status.urls["members"][member], sql, (since,), timeout_s)
        with psycopg.connect(status.urls["write"], connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT request_id::text FROM requests WHERE request_id = ANY(%s::uuid[])",
                (sorted(there),),
            ).fetchall()
    except (psycopg.Error, DeadlineExceeded) as exc:
        return {"isolated_committed": None, "isolated_not_on_new_primary": None, "error": str(exc)}
    missing = there - {r[0] for r in rows}
    return {"isolated_committed": len(there), "isolated_not_on_new_primary": len(missing)}


def freeze(
    replica: str = "", kind: str = "", hold_s: float = 30, *, configuration: Configuration
) -> dict[str, Any]:
    """`docker pause` one replica (`replica`, or the first of `kind`; `kind` "pg-primary" is
    the PostgreSQL primary) for `hold_s`, then thaw it: a process that stops answering without
    dying, which no exit code reveals."""
    s = harness.settings_of(configuration)
    name = replica or _pick(harness.environment(s).state(), kind)
    frozen = containers.pause(s.env, name)
    fault = f"freeze-{name}"
    harness.mark(s, "inject", fault, **frozen)
    try:
        time.sleep(max(0.0, hold_s))
    finally:
        containers.unpause(s.env, name)
        harness.mark(s, "restore", fault)
    return {**frozen, "held_s": hold_s}


def starve_cpu(
    replica: str = "api1", cpu_m: int = 50, hold_s: float = 30, *, configuration: Configuration
) -> dict[str, Any]:
    """Cut one replica's CPU limit to `cpu_m` millicores for `hold_s`, then put it back."""
    s = harness.settings_of(configuration)
    done = containers.set_limits(s.env, replica, cpu_m=cpu_m)
    fault = f"starve-cpu-{replica}"
    harness.mark(s, "inject", fault, **done)
    try:
        time.sleep(max(0.0, hold_s))
    finally:
        containers.set_limits(s.env, replica, cpu_m=containers.limits(s.env)["nano_cpus"] // 10**6)
        harness.mark(s, "restore", fault)
    return {**done, "held_s": hold_s}


def _pick(status: Any, kind: str) -> str:
    if kind == "pg-primary":
        name = primary_of(status)
        if name is None:
            raise RuntimeError("no single PostgreSQL primary to freeze")
        return str(name)
    comps = status.of_kind(kind)
    if not comps:
        raise RuntimeError(f"no component of kind {kind!r}")
    return str(comps[0].name)
