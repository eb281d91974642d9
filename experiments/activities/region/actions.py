"""Region loss: the whole primary region gone at once (every member, its HAProxy, its services,
its supervisor), a second region that detects it, promotes its standby cluster and takes the
phones through the global entry point; and the restore that puts the primary region back.

The second region is the experiment's own: `standby_region_up` builds it fresh beside the
environment under test (`CWH_STANDBY_OF`, base port + `offset`, a small topology) and the
restore removes it, so a run leaves the machine as it found it. Where it runs is written to the
run folder (`region.json`), for the fleet (its global entry point), the rollbacks and a later
`cwh chaos stop`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg

from env import region
from env.local import LocalEnvironment
from env.process import pid_alive, processes_of, wait_until
from env.settings import EnvSettings
from experiments import harness
from experiments.settings import ChaosSettings, Configuration
from slo.ledger import write_atomic

#: The fault journal's name of the disaster.
LOSE_REGION = "lose-region"
#: Where the second region's base port is, from the environment's.
DEFAULT_OFFSET = 600


def _record(s: ChaosSettings) -> Path:
    return harness.run_dir(s) / "region.json"


def standby_settings(
    s: ChaosSettings, offset: int, failover_s: float, link_latency_ms: int = 35
) -> EnvSettings:
    """The second region of the environment under test: a standby of it at base port +
    `offset`, beside its run directory, failing over by itself after `failover_s`; small
    (two members, one replica of each service but two API and two workers, no Redis replicas,
    no autoscaler): a pilot light, and this machine runs both regions and the fleet."""
    base = s.env.base_port + offset
    return dataclasses.replace(
        s.env,
        base_port=base,
        run_dir=s.env.run_dir.with_name(f"{s.env.run_dir.name}-region2"),
        pg_members=2,
        redis_replicas_per_master=0,
        api_replicas=2,
        hub_replicas=1,
        worker_replicas=2,
        scheduler_replicas=1,
        autoscale=False,
        backups=False,
        standby_of=s.env.base_port,
        standby_source_dir=str(s.env.run_dir),
        region_failover_s=failover_s,
        region_latency_ms=link_latency_ms,
    )


def second_region(s: ChaosSettings) -> LocalEnvironment | None:
    """The run's second region, when `standby_region_up` built one."""
    path = s.run_dir / "region.json"
    if not path.exists():
        return None
    settings = EnvSettings.from_environ(json.loads(path.read_text())["settings"])
    return LocalEnvironment(settings)


def standby_region_up(
    offset: int = DEFAULT_OFFSET,
    failover_s: float = 15,
    link_latency_ms: int = 35,
    max_lag_s: float = 2,
    timeout_s: float = 300,
    *,
    configuration: Configuration,
) -> dict[str, Any]:
    """Build the second region from scratch (cloned from the environment under test over the
    region link, `link_latency_ms` each way) and wait until it streams with its heartbeat lag
    under `max_lag_s` plus the link's round trip. Returns its base port, the global entry
    point's URL and how long it took."""
    s = harness.settings_of(configuration)
    settings = standby_settings(s, offset, failover_s, link_latency_ms)
    max_lag_s += 2 * link_latency_ms / 1000
    # Written first: a rollback after a failed start still finds and removes it.
    write_atomic(_record(s), json.dumps({"settings": settings.to_environ()}))
    env = LocalEnvironment(settings)
    began = time.monotonic()
    env.reset()  # a second region left by an earlier run is not this one's copy
    env.up(timeout_s=settings.timeout(timeout_s))

    def streaming() -> dict[str, Any] | None:
        link = env.status()["region"]
        lag = link.get("lag_s")
        return link if link["streaming"] and lag is not None and lag < max_lag_s else None

    link = wait_until(streaming, settings.timeout(120), "the second region streaming", 1.0)
    return {
        "base_port": settings.base_port,
        "run_dir": str(settings.run_dir),
        "global_entry": link["global_entry"]["url"],
        "lag_s": link["lag_s"],
        "failover_after_s": failover_s,
        "link_latency_ms": link_latency_ms,
        "up_s": round(time.monotonic() - began, 1),
    }


def lose_primary_region(*, configuration: Configuration) -> dict[str, Any]:
    """The primary region lost at once: every process of the environment under test SIGKILLed
    (its supervisor first, so nothing is restarted), bounded at 30 s. Its data stays on disk
    (as a region's volumes would, unreachable); nothing of it answers."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    status = env.state()
    # The primary's WAL position a moment before: what the second region must have received
    # for nothing to be lost (a lower bound: it may write a little more before the kill).
    last_lsn = _current_lsn(status.urls["members"].get(status.primary or ""))
    supervisor = env.supervisor_pid()
    killed: list[int] = []
    killed_wall = time.time()
    if supervisor is not None:
        os.kill(supervisor, signal.SIGKILL)
        killed.append(supervisor)
    deadline = time.monotonic() + 30
    # Until none is left: a child may be mid-fork when its parent dies.
    while (procs := processes_of(s.env.run_dir)) and time.monotonic() < deadline:
        for p in procs:
            if pid_alive(p.pid):
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p.pid)
        wait_until(
            lambda: not any(pid_alive(p.pid) for p in procs), 10, "the region's processes dead"
        )
    if left := processes_of(s.env.run_dir):
        raise RuntimeError(f"the region's processes survive SIGKILL: {[p.pid for p in left]}")
    entry = harness.mark(
        s,
        "inject",
        LOSE_REGION,
        wall=killed_wall,
        killed_pids=len(killed),
        primary=status.primary,
        last_lsn=last_lsn,
        components=sorted(c.name for c in status.components),
    )
    return {"killed_pids": len(killed), "primary": status.primary, "injected_wall": entry["wall"]}


def _current_lsn(url: str | None) -> str | None:
    if not url:
        return None
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else None


def wal_not_carried(last_lsn: str | None, received_lsn: str | None) -> int | None:
    """Bytes of WAL the lost primary had written (at least: `last_lsn` is read just before the
    kill) that the second region never received; None when either position is unknown."""
    if not last_lsn or not received_lsn:
        return None
    return max(0, region.lsn_bytes(last_lsn) - region.lsn_bytes(received_lsn))


def await_region_failover(
    timeout_s: float = 300, *, configuration: Configuration
) -> dict[str, Any]:
    """Wait until the second region serves: promoted (by itself), its services healthy, the
    global entry point sending the phones to it. Marks the region loss restored for the phones
    (the primary region stays lost until the restore) and returns the failover's timeline, in
    seconds from the loss: detected (the promotion began), promoted, serving."""
    s = harness.settings_of(configuration)
    env = second_region(s)
    if env is None:
        raise RuntimeError("no second region in this run (standby_region_up did not run)")
    (loss,) = [e for e in harness.fault_journal(s) if e["fault"] == LOSE_REGION]

    def serving() -> dict[str, Any] | None:
        status = env.status()
        reg = status["region"]
        entry = reg.get("global_entry") or {}
        done = reg["role"] == "promoted" and entry.get("failed_over") and status["healthy"]
        return status if done else None

    status = wait_until(serving, env.settings.timeout(timeout_s), "the second region serving", 1.0)
    served_wall = time.time()
    failover = status["region"].get("failover") or {}
    entry = harness.mark(s, "restore", LOSE_REGION, by="failover", served_wall=served_wall)
    began = failover.get("promote_began")
    timeline = {
        "automatic": bool(failover.get("automatic")),
        "failover_after_s": status["region"]["failover_after_s"],
        "lost_seen_s": _since(failover.get("lost_since"), loss["wall"]),
        "promotion_began_s": _since(began, loss["wall"]),
        "promoted_s": _since(began + failover["seconds"] if began else None, loss["wall"]),
        "serving_s": round(served_wall - loss["wall"], 2),
        "leader": failover.get("leader") or status["primary"],
        "timeline": failover.get("timeline"),
        "last_lsn": loss.get("last_lsn"),
        "received_lsn": failover.get("received_lsn"),
        "wal_not_carried_bytes": wal_not_carried(
            loss.get("last_lsn"), failover.get("received_lsn")
        ),
    }
    write_atomic(s.run_dir / "region-failover.json", json.dumps(timeline, indent=2))
    return {**timeline, "restored_wall": entry["wall"]}


def _since(wall: float | None, start: float) -> float | None:
    return None if wall is None else round(wall - start, 2)


def restore_primary_region(
    timeout_s: float = 300, *, configuration: Configuration
) -> dict[str, Any]:
    """Put the machine back as the run found it: the primary region started again from its
    data, as it was at the loss; what it had committed that the second region never received
    counted (`divergence`, into `region-divergence.json`); then the second region removed
    (stopped, its run directory deleted: it held the writes since the failover, which a drill
    discards). Safe to call whatever happened: a rollback after any step."""
    s = harness.settings_of(configuration)
    out: dict[str, Any] = {}
    env = harness.environment(s)
    if env.supervisor_pid() is None:
        began = time.monotonic()
        env.up(timeout_s=s.env.timeout(timeout_s))
        out["primary_region_up_s"] = round(time.monotonic() - began, 1)
    env2 = second_region(s)
    losses = [e for e in harness.fault_journal(s) if e["fault"] == LOSE_REGION]
    path = s.run_dir / "region-divergence.json"
    if env2 is not None and losses and not path.exists():
        try:
            out["divergence"] = divergence(env, env2, losses[0]["wall"])
            write_atomic(path, json.dumps(out["divergence"], indent=2))
        except Exception as exc:  # best effort: the removal below must happen regardless
            out["divergence_error"] = f"{type(exc).__name__}: {exc}"
    if env2 is not None:
        env2.reset()
        out["second_region_removed"] = str(env2.settings.run_dir)
    for fault in harness.open_faults(s):
        if fault["fault"] == LOSE_REGION:
            harness.mark(s, "restore", LOSE_REGION, by="restore")
    return out


#: How far before the loss the divergence looks (the link carries a write within a second).
DIVERGENCE_WINDOW_S = 600


def divergence(
    primary: LocalEnvironment, second: LocalEnvironment, loss_wall: float
) -> dict[str, Any]:
    """The requests the lost region had committed (created in the `DIVERGENCE_WINDOW_S` before
    `loss_wall`) that the promoted second region does not have: the asynchronous link's tail,
    acknowledged to a phone or not, in the database's own terms (the ledger's RPO counts only
    what phones were told). Both regions must serve. Returns how many the lost region
    committed in the window, those the second region lacks, and how long before the loss the
    oldest and newest of those committed."""
    since = loss_wall - DIVERGENCE_WINDOW_S
    sql = (
        "SELECT request_id::text, EXTRACT(EPOCH FROM created_at)::float8 FROM requests"
        " WHERE created_at >= to_timestamp(%s) AND created_at <= to_timestamp(%s)"
    )
    with psycopg.connect(primary.state().urls["write"], connect_timeout=5) as conn:
        committed: dict[str, float] = dict(conn.execute(sql, (since, loss_wall + 1)).fetchall())
    with psycopg.connect(second.state().urls["write"], connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT request_id::text FROM requests WHERE request_id = ANY(%s::uuid[])",
            (list(committed),),
        ).fetchall()
    carried = {r[0] for r in rows}
    missing = {rid: at for rid, at in committed.items() if rid not in carried}
    ages = sorted(loss_wall - at for at in missing.values())
    return {
        "window_s": DIVERGENCE_WINDOW_S,
        "committed": len(committed),
        "not_carried": len(missing),
        "not_carried_ids": sorted(missing),
        "newest_s_before_loss": round(ages[0], 3) if ages else None,
        "oldest_s_before_loss": round(ages[-1], 3) if ages else None,
    }
