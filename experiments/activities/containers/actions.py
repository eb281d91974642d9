"""Chaos actions only the containers runtime can give (`env.containers`): a real network
partition (of the PostgreSQL primary, or of a Redis master), a frozen container, CPU starved,
and memory squeezed until the kernel OOM-kills.

On any other runtime each raises `NeedsContainers` before touching anything (`cwh chaos run`
refuses such an experiment with exit code 2 first). Every fault is journalled, and undone by
`restore_everything` (`experiments.harness.restore_all`) whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import requests
from docker.errors import DockerException

from env import containers
from experiments import harness
from experiments.pg_failover import primary_of
from experiments.pg_partition import cut_primary, isolated_rows
from experiments.redis_partition import measure_redis_partition
from experiments.settings import Configuration
from slo.ledger import write_atomic


def partition_primary(
    hold_s: float = 30, timeout_s: float = 60, *, configuration: Configuration
) -> dict[str, Any]:
    """Cut the PostgreSQL primary off from its replicas, etcd and the replication links for
    `hold_s` (its clients still reach it), then heal (`experiments.pg_partition`). Returns, in
    seconds from the cut, when the isolated member stopped claiming the primary role (None: it
    still did at the heal) and when another member served as primary, how long both claimed it,
    and the requests the isolated member committed that the new primary lacks (read from each
    member before the heal; the rewind that follows discards them). Also in partition.json."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    killed, watch = cut_primary(env, env.state())
    fault = f"partition-primary-{killed['name']}"
    try:
        harness.mark(s, "inject", fault, member=killed["name"], cut_from=killed["cut_from"])
        deadline = watch.cut_at + max(hold_s, s.env.timeout(timeout_s))
        # Held at least `hold_s`, and until the cluster moved on (or the deadline).
        while time.monotonic() < deadline and (
            time.monotonic() < watch.cut_at + hold_s or watch.promoted_at is None
        ):
            time.sleep(0.2)
        rows = isolated_rows(env, killed["name"], killed["cut_wall"], "requests", "request_id")
    finally:
        try:
            containers.heal(env.settings, killed["name"])
        finally:
            watch.healed()
            harness.mark(s, "restore", fault)
    result = {
        "member": killed["name"],
        "cut_from": killed["cut_from"],
        **watch.timings(),
        "isolated_committed": rows.get("committed"),
        "isolated_not_on_new_primary": rows.get("missing"),
        "isolated_not_on_new_primary_before_cut": rows.get("missing_before"),
        **({"error": rows["error"]} if "error" in rows else {}),
    }
    # For chaos.json and chaos.md (`cwh.chaos`), beside the journal.
    write_atomic(harness.run_dir(s) / "partition.json", json.dumps(result, indent=2))
    return result


def partition_redis_master(
    hold_s: float = 30, timeout_s: float = 60, *, configuration: Configuration
) -> dict[str, Any]:
    """Cut a Redis master off from every other node (its replica and the cluster bus) for at
    least `hold_s` and until its replica took its slots over and it refused writes (at most
    `timeout_s`, scaled), while a client on the host writes to it directly
    (`experiments.redis_partition`); then heal and wait until the cluster is whole again.
    Returns, in seconds from the cut, when it first refused a write (None: it never did) and
    when its replica was promoted, the writes it accepted while cut and those of its
    acknowledged writes lost after the heal. Also in redis-partition.json."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    fault: list[str] = []

    def cut(what: dict[str, Any]) -> None:
        fault.append(f"partition-redis-{what['master']}")
        harness.mark(s, "inject", fault[0], member=what["master"], cut_from=what["cut_from"])

    def healed() -> None:
        if fault:
            harness.mark(s, "restore", fault[0])

    result = measure_redis_partition(
        env, hold_s=hold_s, timeout_s=timeout_s, on_cut=cut, on_heal=healed
    )
    # For chaos.json and chaos.md (`cwh.chaos`), beside the journal.
    write_atomic(harness.run_dir(s) / "redis-partition.json", json.dumps(result, indent=2))
    return result


def freeze(
    replica: str = "", kind: str = "", hold_s: float = 30, *, configuration: Configuration
) -> dict[str, Any]:
    """`docker pause` one replica (`replica`, or the first of `kind`; `kind` "pg-primary" is
    the PostgreSQL primary) for `hold_s`, then thaw it: a process that stops answering without
    dying, which no exit code reveals."""
    s = harness.settings_of(configuration)
    name = replica or _pick(harness.environment(s).state(), kind)
    env = harness.environment(s).settings  # the runtime it really runs on
    frozen = containers.pause(env, name)
    fault = f"freeze-{name}"
    harness.mark(s, "inject", fault, **frozen)
    try:
        time.sleep(max(0.0, hold_s))
    finally:
        containers.unpause(env, name)
        harness.mark(s, "restore", fault)
    return {**frozen, "held_s": hold_s}


def starve_cpu(
    replica: str = "api1", cpu_m: int = 50, hold_s: float = 30, *, configuration: Configuration
) -> dict[str, Any]:
    """Cut one replica's CPU limit to `cpu_m` millicores for `hold_s`, then put it back."""
    s = harness.settings_of(configuration)
    env = harness.environment(s).settings  # the runtime it really runs on
    done = containers.set_limits(env, replica, cpu_m=cpu_m)
    fault = f"starve-cpu-{replica}"
    harness.mark(s, "inject", fault, **done)
    try:
        time.sleep(max(0.0, hold_s))
    finally:
        containers.reset_limits(env, replica)
        harness.mark(s, "restore", fault)
    return {**done, "held_s": hold_s}


def squeeze_memory(
    replica: str = "api1",
    limit_mb: int = 256,
    leak_mb_per_s: int = 64,
    timeout_s: float = 60,
    *,
    configuration: Configuration,
) -> dict[str, Any]:
    """Memory pressure up to the limit: cut `replica`'s memory limit to `limit_mb` (swap
    included), plant a leak in it growing `leak_mb_per_s` (`reference_impl.planted`), and wait
    for the kernel to OOM-kill it at the limit and the supervisor to bring it back (in a new
    container, with its usual limits), as a pod's OOMKilled and restart. Returns, from the
    leak's start, when it died (`killed_after_s`), whether the engine says the kernel killed it
    at its limit (`oom_killed`), the restart reason the supervisor recorded, and when it was
    healthy again (`back_after_s`; None: not within `timeout_s`). Also in squeeze.json."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    before = env.state().component(replica)
    url = f"http://127.0.0.1:{before.port('http')}/admin/planted"
    fault = f"squeeze-memory-{replica}"
    squeezed = containers.set_limits(env.settings, replica, memory_b=limit_mb << 20)
    harness.mark(s, "inject", fault, **squeezed, leak_mb_per_s=leak_mb_per_s)
    started = time.monotonic()
    killed_after = back_after = None
    now = before
    try:
        requests.post(url, json={"leak_mb_per_s": leak_mb_per_s}, timeout=5).raise_for_status()
        deadline = started + s.env.timeout(timeout_s)
        while time.monotonic() < deadline:
            now = env.state().component(replica)
            if killed_after is None and (now.restarts > before.restarts or now.pid != before.pid):
                killed_after = time.monotonic() - started
            if killed_after is not None and now.healthy and now.pid:
                back_after = time.monotonic() - started
                break
            time.sleep(0.2)
    finally:
        # The same container when it never died: its leak stopped, its limit put back. A new
        # container has neither, and one between containers (killed, not back) none to reset:
        # the rollback's restore_all looks again.
        try:
            with contextlib.suppress(requests.RequestException):
                requests.post(url, json={"reset": True}, timeout=5)
            with contextlib.suppress(DockerException):
                containers.reset_limits(env.settings, replica)
        finally:
            harness.mark(s, "restore", fault)
    reason = str(now.detail.get("last_restart_reason", "")) if killed_after is not None else ""
    result = {
        "replica": replica,
        "limit_mb": limit_mb,
        "leak_mb_per_s": leak_mb_per_s,
        "killed_after_s": _round(killed_after),
        "oom_killed": "OOM-killed" in reason,
        "restart_reason": reason,
        "back_after_s": _round(back_after),
        "container_before": before.container,
        "container_after": now.container,
    }
    write_atomic(harness.run_dir(s) / "squeeze.json", json.dumps(result, indent=2))
    return result


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


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
