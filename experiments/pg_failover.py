"""PostgreSQL primary failures under a steady write loop, measured from the client's side.

Each fault is three plain functions: inject (kill something, prove it died), took_effect (the
topology really changed), restore (put the environment back). `measure_failover` runs one of them
under a `WriteLoop` and returns the RTO and the reconciliation of acknowledged writes. Used by the
failover tests and `make bench-failover`; the Chaos Toolkit experiments will wrap the same steps.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from env.configs import worst_case_failover_s
from env.local import LocalEnvironment
from env.process import pid_alive, wait_until
from env.state import ComponentStatus, EnvStatus
from scenarios.write_loop import WriteLoop, present_ids
from slo.ledger import Operation
from slo.recovery import reconcile_writes, rto_s


def pg_members(status: EnvStatus) -> dict[str, ComponentStatus]:
    """The PostgreSQL members by name (their pids and timeline are in `detail`)."""
    return {c.name: c for c in status.of_kind("postgresql")}


def primary_of(status: EnvStatus) -> str | None:
    """The one member in the primary role, or None while there is not exactly one.

    Stricter than `status.primary` (the first leader Patroni lists): a fault took effect only
    when the roles settled on exactly one.
    """
    primary = [name for name, m in pg_members(status).items() if m.role == "primary"]
    return primary[0] if len(primary) == 1 else None


def wait_healthy(env: LocalEnvironment, timeout_s: float = 90) -> EnvStatus:
    """Poll the status until every component is healthy (every replica streaming)."""
    return wait_until(
        lambda: s if (s := env.state()).healthy else None,
        env.settings.timeout(timeout_s),
        "environment healthy (every component, every replica streaming)",
        interval_s=0.5,
    )


@dataclass
class Fault:
    """One way of losing the primary.

    Attributes:
        name: short name for reports.
        inject: kills the target given the status before the fault; returns what it killed.
        took_effect: (killed, status now) -> True once a new primary serves.
        restore: (env, killed) -> None; puts the environment back.
        account: (the write loop's operations, killed) -> what the fault adds to the result,
            once it is restored (None: nothing).
    """

    name: str
    inject: Callable[[LocalEnvironment, EnvStatus], dict[str, Any]]
    took_effect: Callable[[dict[str, Any], EnvStatus], bool]
    restore: Callable[[LocalEnvironment, dict[str, Any]], None] = field(
        default=lambda env, killed: None
    )
    account: Callable[[list[Operation], dict[str, Any]], dict[str, Any]] | None = None


def _sigkill(pid: int, what: str) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 5, f"{what} (pid {pid}) dead")


def _inject_postgres(env: LocalEnvironment, status: EnvStatus) -> dict[str, Any]:
    name = primary_of(status)
    assert name is not None, "no primary to kill"
    member = pg_members(status)[name].detail
    _sigkill(member["postgres_pid"], f"postmaster of {name}")
    return {"name": name, "pid": member["postgres_pid"], "timeline": member["timeline"]}


def _promoted(killed: dict[str, Any], now: EnvStatus) -> bool:
    name = primary_of(now)
    return name is not None and (pg_members(now)[name].detail["timeline"] or 0) > killed["timeline"]


def _inject_patroni(env: LocalEnvironment, status: EnvStatus) -> dict[str, Any]:
    name = primary_of(status)
    assert name is not None, "no primary to kill"
    member = pg_members(status)[name].detail
    # A lost node stays lost for the measurement: no instant restart by the supervisor.
    env.hold(name, 300)
    _sigkill(member["patroni_pid"], f"Patroni of {name}")
    return {"name": name, "pid": member["patroni_pid"], "timeline": member["timeline"]}


def _replaced(killed: dict[str, Any], now: EnvStatus) -> bool:
    name = primary_of(now)
    return name is not None and name != killed["name"]


def _release(env: LocalEnvironment, killed: dict[str, Any]) -> None:
    env.release(killed["name"])


#: SIGKILL the primary's postmaster; Patroni lives on and hands over to the sync standby.
KILL_POSTGRES = Fault("kill-primary-postgres", _inject_postgres, _promoted)
#: SIGKILL the primary's Patroni and keep it down: its leader key must expire first.
KILL_PATRONI = Fault("kill-primary-patroni", _inject_patroni, _replaced, _release)


def measure_failover(
    env: LocalEnvironment,
    fault: Fault,
    rate_per_s: float = 50.0,
    consecutive: int = 10,
) -> dict[str, Any]:
    """Run `fault` under a write loop through the write path; restore; wait for full health.

    Returns a JSON-able dict: the fault, what was killed, the primary before and after, RTO in
    seconds (from the kill to the first of `consecutive` successful writes after the last one
    that failed or waited out the failover, `slo.recovery.rto_s`), the writes answered not ok
    after the fault began, and the reconciliation of every acknowledged write against the
    database after recovery.

    Raises:
        DeadlineExceeded: no new primary, or writes did not recover, within 3x the promised
            worst case; the environment is still restored.
    """
    before = wait_healthy(env)
    url = before.urls["write"]
    bound_s = env.settings.timeout(worst_case_failover_s() * 3)
    loop = WriteLoop(url, rate_per_s=rate_per_s, max_duration_s=bound_s + 120)
    loop.prepare()
    loop.start()
    killed: dict[str, Any] = {}
    try:
        wait_until(
            lambda: sum(o.outcome == "ok" for o in loop.snapshot()) >= 25,
            10,
            "writes flowing before the fault",
        )
        stall_s = write_bound_s()
        fault_s, fault_wall = time.monotonic(), time.time()
        killed = fault.inject(env, before)
        wait_until(
            lambda: fault.took_effect(killed, env.state()),
            bound_s,
            f"{fault.name}: a new primary serves",
            interval_s=0.2,
        )
        served_s = time.monotonic()

        def recovered() -> tuple[float] | None:
            ops = loop.snapshot()
            # A write that waited out the failover (pgBouncer holding it) is downtime too.
            rto = rto_s(ops, fault_s, consecutive=consecutive, bound_s=stall_s)
            since_served = sum(o.invoked_s >= served_s for o in ops)
            if rto is None or (rto == 0 and since_served < consecutive):
                # 0 (no write since the fault failed or waited) settles only once writes sent
                # after the new primary served are answered: the loop is sequential, so a write
                # still waiting out the failover is in the ledger by then.
                return None
            # Boxed: an RTO of 0 is an answer, the fault hurt no write (the caller judges that),
            # where a bare 0.0 would keep `wait_until` polling to a "writes recovered" timeout.
            return (rto,)

        (rto,) = wait_until(recovered, bound_s, f"{fault.name}: writes recovered", interval_s=0.2)
        after = env.state()
    finally:
        ops = loop.stop()
        if killed:
            fault.restore(env, killed)
    extra = fault.account(ops, killed) if fault.account and killed else {}
    present = set(present_ids(url, [o.op_id for o in ops]))
    result = reconcile_writes(ops, present, fault_wall)
    after_fault = [o for o in ops if o.invoked_s >= fault_s and o.outcome == "ok"]
    wait_healthy(env, timeout_s=120)
    return {
        "fault": fault.name,
        "killed": killed,
        "primary_before": primary_of(before),
        "primary_after": primary_of(after),
        "timeline_after": pg_members(after)[primary_of(after) or ""].detail["timeline"]
        if primary_of(after)
        else None,
        "rto_s": round(rto, 3),
        # Answered after the fault began, whenever sent: a write in flight when the primary
        # died fails after it (containers CI: the one write the kill cut was sent a moment
        # before `fault_s`, and "0 not ok" was printed beside its `info` in the ledger).
        "not_ok_after_fault": sum(1 for o in ops if o.completed_s >= fault_s and o.outcome != "ok"),
        # Which member acknowledged the writes after the fault (its port), and which member
        # had acknowledged the ones lost: a split brain shows as the old primary in both.
        "ok_after_fault_by_server": dict(Counter(str(o.server) for o in after_fault)),
        "lost_by_server": dict(
            Counter(str(o.server) for o in ops if o.outcome == "ok" and o.op_id not in present)
        ),
        "reconciliation": result,
        **extra,
    }


def write_bound_s() -> float:
    """The write path's latency objective: an answer later than it, having waited through a
    stall, counts against RTO (as in every chaos run)."""
    from experiments.activities.measure.probes import latency_bounds_s  # (imports the harness)

    return latency_bounds_s()["write"]
