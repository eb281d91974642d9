"""Pod kill: SIGKILL a service replica; the supervisor restarts it, as Kubernetes would.

Each kill waits until the process is really dead and records the fault (the clock RTO counts
from) in the run's fault journal.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from env.process import pid_alive, wait_until
from env.state import ComponentStatus
from experiments import harness
from experiments.activities.process.probes import leader_scheduler, service_rows
from experiments.settings import Configuration


def _slot(name: str) -> int:
    """api12 -> 12 (0 without a number)."""
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0


def kill_service(
    role: str,
    which: str = "first",
    mid_job: bool = False,
    wait_busy_s: float = 30,
    *,
    configuration: Configuration,
) -> dict[str, Any]:
    """SIGKILL one replica of `role`: a service (api, hub, worker, scheduler) or another
    component kind of `cwh env status` (haproxy, pgbouncer, etcd, ...).

    Args:
        which: "first" (the first healthy replica by name), "newest" (the healthy replica in
            the highest slot: one a scale-out added), "leader" (the scheduler that leads), or a
            component name such as "api2".
        mid_job: for workers: wait (up to `wait_busy_s`) until the replica is processing a job,
            so the kill interrupts one (its claim must expire and another worker finish it).

    Returns what was killed: component, pid, and when. On the kubernetes runtime, a pod of
    the role deleted through chaosk8s (`experiments.kube.pods.kill_service`): its name, uid
    and node instead of a pid.
    """
    s = harness.settings_of(configuration)
    if s.env.runtime == "kubernetes":
        from experiments.kube.pods import kill_service as kill_pod_of

        return kill_pod_of(s, role, which, mid_job, wait_busy_s)
    rows = [r for r in service_rows(role, configuration=configuration) if r.healthy]
    if which == "leader":
        name = leader_scheduler(configuration=configuration)
        target = next(r for r in rows if r.name == name)
    elif which in ("first", "newest"):
        if not rows:
            raise RuntimeError(f"no healthy {role} replica to kill")
        # newest: the highest slot, a replica a scale-out just added.
        target = rows[0] if which == "first" else max(rows, key=lambda r: _slot(r.name))
    else:
        named = [r for r in rows if r.name == which]
        if not named:
            raise RuntimeError(f"{which} is not a healthy {role} replica")
        target = named[0]
    if mid_job:
        wait_until(
            lambda: harness.service_metric(s, target.name, "cw_jobs_in_flight") >= 1,
            wait_busy_s,
            f"{target.name} processing a job",
            interval_s=0.05,
        )
    if target.pid is None:
        raise RuntimeError(f"{target.name} has no process to kill")
    pid = target.pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 5, f"{target.name} (pid {pid}) dead")
    entry = harness.mark(s, "inject", f"kill-{target.name}", component=target.name, pid=pid)
    return {"component": target.name, "pid": pid, "injected_wall": entry["wall"]}


def wait_restarted(timeout_s: float = 60, *, configuration: Configuration) -> list[dict[str, Any]]:
    """Wait until the supervisor restarted every killed service (the open `kill-` faults of the
    run) and each is healthy again (api and hub: back in the load balancer); marks them
    restored. On the kubernetes runtime: each killed pod replaced by a new Ready one."""
    s = harness.settings_of(configuration)
    if s.env.runtime == "kubernetes":
        from experiments.kube.pods import wait_restarted as wait_replaced

        return wait_replaced(s, timeout_s)
    env = harness.environment(s)
    out = []
    for fault in harness.open_faults(s):
        if not fault["fault"].startswith("kill-") or "component" not in fault:
            continue
        name, old_pid = fault["component"], fault["pid"]

        def back(name: str = name, old_pid: int = old_pid) -> ComponentStatus | None:
            row = env.state().component(name)
            fresh = row.pid is not None and row.pid != old_pid
            return row if fresh and row.healthy else None

        row = wait_until(back, env.settings.timeout(timeout_s), f"{name} restarted and healthy")
        entry = harness.mark(s, "restore", fault["fault"], pid=row.pid)
        out.append(
            {
                "component": name,
                "pid": row.pid,
                "restarts": row.restarts,
                "down_s": round(entry["wall"] - fault["wall"], 3),
            }
        )
    return out


def restore_everything(wait_s: float = 180, *, configuration: Configuration) -> dict[str, Any]:
    """Release every held component, remove every toxic, clean every knob; wait for health."""
    return harness.restore_all(harness.settings_of(configuration), wait_s=wait_s)
