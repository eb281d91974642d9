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

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import requests

from env import configs, region
from env.configs import STANDBY_MEMBER_PREFIX
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


def _records(s: ChaosSettings) -> list[Path]:
    """Where the drill's second region is written: the run folder (its rollbacks) and the
    environment's run directory (`drill_record`: a `cwh chaos stop` after the drill's process
    died, from a run folder of its own, still finds it)."""
    return [harness.run_dir(s) / "region.json", drill_record(s.env)]


def drill_record(env: EnvSettings) -> Path:
    """The environment's own record of a region-loss drill's second region, while one exists."""
    return env.run_dir / "drill-second-region.json"


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
    """The second region `standby_region_up` built for this run, or for a drill on this
    environment whose restore has not run; None when there is none."""
    for path in _records(s):
        if path.exists():
            settings = EnvSettings.from_environ(json.loads(path.read_text())["settings"])
            return LocalEnvironment(settings)
    return None


def standby_region_up(
    offset: int = DEFAULT_OFFSET,
    failover_s: float = 15,
    link_latency_ms: int = 35,
    max_lag_s: float = 2,
    timeout_s: float = 600,
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
    env = LocalEnvironment(settings)
    # A second region a killed drill left behind (the environment's record, or this drill's
    # place) is not this one's copy: gone before the check below, which is about the user's.
    if (left := second_region(s)) is not None:
        left.reset()
    env.reset()
    status = harness.environment(s).state()
    primary_url = status.urls["members"].get(status.primary or "")
    try:  # a walsender of one just removed ends within moments
        wait_until(
            lambda: not _second_regions_streaming(primary_url),
            10,
            "no second region streaming",
            interval_s=1.0,
        )
    except TimeoutError:
        others = _second_regions_streaming(primary_url)
        raise RuntimeError(
            f"a second region already streams from this environment ({', '.join(others)}): the "
            "drill would take its primary region away (and it may promote itself); stop it first"
        ) from None
    # Written first: a rollback after a failed start still finds and removes it.
    for path in _records(s):
        write_atomic(path, json.dumps({"settings": settings.to_environ()}))
    began = time.monotonic()
    # Scaled by `up`; above the sum of a standby's stage limits (480 s, 300 of them the clone).
    env.up(timeout_s=timeout_s)

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


def _second_regions_streaming(url: str | None) -> list[str]:
    """The standby leaders of second regions streaming from the primary at `url` now."""
    if not url:
        return []
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_replication"
            " WHERE starts_with(application_name, %s)",
            (STANDBY_MEMBER_PREFIX,),
        ).fetchall()
    return sorted(str(r[0]) for r in rows)


def lose_primary_region(*, configuration: Configuration) -> dict[str, Any]:
    """The primary region lost at once: every process of the environment under test frozen
    (SIGSTOP, its supervisor first, so nothing is restarted or answers any more), the loss's
    time taken then, and the journal written, before they are SIGKILLed (bounded at 30 s). Its
    data stays on disk (as a region's volumes would, unreachable); nothing of it answers.

    Frozen first because a kill pass takes tens of milliseconds: a request acknowledged during
    it would be acknowledged after a loss time taken at its start, and its RPO measured to the
    next event instead.

    The region's network goes with it: the second region's end of the region link is cut at
    the freeze (`set_region_link`; enabled again once the region is dead), so the WAL the
    region had sent that had not yet crossed the link (up to the link's delay of it) is lost,
    as it is when a region's edge goes down. A link left up would go on delivering what it
    held after the loss: no tail to measure."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    status = env.state()
    # The primary's WAL position a moment before: what the second region must have received
    # for nothing to be lost (a lower bound: it may write a little more before the freeze).
    last_lsn = _current_lsn(status.urls["members"].get(status.primary or ""))
    second = second_region(s)  # read before the freeze: the cut follows it at once
    supervisor = env.supervisor_pid()
    frozen = ([supervisor] if supervisor is not None else []) + [
        p.pid for p in processes_of(s.env.run_dir) if p.pid != supervisor
    ]
    try:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(pid, signal.SIGSTOP)
        link_cut = set_region_link(second, enabled=False)
        entry = harness.mark(
            s,
            "inject",
            LOSE_REGION,
            processes=len(frozen),
            primary=status.primary,
            last_lsn=last_lsn,
            link_cut=link_cut,
            components=sorted(c.name for c in status.components),
        )
    finally:  # frozen is never left so: whatever happened, the kill pass follows
        try:
            killed = kill_region(s.env)
        finally:
            # What the link held is gone with its connections; enabled again it leads to a
            # dead region (refused), and the second region's status is not held unhealthy.
            enabled = set_region_link(second, enabled=True)
    return {
        "killed_pids": killed,
        "primary": status.primary,
        "injected_wall": entry["wall"],
        "link_cut": entry.get("link_cut"),
        "link_enabled_again": enabled,  # "enabled", else why not (the journal shows it)
    }


def set_region_link(second: LocalEnvironment | None, *, enabled: bool) -> str:
    """Disable (cut) or enable the region link in the second region's fault proxy. Disabled
    (Toxiproxy's `enabled: false`) it drops every connection with what it held and accepts
    none. What happened, for the journal: "cut" / "enabled", "no second region", or the error
    (the loss goes on all the same)."""
    if second is None:
        return "no second region"
    url = f"{second.settings.fault_api_url}/proxies/{configs.REGION_LINK}"
    try:
        resp = requests.post(url, json={"enabled": enabled}, timeout=5)
        resp.raise_for_status()
    except requests.RequestException as exc:
        return f"not {'enabled' if enabled else 'cut'}: {exc}"
    return "enabled" if enabled else "cut"


def kill_region(env: EnvSettings, timeout_s: float = 30) -> int:
    """SIGKILL every process of the environment (frozen ones too) until none is left, bounded;
    returns how many signals were sent. RuntimeError when some survive."""
    killed = 0
    deadline = time.monotonic() + timeout_s
    # Until none is left: a child forked while the others were being frozen was not.
    while (procs := processes_of(env.run_dir)) and time.monotonic() < deadline:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
                killed += 1
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not any(pid_alive(p.pid) for p in procs), 5, "killed")
    if left := processes_of(env.run_dir):
        raise RuntimeError(f"the region's processes survive SIGKILL: {[p.pid for p in left]}")
    return killed


def _frozen(env: EnvSettings) -> bool:
    """Whether a process of the environment is stopped (SIGSTOP): a region-loss drill cut
    between its freeze and its kill."""
    for p in processes_of(env.run_dir):
        with contextlib.suppress(OSError):
            # The state follows the command's closing parenthesis in /proc/<pid>/stat.
            if Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                return True
    return False


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
        # Without `seconds` when the promotion outlasted its wait (it went on all the same).
        "promoted_s": _since(
            began + failover["seconds"] if began and "seconds" in failover else None,
            loss["wall"],
        ),
        "serving_s": round(served_wall - loss["wall"], 2),
        "leader": failover.get("leader") or status["primary"],
        "timeline": failover.get("timeline"),
        "last_lsn": loss.get("last_lsn"),
        "received_lsn": failover.get("received_lsn"),
        # The tail is only the link's to lose when the link went with the region.
        "link_cut": loss.get("link_cut"),
        "wal_not_carried_bytes": wal_not_carried(loss.get("last_lsn"), failover.get("received_lsn"))
        if loss.get("link_cut") == "cut"
        else None,
    }
    write_atomic(s.run_dir / "region-failover.json", json.dumps(timeline, indent=2))
    return {**timeline, "restored_wall": entry["wall"]}


def _since(wall: float | None, start: float) -> float | None:
    return None if wall is None else round(wall - start, 2)


def restore_primary_region(
    timeout_s: float = 300, *, configuration: Configuration
) -> dict[str, Any]:
    """Put the machine back as the run found it: the primary region started again from its
    data, as it was at the loss (whatever of it survived a stopped drill swept away first);
    what it had committed that the second region never received counted (`divergence`, into
    `region-divergence.json`); then, whatever happened before, the second region removed
    (stopped, its run directory deleted: it held the writes since the failover, which a drill
    discards). Safe to call whatever happened: a rollback after any step."""
    s = harness.settings_of(configuration)
    out: dict[str, Any] = {}
    env = harness.environment(s)
    env2 = second_region(s)
    try:
        if _frozen(s.env):  # cut between its freeze and its kill: lost all the same
            kill_region(s.env)
        if env.supervisor_pid() is None:
            # Lost, or half lost (a drill stopped mid-kill): nothing of it may hold a port.
            env.down()
            began = time.monotonic()
            env.up(timeout_s=timeout_s)  # scaled by `up`
            out["primary_region_up_s"] = round(time.monotonic() - began, 1)
        else:
            env.up(timeout_s=timeout_s)  # at once when ready; waits when it is starting
        losses = [e for e in harness.fault_journal(s) if e["fault"] == LOSE_REGION]
        path = s.run_dir / "region-divergence.json"
        if env2 is not None and losses and not path.exists():
            try:
                out["divergence"] = divergence(env, env2, losses[0]["wall"])
                write_atomic(path, json.dumps(out["divergence"], indent=2))
            except Exception as exc:  # best effort: the tail is lost to the report, no more
                out["divergence_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if env2 is not None:
            try:
                out["second_region_logs"] = _keep_logs(env2, s.run_dir / "second-region-logs")
            finally:  # whatever the copy did (even Ctrl-C), the second region goes
                env2.reset()
            out["second_region_removed"] = str(env2.settings.run_dir)
        drill_record(s.env).unlink(missing_ok=True)
    for fault in harness.open_faults(s):
        if fault["fault"] == LOSE_REGION:
            harness.mark(s, "restore", LOSE_REGION, by="restore")
    return out


def _keep_logs(env: LocalEnvironment, into: Path) -> str | None:
    """The second region's logs, copied into the run folder before its run directory goes: a
    drill whose second region never came up is explained by them, and by nothing else."""
    try:
        if not env.layout.logs.is_dir():
            return None
        shutil.copytree(env.layout.logs, into, dirs_exist_ok=True)
    except OSError as exc:  # best effort: the restore goes on without them
        return f"not kept: {exc}"
    return str(into)


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
