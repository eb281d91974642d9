"""One-time bootstrapping of a fresh environment's data stores: what a cluster operator (or a
Helm hook) does once after the stores start, and what later starts find already done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from pathlib import Path

import asyncpg

from env import backup, configs, network, probes
from env.layout import Layout
from env.secrets import Secrets
from env.settings import EnvSettings
from reference_impl.backups import LOCK_HELD


class StartupError(RuntimeError):
    """A component did not become ready; names it and its log."""

    def __init__(self, component: str, log_path: Path, reason: str) -> None:
        super().__init__(f"{component} did not become ready: {reason} (log: {log_path})")
        self.component = component
        self.log_path = log_path
        self.reason = reason


async def _wait_or_kill(proc: asyncio.subprocess.Process, timeout_s: float) -> int:
    """The job's exit code. Killed and reaped when the wait times out or the start is cancelled
    (a sibling stage failed, `down`): left running, it would hold its lock or go on forming a
    cluster nobody waits for."""
    try:
        return await asyncio.wait_for(proc.wait(), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise


async def create_redis_cluster(
    settings: EnvSettings, ports: list[int], creds: probes.RedisCredentials
) -> None:
    """`redis-cli --cluster create` over the nodes, unless an earlier start formed it already."""
    info, _ = await probes.redis_cluster_view(ports[:1], creds)
    log_path = Layout(settings.run_dir).log("redis-cluster-create")
    assigned = info.get("cluster_slots_assigned")
    if assigned is not None and assigned not in ("0", "16384"):
        # A create stopped half-way (a start cancelled meanwhile): no create can finish it.
        raise StartupError(
            "redis-cluster-create",
            log_path,
            f"a half-formed cluster ({assigned} of 16384 slots assigned): `cwh env reset` "
            "makes it again",
        )
    if info.get("cluster_known_nodes") != "1" or assigned != "0":
        return  # formed at an earlier start
    replicas = str(settings.redis_replicas_per_master)
    argv = [
        "redis-cli",
        "--cluster",
        "create",
        # The addresses the nodes reach each other at (their containers' on that runtime).
        *(f"{network.host(settings, f'redis{n}')}:{p}" for n, p in enumerate(ports)),
        "--cluster-replicas",
        replicas,
        "--cluster-yes",
        *("--tls", "--cacert", creds.ca_file, "--user", creds.username),
    ]
    with open(log_path, "ab") as logf:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=logf,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            # The password through the environment: a command line is visible to `ps`.
            env={**os.environ, "REDISCLI_AUTH": creds.password},
        )
        try:
            code = await _wait_or_kill(proc, settings.timeout(60))
        except TimeoutError:
            raise StartupError("redis-cluster-create", log_path, "no answer in 60 s") from None
    if code != 0:
        raise StartupError("redis-cluster-create", log_path, f"exit code {code}")


async def create_app_database(
    settings: EnvSettings, secrets: Secrets, patroni_ports: list[int], tls: ssl.SSLContext
) -> None:
    """The application's role and database, created once on the primary (idempotent)."""
    ports = settings.ports
    members = await probes.patroni_cluster(patroni_ports)
    leader = next(m for m in members if m.role == "leader")
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=ports.postgres(configs.member_index(leader.name)),
        user="postgres",
        password=secrets.pg_superuser,
        database="postgres",
        ssl=tls,
        timeout=5,
    )
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'cloudwatcher'"):
            await conn.execute(f"CREATE ROLE cloudwatcher LOGIN PASSWORD '{secrets.pg_app}'")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'cloudwatcher'"):
            await conn.execute("CREATE DATABASE cloudwatcher OWNER cloudwatcher")
    finally:
        await conn.close()


async def create_backup_stanza(settings: EnvSettings, repo_user: tuple[int, int] | None) -> None:
    """pgBackRest's stanza for the cluster, created on the repository host once the primary
    runs (idempotent: a stanza that matches the cluster is left as it is). Until it exists the
    primary's archive command fails and PostgreSQL keeps the segments to push them again.

    Those pushes hold the stanza's archive lock for a moment, about once a second for the first
    seconds of a new primary: a stanza-create that meets one ([050] lock held) is tried again
    after `STANZA_LOCK_RETRY_S`, within the same 120 s (scaled)."""
    layout = Layout(settings.run_dir)
    log_path = layout.log("backup-stanza-create")
    deadline = time.monotonic() + settings.timeout(120)
    while True:
        code = await _stanza_create(layout, log_path, repo_user, deadline - time.monotonic())
        if code != LOCK_HELD or time.monotonic() >= deadline:
            break
        await asyncio.sleep(STANZA_LOCK_RETRY_S)
    if code != 0:
        raise StartupError("backup-stanza-create", log_path, f"exit code {code}")


#: The wait before a stanza-create that found the stanza's lock held tries again.
STANZA_LOCK_RETRY_S = 0.5


async def _stanza_create(
    layout: Layout, log_path: Path, repo_user: tuple[int, int] | None, timeout_s: float
) -> int:
    """One `pgbackrest stanza-create` on the repository host: its exit code."""
    with open(log_path, "ab") as logf:
        proc = await asyncio.create_subprocess_exec(
            *backup.repo_command(layout, "stanza-create"),
            stdout=logf,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=layout.backup_dir,
            user=repo_user[0] if repo_user else None,
            group=repo_user[1] if repo_user else None,
            extra_groups=[] if repo_user else None,
        )
        try:
            return await _wait_or_kill(proc, max(timeout_s, 1.0))
        except TimeoutError:  # it was killed: it would have held the stanza's lock
            raise StartupError(
                "backup-stanza-create", log_path, f"no answer in {max(timeout_s, 1.0):.0f} s"
            ) from None
