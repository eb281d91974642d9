"""Restoring the PostgreSQL cluster from the backup repository: the runbook of a lost cluster
(every member's data gone) and of a point-in-time recovery (a destructive mistake undone).

Patroni restores, as it would in production: the DCS forgets the old cluster, every member is
given a bootstrap method that runs `pgbackrest restore` (`backup.restore_bootstrap`), the first
member to take the initialize key restores the backup and replays the archived WAL (to its end,
or to just before the mistake), then promotes; the others clone it. HAProxy routes to whichever
member Patroni's REST API calls primary and pgBouncer goes through HAProxy, so the restored
cluster takes the lost one's addresses and nothing is re-pointed by hand. What was derived from
the database and outlives it (the API's cached request views in Redis) is dropped once the
restored primary serves: the database went back in time.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests

from env import backup, configs
from env.files import write_file
from env.local import LocalEnvironment
from env.process import DeadlineExceeded, pid_alive, wait_until
from env.secrets import Secrets
from env.state import EnvStatus

#: How long the members may stay down while they are replaced (the supervisor's longest hold);
#: the restore releases them as soon as their new configuration is written.
HOLD_S = 3600


def member_names(env: LocalEnvironment) -> list[str]:
    return [f"pg{m}" for m in range(env.settings.pg_members)]


def serving_primary(status: EnvStatus) -> str | None:
    """The one member that is primary and healthy (routed by HAProxy), or None."""
    rows = [r for r in status.of_kind("postgresql") if r.role == "primary" and r.healthy]
    return rows[0].name if len(rows) == 1 else None


def pick_backup(backups: list[dict[str, Any]], before_wall: float) -> dict[str, Any]:
    """The newest backup that ended before `before_wall` (a newer one starts past a target
    at that time: recovery could never reach it).

    Raises:
        ValueError: none ended before it.
    """
    done = [b for b in backups if not b["error"] and b["stop"] < before_wall]
    if not done:
        raise ValueError(
            f"no backup ended before {time.strftime('%H:%M:%S', time.gmtime(before_wall))} UTC:"
            " nothing to recover that point from"
        )
    return max(done, key=lambda b: b["stop"])


def _wipe(data: Path, owner: tuple[int, int]) -> None:
    """`data` gone, then an empty directory in its place (pgBackRest restores into it)."""

    def gone() -> bool:
        # A backend of a killed postmaster may still write for a moment: try again.
        shutil.rmtree(data, ignore_errors=True)
        return not data.exists()

    wait_until(gone, 10, f"{data} deleted", interval_s=0.2)
    data.mkdir(mode=0o700)
    os.chown(data, *owner)


def cluster_lost(env: LocalEnvironment) -> bool:
    """No member has a data directory with a cluster in it: only a restore brings it back
    (Patroni alone would wait forever for a leader to bootstrap from)."""
    return env.settings.backups and not any(
        (env.layout.pg_data(m) / "PG_VERSION").exists() for m in range(env.settings.pg_members)
    )


def lose_cluster(env: LocalEnvironment) -> dict[str, Any]:
    """Every member lost with its data: Patroni and PostgreSQL SIGKILLed, held down (the
    supervisor does not restart them), data directories deleted. Returns what was lost."""
    status = env.state()
    rows = status.of_kind("postgresql")
    for r in rows:
        env.hold(r.name, HOLD_S)
    killed: list[int] = []
    killed_wall = time.time()
    # Patroni first: a postmaster killed under a live Patroni would be restarted by it.
    for key in ("patroni_pid", "postgres_pid"):
        for r in rows:
            pid = r.detail.get(key)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    wait_until(
        lambda: not any(pid_alive(p) for p in killed),
        10,
        "every member's Patroni and postmaster dead",
        interval_s=0.1,
    )
    for m in range(env.settings.pg_members):
        data = env.layout.pg_data(m)
        st = env.layout.pg_member(m).stat()
        _wipe(data, (st.st_uid, st.st_gid))
        # Where Patroni moves the data of a bootstrap that failed: a lost member's too.
        shutil.rmtree(data.with_name(data.name + ".failed"), ignore_errors=True)
    return {
        "members": [r.name for r in rows],
        "primary": status.primary,
        "timeline": next((r.detail.get("timeline") for r in rows if r.role == "primary"), None),
        "killed_pids": killed,
        "killed_wall": killed_wall,
    }


def forget_cluster(env: LocalEnvironment) -> int:
    """Delete the cluster's keys from the DCS (leader, members, initialize, config, history):
    a Patroni that finds no cluster there bootstraps one. Returns how many keys went."""
    prefix = f"/service/{configs.cluster_name(env.settings)}/"
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    resp = requests.post(
        f"http://127.0.0.1:{env.settings.ports.etcd_client}/v3/kv/deleterange",
        json={"key": b64(prefix), "range_end": b64(end)},
        headers={"Authorization": env.etcd_token()},
        timeout=10,
    )
    resp.raise_for_status()
    return int(resp.json().get("deleted", 0))


def write_member_configs(
    env: LocalEnvironment, restore: Callable[[int], dict[str, Any]] | None
) -> None:
    """Every member's Patroni config, with the restore bootstrap method (`restore(member)`)
    or without (None: as the environment wrote it)."""
    lay = env.layout
    secrets = Secrets.load(lay.secrets)
    for m in range(env.settings.pg_members):
        path = lay.patroni_config(m)
        st = path.stat()
        text = configs.patroni_config(
            env.settings, lay, secrets, m, restore=restore(m) if restore else None
        )
        write_file(path, text, owner=(st.st_uid, st.st_gid))


def drop_request_cache(env: LocalEnvironment) -> int:
    """Delete the API's cached request views (`req:*`) from every Redis master: read from the
    database before the restore, they would go on serving what it no longer holds (seen: a
    point-in-time restore's dropped requests still answered 200 for their cache's 5 minutes).
    Returns how many went."""
    s, lay = env.settings, env.layout
    creds = configs.redis_admin_credentials(lay, Secrets.load(lay.secrets))
    deleted = 0
    for n in range(s.redis_nodes):
        node = redis.Redis(
            host="127.0.0.1",
            port=s.ports.redis(n),
            username=creds.username,
            password=creds.password,
            ssl=True,
            ssl_ca_certs=creds.ca_file,
            socket_timeout=5,
        )
        try:
            if node.info("replication").get("role") != "master":
                continue
            keys = list(node.scan_iter(match="req:*", count=1000))
            # One key per command: keys of several slots in one DEL are refused in a cluster.
            pipe = node.pipeline(transaction=False)
            for key in keys:
                pipe.unlink(key)
            deleted += sum(int(x) for x in pipe.execute()) if keys else 0
        finally:
            node.close()
    return deleted


def archive_now(env: LocalEnvironment, timeout_s: float = 60) -> str:
    """Close the primary's current WAL segment and wait until it is archived: a point-in-time
    restore can reach only what the archive holds. Returns the segment's name."""
    status = env.state()
    primary = serving_primary(status)
    if primary is None:
        raise RuntimeError("no primary serves: nothing to archive")
    try:
        return _switch_and_wait(env, status.urls["members"][primary], timeout_s)
    except psycopg.Error as exc:
        raise RuntimeError(f"cannot archive the current WAL segment on {primary}: {exc}") from None


def _switch_and_wait(env: LocalEnvironment, url: str, timeout_s: float) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.autocommit = True
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        segment = str(row[0])

        def archived() -> bool:
            got = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            return got is not None and got[0] is not None and str(got[0]) >= segment

        wait_until(archived, env.settings.timeout(timeout_s), f"{segment} archived")
    return segment


class RestoreFailed(RuntimeError):
    """A member's restore failed (Patroni moved its data aside): the cluster is down."""


def _wait_restored(env: LocalEnvironment, timeout_s: float) -> str:
    """The restored primary once it serves. Raises `RestoreFailed` as soon as a member's
    restore failed (Patroni renames the data directory of a failed bootstrap `data.failed`:
    a target recovery cannot reach fails every member in turn, so waiting is pointless)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for m in range(env.settings.pg_members):
            if env.layout.pg_data(m).with_name("data.failed").exists():
                raise RestoreFailed(
                    f"the restore failed on pg{m} (its log: {env.layout.log(f'pg{m}')}); every "
                    "member is down and held: run `cwh env restore` again (without a target, "
                    "to the end of the archive)"
                )
        with contextlib.suppress(Exception):  # the status of a cluster being born
            primary = serving_primary(env.state())
            if primary is not None:
                return primary
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"the restored primary serves: not true after {timeout_s} s")
        time.sleep(0.5)


def xact_status(env: LocalEnvironment, xid: str) -> str | None:
    """`committed`, `aborted`, `in progress`, or None (too old or never assigned): the
    primary's word on transaction `xid` (a full 64-bit id, as `pg_current_xact_id` gives)."""
    status = env.state()
    primary = serving_primary(status)
    if primary is None:
        raise RuntimeError("no primary serves: cannot check the transaction")
    try:
        with psycopg.connect(status.urls["members"][primary], connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
    except psycopg.Error as exc:
        if "in the future" in str(exc):
            return "not yet assigned"
        raise RuntimeError(f"cannot check transaction {xid}: {exc}") from None
    return None if row is None or row[0] is None else str(row[0])


def backup_when_free(env: LocalEnvironment, kind: str, wait_s: float = 600) -> dict[str, Any]:
    """A backup of `kind`; while another holds the stanza's lock (the scheduler's), waits for
    it (bounded) and tries again."""
    deadline = time.monotonic() + env.settings.timeout(wait_s)
    while True:
        try:
            return env.backup(kind)
        except RuntimeError as exc:
            if "[050]" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def restore_cluster(
    env: LocalEnvironment,
    target_xid: str = "",
    before_wall: float | None = None,
    timeout_s: float = 900,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replace the cluster with one restored from the repository, and wait until it serves
    with every replica streaming.

    Args:
        target_xid: recover to just before this transaction committed ("" : to the end of the
            archive). The newest backup that ended before `before_wall` is restored then.
        before_wall: when the mistake happened (epoch s); required with `target_xid`.
        timeout_s: for the restored primary to serve, and again for the replicas.
        progress: told each step as it starts.

    The members still running are lost first (a point-in-time restore replaces a live
    cluster); their archive is completed beforehand when a primary serves.

    Returns the backup restored, the target, and when each step ended (epoch s).
    """
    say = progress or (lambda _: None)
    started = time.time()
    if target_xid and not target_xid.isdigit():
        raise ValueError(f"--xid {target_xid!r}: a transaction id is a whole number")
    listed = env.backups()
    if not listed:
        raise RuntimeError("no backup to restore from: take one first (cwh env backup)")
    if target_xid:
        if before_wall is None:
            raise ValueError("a target transaction needs the time of the mistake (before_wall)")
        chosen = pick_backup(listed, before_wall)
    else:
        chosen = max((b for b in listed if not b["error"]), key=lambda b: b["stop"])
    status = env.state()
    archived = ""
    if serving_primary(status) is not None:
        if target_xid:
            # Checked while the cluster is alive: a target recovery can never reach would
            # leave no cluster at all.
            committed = xact_status(env, target_xid)
            if committed != "committed":
                raise ValueError(
                    f"transaction {target_xid} is {committed or 'unknown'} on the primary: "
                    "nothing to recover to just before"
                )
        say("archiving the current WAL segment")
        archived = archive_now(env)
    say("stopping every member and deleting its data")
    lost = lose_cluster(env)
    forgotten = forget_cluster(env)
    label = chosen["label"] if target_xid else ""
    write_member_configs(env, lambda m: backup.restore_bootstrap(env.layout, m, label, target_xid))
    restored = False
    try:
        say(f"restoring backup {chosen['label']} and replaying the archive")
        for name in member_names(env):
            env.release(name)
        primary = _wait_restored(env, env.settings.timeout(timeout_s))
        primary_wall = time.time()
        restored = True
        dropped = drop_request_cache(env)
        say("cloning the replicas")
        whole = wait_until(
            lambda: s if (s := env.state()).healthy else None,
            env.settings.timeout(timeout_s),
            "the restored cluster whole (every replica streaming)",
            interval_s=0.5,
        )
        whole_wall = time.time()
    finally:
        if not restored:
            # Never leave members free to start with `initdb`: on an empty data directory
            # and no cluster in the DCS, Patroni would make a new, empty database that calls
            # itself healthy. Down and held, the cluster stays lost, for another restore.
            lose_cluster(env)
            forget_cluster(env)
        write_member_configs(env, None)
    if target_xid:
        # The newest backup now lies on the abandoned timeline (taken after the mistake):
        # a later restore to the end of the archive would start from it and fail. A full
        # backup on the new timeline makes it the newest, as a runbook says to do.
        say("taking a full backup on the new timeline")
        backup_when_free(env, "full")
    row = whole.component(primary)
    return {
        "backup": chosen["label"],
        "backup_type": chosen["type"],
        "backup_stop_wall": chosen["stop"],
        "target_xid": target_xid or None,
        "archived_segment": archived or None,
        "lost": lost,
        "dcs_keys_deleted": forgotten,
        "cache_keys_dropped": dropped,
        "primary": primary,
        "timeline": row.detail.get("timeline"),
        "started_wall": started,
        "primary_wall": primary_wall,
        "whole_wall": whole_wall,
        "primary_s": round(primary_wall - started, 3),
        "whole_s": round(whole_wall - started, 3),
    }


#: The requests' columns a verify drill compares: the ones no later update changes.
_FINGERPRINT = (
    "SELECT count(*), coalesce(md5(string_agg(request_id::text || ':' || device_id::text || ':'"
    " || idempotency_key || ':' || encode(body_hash, 'hex'), ',' ORDER BY request_id)), '')"
    " FROM requests WHERE created_at <= %s"
)
#: Rows created this long before the newest restored one have surely committed before the
#: restored point (the API's inserts last milliseconds): the part both sides must agree on.
SETTLE_S = 10.0


def verify_passed(code: int, output: str) -> bool:
    """`pgbackrest verify`'s verdict: pgBackRest 2.45 exits 0 also when it found corrupt files
    (seen: a damaged archived segment, "status: error", exit 0), so its report decides too."""
    return code == 0 and "status: error" not in output and "invalid" not in output.lower()


def _as_pg(env: LocalEnvironment) -> dict[str, Any]:
    """subprocess keyword arguments that run a command as the PostgreSQL user."""
    st = env.layout.pg_root.stat()
    if os.geteuid() != 0:
        return {}
    return {"user": st.st_uid, "group": st.st_gid, "extra_groups": []}


def _pg_ctl(env: LocalEnvironment, data: Path, *args: str, timeout_s: float) -> None:
    done = subprocess.run(
        [f"{configs.PG_BIN}/pg_ctl", "-D", str(data), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=data.parent,
        **_as_pg(env),
    )
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl {args[-1]}: {(done.stdout + done.stderr).strip()[-500:]}")


@contextlib.contextmanager
def scratch_instance(
    env: LocalEnvironment, timeout_s: float = 600, phases: dict[str, float] | None = None
) -> Iterator[str]:
    """The newest backup restored into a scratch directory and started on its own port, out
    of recovery (the archive replayed to its end): yields a superuser URL over its socket.
    Stopped and deleted afterwards, whatever happened.

    `phases` gets `copy_s` (pgBackRest's restore of the backup's files) and `replay_s` (from
    starting PostgreSQL to the end of recovery: replaying the archive)."""
    phases = {} if phases is None else phases
    t0 = time.monotonic()
    lay, s = env.layout, env.settings
    root = lay.backup_pg_dir / "scratch"
    data, sock = root / "data", root / "sock"
    owner = lay.pg_root.stat()
    shutil.rmtree(root, ignore_errors=True)  # a leftover of a drill that was killed
    for d in (root, data, sock):
        d.mkdir(mode=0o700)
        os.chown(d, owner.st_uid, owner.st_gid)
    started = False
    try:
        done = subprocess.run(
            backup.scratch_restore_command(lay, data),
            capture_output=True,
            text=True,
            timeout=s.timeout(timeout_s),
            cwd=root,
            **_as_pg(env),
        )
        if done.returncode != 0:
            raise RuntimeError(f"pgbackrest restore: {(done.stdout + done.stderr).strip()}")
        phases["copy_s"] = round(time.monotonic() - t0, 3)
        t1 = time.monotonic()
        auto = data / "postgresql.auto.conf"
        with open(auto, "a") as f:
            f.write(backup.scratch_settings(s.ports.backup_scratch, sock))
        started = True
        log = root / "postgres.log"
        try:
            _pg_ctl(env, data, "-l", str(log), "-w", "-t", "300", "start", timeout_s=320)
        except RuntimeError as exc:
            # Its log goes with the scratch directory: say what it said.
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"{exc}\nthe scratch instance's log ends:\n{tail}") from None
        url = f"postgresql://postgres@/cloudwatcher?host={sock}&port={s.ports.backup_scratch}"

        def promoted() -> bool:
            with psycopg.connect(url, connect_timeout=5) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                return row is not None and row[0] is False

        wait_until(promoted, s.timeout(timeout_s), "the scratch restore out of recovery", 0.2)
        phases["replay_s"] = round(time.monotonic() - t1, 3)
        yield url
    finally:
        if started:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _pg_ctl(env, data, "-m", "immediate", "-w", "stop", timeout_s=60)
        shutil.rmtree(root, ignore_errors=True)


def verify_backup(
    env: LocalEnvironment, acked_walls: dict[str, float] | None = None, timeout_s: float = 600
) -> dict[str, Any]:
    """The weekly drill: the current WAL segment archived, `pgbackrest verify` (every file of
    every backup and archived segment checked against its checksum), then the newest backup
    plus the archive restored into a scratch instance and compared with the live cluster:
    count and checksum of the requests created up to `SETTLE_S` before the newest restored
    one; with `acked_walls` (request id -> when acknowledged), every request acknowledged by
    then must be in the restore.

    Returns what was checked; `wrong` counts the failed checks (0: the backup is good)."""
    started = time.time()
    status = env.state()
    primary = serving_primary(status)
    if primary is None:
        raise RuntimeError("no primary serves: nothing to compare the restore with")
    # What is committed now goes into the archive first: the drill checks today's data, not
    # what the archive held up to `archive_timeout` ago.
    archived = archive_now(env)
    verified = env.pgbackrest("verify", "--output=text", timeout_s=timeout_s)
    verify_ok = verify_passed(verified.returncode, verified.stdout + verified.stderr)
    phases: dict[str, float] = {}
    with scratch_instance(env, timeout_s, phases) as url:
        restored_wall = time.time()
        with psycopg.connect(url, connect_timeout=5) as scratch:
            row = scratch.execute("SELECT max(created_at) FROM requests").fetchone()
            newest = row[0] if row else None
            if newest is None:
                raise RuntimeError("the restored database has no requests to compare")
            cutoff = newest - timedelta(seconds=SETTLE_S)
            restored = scratch.execute(_FINGERPRINT, (cutoff,)).fetchone()
            missing: list[str] = []
            due: list[str] = []
            if acked_walls:
                due = [r for r, at in acked_walls.items() if at <= cutoff.timestamp()]
                have = scratch.execute(
                    "SELECT request_id::text FROM requests WHERE request_id = ANY(%s::uuid[])",
                    (due,),
                ).fetchall()
                missing = sorted(set(due) - {h[0] for h in have})
        with psycopg.connect(status.urls["members"][primary], connect_timeout=5) as live:
            current = live.execute(_FINGERPRINT, (cutoff,)).fetchone()
    assert restored is not None
    assert current is not None
    same = tuple(restored) == tuple(current)
    return {
        "archived_segment": archived,
        "verify_ok": verify_ok,
        "verify_output": (verified.stdout + verified.stderr).strip()[-2000:],
        "cutoff": cutoff.isoformat(),
        "rows": restored[0],
        "checksum": restored[1],
        "live_rows": current[0],
        "live_checksum": current[1],
        "same_as_live": same,
        "acknowledged_checked": len(due),
        "acknowledged_missing": len(missing),
        "missing_ids": missing[:10],
        "wrong": (not verify_ok) + (not same) + len(missing),
        "restore_s": round(restored_wall - started, 3),
        **phases,
        "total_s": round(time.time() - started, 3),
    }
