"""Where a benchmark phase's CPU went, by role: the profile that says which part to make cheaper.

A phase's throughput on this 2-core machine is set by everything that shares the cores, not by
the part under test alone; this accounts every process's CPU time over the phase, grouped by what
it is: a reference service by its `CW_ROLE` (api, worker, ...), the fault proxy, this benchmark's
own load generator, and the rest by process name (postgres, pgbouncer, haproxy, redis-server).
It counts the whole machine (PostgreSQL's processes are not the supervisor's descendants, so a
process tree would miss them), so another environment or benchmark running meanwhile counts too.
"""

from __future__ import annotations

import os
from collections import defaultdict

import psutil

#: pid -> (group, user + system CPU seconds so far)
Snapshot = dict[int, tuple[str, float]]


def group_of(proc: psutil.Process, own_pid: int) -> str:
    """The role a process plays, for the CPU table."""
    if proc.pid == own_pid:
        return "load generator (this benchmark)"
    name: str = proc.name()
    cmdline = proc.cmdline()
    if name == "postgres":
        return postgres_group(cmdline[0] if cmdline else "")
    if not name.startswith("python"):
        return name
    if "env.faultproxy" in cmdline:
        return "fault proxy"
    if any("patroni" in arg for arg in cmdline):
        return "patroni"
    try:
        role: str = proc.environ().get("CW_ROLE", "")
    except psutil.AccessDenied:
        role = ""
    if role:
        return role
    return "python -c" if cmdline[1:2] == ["-c"] else " ".join(cmdline[1:3]) or name


#: PostgreSQL's auxiliary processes by the word in their title; every other one is a backend.
POSTGRES_AUXILIARIES = (
    "walsender",
    "walreceiver",
    "startup",
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum",
    "logical replication",
    "archiver",
)


def postgres_group(title: str) -> str:
    """`postgres: <aux>` for an auxiliary process (replication, recovery, ...), else `postgres:
    backend` (a session, here pgBouncer's server connections). The postmaster's title is its
    command line."""
    if not title.startswith("postgres:"):
        return "postgres: postmaster"
    for aux in POSTGRES_AUXILIARIES:
        if aux in title:
            return f"postgres: {aux}"
    return "postgres: backend"


def snapshot(own_pid: int | None = None) -> Snapshot:
    """Every process's group and CPU seconds now (those that vanish meanwhile are skipped)."""
    own = own_pid if own_pid is not None else os.getpid()
    taken: Snapshot = {}
    for proc in psutil.process_iter():
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                taken[proc.pid] = (group_of(proc, own), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return taken


def spent(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per group between two snapshots. A process started meanwhile counts from
    zero; one that ended meanwhile is lost (its time is gone with it), so the phases this
    measures keep their processes."""
    used: dict[str, float] = defaultdict(float)
    for pid, (group, cpu) in after.items():
        start = before.get(pid)
        base = start[1] if start is not None and start[0] == group else 0.0
        used[group] += max(0.0, cpu - base)
    return dict(sorted(used.items(), key=lambda kv: -kv[1]))
