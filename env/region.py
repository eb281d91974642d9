"""The second region: a standby environment that mirrors the primary region's database until
it is promoted.

A standby region is an environment of its own (its base port, run directory, etcd, Patroni,
HAProxy, pgBouncer, Redis, services) whose PostgreSQL is a Patroni *standby cluster*: its leader
streams from the primary region's write path through this region's fault proxy (the cross-region
link, with a latency toxic), and its other members cascade from that leader. It shares what a
real second region gets from the same vault: the passwords (the roles are the replicated
database's), the CA (one trust root for phones that may land in either region) and the services'
token and field keys (a token issued in one region is honoured in the other; encrypted fields
decrypt in both).

Promotion (`promote`) removes the `standby_cluster` section from the DCS configuration, which is
how Patroni detaches a standby cluster: its leader is promoted on a new timeline and the region
takes writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from env import configs, patroni_api, probes
from env.files import write_file
from env.layout import Layout
from env.secrets import Secrets
from env.settings import EnvSettings, Ports

log = logging.getLogger("cwh.region")

#: What a standby region copies from the primary region's run directory, when it has none of
#: its own: secrets, the CA (its server certificates are then issued by that CA), the services'
#: keys. Paths relative to a run directory.
SHARED = (
    "secrets.json",
    "tls/ca.crt",
    "tls/ca.key",
    "services/jwt-keyset.json",
    "services/field-encryption.key",
)


class RegionError(RuntimeError):
    """The standby region cannot be set up or promoted; the message says why."""


def adopt_primary_region(settings: EnvSettings, layout: Layout) -> list[str]:
    """Copy what the standby region shares with the primary region (`SHARED`) into its run
    directory at its first start (once it has its secrets it is left alone: a restart must not
    replace its CA under its own certificates, nor need the primary region). Returns the files
    copied. RegionError when the primary region has never
    run: its secrets are what the standby's database will hold."""
    source = settings.primary_region_dir
    if layout.secrets.exists():
        # Adopted at its first start: a restart needs nothing of the primary region, which
        # may be the region that is gone.
        return []
    primary_write = Ports(settings.standby_of).haproxy_write
    if not layout.pg_data(0).exists() and not _answers(primary_write):
        raise RegionError(
            f"the primary region's write path (127.0.0.1:{primary_write}) does not answer: a "
            "standby region is cloned from it at its first start; start the primary region "
            f"first (CWH_BASE_PORT={settings.standby_of} cwh env up)"
        )
    if not (source / "secrets.json").exists():
        raise RegionError(
            f"{source}/secrets.json is missing: start the primary region first "
            f"(CWH_BASE_PORT={settings.standby_of} cwh env up), or set CWH_STANDBY_SOURCE_DIR "
            "to its run directory"
        )
    copied = []
    for rel in SHARED:
        src, dst = source / rel, layout.run_dir / rel
        if dst.exists() or not src.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        public = rel.endswith(".crt")
        write_file(dst, src.read_bytes(), mode=0o644 if public else 0o600)
        copied.append(rel)
    return copied


async def add_link_latency(settings: EnvSettings) -> None:
    """Put the cross-region delay on the region link (idempotent: a toxic already there is
    replaced, so a changed setting takes effect at the next start)."""
    url = f"{settings.fault_api_url}/proxies/{configs.REGION_LINK}/toxics"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for toxic in configs.region_latency_toxics(settings):
            async with http.delete(f"{url}/{toxic['name']}"):
                pass  # 404 when it is not there yet
            async with http.post(url, json=toxic) as resp:
                resp.raise_for_status()


@dataclass(frozen=True)
class StandbyState:
    """What the standby region's leader says of its link to the primary region.

    Attributes:
        streaming: its WAL receiver streams (pg_stat_wal_receiver's status).
        in_recovery: it is still a standby (False once promoted).
        lag_s: the application's view: now minus the newest replication heartbeat it has
            replayed (the primary region's scheduler writes one a second); None before the
            first heartbeat arrived.
        received_lsn: the last WAL position it received.
    """

    streaming: bool
    in_recovery: bool
    lag_s: float | None
    received_lsn: str | None


async def standby_state(port: int, password: str, tls: ssl.SSLContext) -> StandbyState:
    """Ask the member at `port` (the standby leader) how its link stands."""
    conn = await probes.superuser(port, password, tls, timeout=3)
    try:
        row = await conn.fetchrow(
            "SELECT pg_is_in_recovery() AS in_recovery,"
            " (SELECT status FROM pg_stat_wal_receiver) AS status,"
            " pg_last_wal_receive_lsn()::text AS received"
        )
    finally:
        await conn.close()
    assert row is not None
    return StandbyState(
        streaming=row["status"] == "streaming",
        in_recovery=bool(row["in_recovery"]),
        lag_s=await _heartbeat_age(port, password, tls),
        received_lsn=row["received"],
    )


async def _heartbeat_age(port: int, password: str, tls: ssl.SSLContext) -> float | None:
    """Now minus the newest replication heartbeat the member has replayed; None when there is
    none yet (cloned before the application's database or its first heartbeat existed)."""
    try:
        conn = await probes.superuser(port, password, tls, "cloudwatcher", timeout=3)
    except asyncpg.InvalidCatalogNameError:
        return None
    try:
        age = await conn.fetchval(
            "SELECT EXTRACT(EPOCH FROM clock_timestamp() - max(written_at))::float8"
            " FROM replication_heartbeat"
        )
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()
    return None if age is None else float(age)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def standby_ready(members: list[probes.PgMember], expected: int) -> bool:
    """A standby cluster at full strength: one running standby leader (or, once promoted, a
    leader), the other members replicas of it."""
    if len(members) != expected:
        return False
    leaders = [
        m for m in members if m.role in ("standby_leader", "leader") and m.state == "running"
    ]
    # Once promoted, synchronous mode makes one of them the synchronous standby.
    replicas = [m for m in members if m.role in ("replica", "sync_standby")]
    return (
        len(leaders) == 1
        and len(replicas) == expected - 1
        and all(m.state in ("running", "streaming") for m in replicas)
    )


def routed(rows: list[dict[str, str]], members: list[probes.PgMember]) -> bool:
    """HAProxy of a standby region: reads to every member (all are read-only), writes to none;
    once promoted, writes to the leader alone."""
    leader = [m.name for m in members if m.role == "leader"]
    return probes.haproxy_servers_up(rows, "pg_write") == leader and sorted(
        probes.haproxy_servers_up(rows, "pg_read")
    ) == sorted(m.name for m in members)


async def promote(settings: EnvSettings, secrets: Secrets, timeout_s: float = 60) -> dict[str, Any]:
    """Detach the standby cluster: its leader becomes a primary on a new timeline, and the
    region's cluster takes the primary region's synchronous mode (one synchronous standby
    when it has replicas). Returns `{"leader", "timeline", "seconds"}`; RegionError when it
    is not a standby cluster, or no primary appears within `timeout_s` (scaled)."""
    ports = [settings.ports.patroni(m) for m in range(settings.pg_members)]
    members = await probes.patroni_cluster(ports)
    standby = next((m for m in members if m.role == "standby_leader"), None)
    if standby is None:
        roles = ", ".join(f"{m.name} {m.role}" for m in members) or "no member"
        raise RegionError(f"not a standby cluster ({roles}): nothing to promote")
    # Promoted means on a timeline of its own: Patroni calls it leader a moment before.
    before = standby.timeline or 0
    started = time.monotonic()
    change = {"standby_cluster": None, "synchronous_mode": settings.pg_members > 1}
    await _patch_config(ports, secrets, change)
    timeout = settings.timeout(timeout_s)
    deadline = started + timeout
    leader: list[probes.PgMember] = []
    while not leader:
        if time.monotonic() > deadline:
            raise RegionError(f"no primary in the standby region {timeout:g} s after promotion")
        await asyncio.sleep(0.5)  # the poll's period
        with contextlib.suppress(ConnectionError):  # Patroni busy promoting: not yet
            members = await probes.patroni_cluster(ports)
            leader = [
                m
                for m in members
                if m.role == "leader" and m.state == "running" and (m.timeline or 0) > before
            ]
    return {
        # Its component's name, as the status has it (Patroni's is `configs.member_name`).
        "leader": f"pg{configs.member_index(leader[0].name)}",
        "timeline": leader[0].timeline,
        "seconds": round(time.monotonic() - started, 2),
    }


#: Patroni REST slots of the primary region to ask (its `pg_members` is at most 9).
PRIMARY_MEMBER_SLOTS = 9


async def primary_region_lost(
    settings: EnvSettings, secrets: Secrets, tls: ssl.SSLContext
) -> bool | None:
    """Whether the primary region looks lost from here, now: its public API does not answer
    (`/openapi.json` through its HTTPS frontend, 2 s), none of its Patroni members answers
    (their REST APIs, not behind its HAProxy: an HAProxy outage alone is no lost region), and
    this region's standby leader does not stream from it. All three: an API outage with a
    healthy database, or a blip of the link, must not make a second primary. None when this
    region cannot tell (no standby leader: promoted already; its own members not answering)."""
    ports = [settings.ports.patroni(m) for m in range(settings.pg_members)]
    try:
        members = await probes.patroni_cluster(ports)
    except (ConnectionError, OSError, TimeoutError, ValueError):
        return None  # this region cannot tell: never promote blind
    leader = next((m for m in members if m.role == "standby_leader"), None)
    if leader is None:
        return None
    url = f"https://127.0.0.1:{Ports(settings.standby_of).haproxy_https}/openapi.json"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
            http.get(url, ssl=tls) as resp,
        ):
            if resp.status == 200:
                return False
    except (aiohttp.ClientError, TimeoutError, OSError):
        pass  # silent: lost, unless its database or the link says otherwise
    primary = Ports(settings.standby_of)
    try:
        await probes.patroni_cluster([primary.patroni(m) for m in range(PRIMARY_MEMBER_SLOTS)])
        return False  # a Patroni of the primary region answers: its database lives
    except (ConnectionError, OSError, TimeoutError, ValueError):
        pass
    port = settings.ports.postgres(configs.member_index(leader.name))
    try:
        state = await standby_state(port, secrets.pg_superuser, tls)
    except (ConnectionError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    return not state.streaming


#: The failover clock's longest gap between two checks that found the primary region lost,
#: within one stretch (the checks run every second; one that cannot tell does not count).
LOST_GAP_S = 3.0


def failover_clock(
    lost: tuple[float, float] | None, found: bool | None, now: float, window_s: float
) -> tuple[tuple[float, float] | None, bool]:
    """One check of a standby region's automatic failover. `lost`: the first and the last
    check of the current stretch that found the primary region lost (None: none); `found`:
    this check's `primary_region_lost` (None: it could not tell). Returns the stretch updated,
    and whether to promote now: the stretch spans `window_s`. A check that cannot tell does
    not count, and more than `LOST_GAP_S` without a conclusive one starts over: never
    promote on stale evidence."""
    fresh = lost is not None and now - lost[1] <= LOST_GAP_S
    if found is None:
        return (lost if fresh else None), False
    if not found:
        return None, False
    if lost is None or not fresh:
        return (now, now), False
    lost = (lost[0], now)
    return lost, now - lost[0] >= window_s


async def received_lsn(settings: EnvSettings, secrets: Secrets, tls: ssl.SSLContext) -> str | None:
    """The last WAL position the standby leader received from the primary region (None when
    it cannot be asked)."""
    ports = [settings.ports.patroni(m) for m in range(settings.pg_members)]
    try:
        members = await probes.patroni_cluster(ports)
        leader = next((m for m in members if m.role == "standby_leader"), None)
        if leader is None:
            return None
        port = settings.ports.postgres(configs.member_index(leader.name))
        return (await standby_state(port, secrets.pg_superuser, tls)).received_lsn
    except (ConnectionError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None


def lsn_bytes(lsn: str) -> int:
    """A WAL position (`16/B374D848`) as a byte offset, for differences."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def failover_record(layout: Layout) -> Path:
    """What an automatic promotion wrote: since when the primary region was lost, when the
    promotion began and what it gave (`Supervisor.watch_region`)."""
    return layout.run_dir / "region-failover.json"


async def promoted(settings: EnvSettings, secrets: Secrets, tls: ssl.SSLContext) -> bool:
    """The region's database takes writes: Patroni names a leader that is no standby leader,
    and PostgreSQL there is out of recovery (Patroni says leader as soon as the configuration
    loses `standby_cluster`, before the promotion is done)."""
    ports = [settings.ports.patroni(m) for m in range(settings.pg_members)]
    try:
        members = await probes.patroni_cluster(ports)
        leader = next((m for m in members if m.role == "leader" and m.state == "running"), None)
        if leader is None:
            return False
        port = settings.ports.postgres(configs.member_index(leader.name))
        conn = await probes.superuser(port, secrets.pg_superuser, tls)
        try:
            return await conn.fetchval("SELECT NOT pg_is_in_recovery()") is True
        finally:
            await conn.close()
    except (ConnectionError, OSError, asyncpg.PostgresError, TimeoutError):
        return False


async def _patch_config(ports: list[int], secrets: Secrets, change: dict[str, Any]) -> None:
    try:
        await patroni_api.patch_config(ports, secrets, change)
    except patroni_api.PatroniConfigError as exc:
        raise RegionError(str(exc)) from None


def failed_over_marker(layout: Layout) -> Path:
    """Present once this region was promoted and the global entry point moved to it."""
    return layout.global_lb_dir / "failed-over"


async def fail_over_entry(settings: EnvSettings, layout: Layout) -> bool:
    """Send the phones to this region for good: the decision first (a marker, and the primary
    region's server `disabled` in the entry point's configuration, so a restart keeps it),
    then the running entry point (`keep_entry`). Whether the running one obeyed."""
    marker = failed_over_marker(layout)
    if not marker.exists():
        marker.write_text(f"{time.time():.3f}\n")
        text = configs.global_lb_config(settings, layout, failed_over=True)
        cfg = layout.global_lb_dir / "haproxy.cfg"
        # Keep the user section `rundir.prepare` appended after the rendered part.
        tail = cfg.read_text().split("\n# Workers drop root", 1)
        write_file(cfg, text + ("\n# Workers drop root" + tail[1] if len(tail) == 2 else ""))
    return await keep_entry(layout)


async def keep_entry(layout: Layout) -> bool:
    """After a failover, hold the primary region's server of the running entry point in
    maintenance and cut the connections still open to it: a kept-alive HTTPS connection or a
    WebSocket passed through to the primary region would go on writing to a database that is no
    longer the one that takes the writes. Whether it holds (False: the entry point did not
    answer, or refused; logged, tried again by the caller's loop)."""
    if not failed_over_marker(layout).exists():
        return True
    sock, server = layout.global_lb_dir / "admin.sock", f"regions/{configs.ENTRY_PRIMARY}"
    try:
        state = await probes.haproxy_command(layout, "show servers state regions", sock)
        if f" {configs.ENTRY_PRIMARY} " in state and not _in_maintenance(state):
            answers = [
                await probes.haproxy_command(layout, f"set server {server} state maint", sock),
                await probes.haproxy_command(layout, f"shutdown sessions server {server}", sock),
            ]
            if any(a.strip() for a in answers):  # HAProxy answers nothing when it obeys
                log.warning("the global entry point refused the failover: %s", answers)
                return False
            log.info("the global entry point sends the phones to this region")
    except (OSError, TimeoutError) as exc:
        log.warning("the global entry point did not answer (failover kept for later): %r", exc)
        return False
    return True


def _in_maintenance(servers_state: str) -> bool:
    """Whether `show servers state regions` says the primary region's server is in
    maintenance (a maintenance bit of its srv_admin_state: forced, inherited, configured)."""
    lines = [ln.split() for ln in servers_state.splitlines() if ln and not ln.startswith("#")]
    for cols in lines:
        if len(cols) > 6 and cols[3] == configs.ENTRY_PRIMARY:
            return bool(int(cols[6]) & 0x07)  # forced, inherited or configured
    return False


def global_entry_url(settings: EnvSettings) -> str:
    """The phones' URL of a standby region's global entry point."""
    return f"https://127.0.0.1:{settings.ports.global_https}"


async def global_entry(settings: EnvSettings, layout: Layout) -> dict[str, Any]:
    """What the global entry point does now: its URL, and each region's server state there
    (`UP`, `DOWN`, `MAINT`: off for good after a failover)."""
    sock = layout.global_lb_dir / "admin.sock"
    rows = await probes.haproxy_stat(layout, sock)
    states = {
        r["svname"]: r["status"].split()[0]
        for r in rows
        if r["pxname"] == "regions"
        and r["svname"] in (configs.ENTRY_PRIMARY, configs.ENTRY_STANDBY)
    }
    return {
        "url": global_entry_url(settings),
        "regions": states,
        "failed_over": failed_over_marker(layout).exists(),
    }
