"""`cwh env status`: every component's role, pids, ports, health and lag, plus connection URLs.

The JSON form is the interface scripts and tests use to find the environment: nothing needs to
know port arithmetic or read config files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from env import configs, network, probes, readiness, region, topology
from env.layout import Layout
from env.process import host_pid
from env.secrets import Secrets, client_tls_context
from env.settings import EnvSettings
from env.topology import SERVICE_ROLES

log = logging.getLogger("cwh.env.status")


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def postgres_pid(settings: EnvSettings, data_dir: Path, comp: Mapping[str, Any]) -> int | None:
    """The postmaster's host pid. postmaster.pid holds its pid where it runs: in a container
    that is its container's numbering, mapped here through the container's main process."""
    pid = _postmaster_pid(data_dir)
    if pid is None or not network.containers(settings):
        return pid
    main = comp.get("pid")
    return host_pid(int(main), pid) if main else None


@dataclass(frozen=True)
class _Running:
    """A service replica as the supervisor reported it, for its readiness probe."""

    pid: int | None
    ports: Mapping[str, int]


async def _none() -> None:
    return None


async def _redis_view(
    layout: Layout, secrets: Secrets | None, ports: list[int]
) -> tuple[dict[str, str], list[probes.RedisNode]]:
    if secrets is None:
        return {}, []
    return await probes.redis_cluster_view(ports, configs.redis_admin_credentials(layout, secrets))


async def _scheduler_leads(port: int) -> bool | None:
    """Whether the scheduler on `port` holds the lease, from its own metric."""
    status, text = await probes.http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return None
    for line in text.splitlines():
        if line.startswith("cw_scheduler_leader "):
            return float(line.split()[1]) == 1.0
    return None


def connection_urls(settings: EnvSettings, secrets: Secrets | None) -> dict[str, Any]:
    """Where everything is. PostgreSQL URLs verify the server against the environment's CA
    (`sslmode=verify-full`); Redis URLs are `rediss://` with an ACL user (the harness's admin,
    or the services' own user for `redis_app`): give redis-py `ssl_ca_certs` = the CA."""
    ports = settings.ports
    layout = Layout(settings.run_dir)
    app_pw = secrets.pg_app if secrets else "<unknown>"
    tls = configs.postgres_url_tls(layout)

    def pg(port: int) -> str:
        return f"postgresql://cloudwatcher:{app_pw}@127.0.0.1:{port}/cloudwatcher?{tls}"

    def redis(user: str, password: str | None, port: int) -> str:
        return f"rediss://{user}:{password or '<unknown>'}@127.0.0.1:{port}"

    admin = secrets.redis_admin if secrets else None
    return {
        "write": pg(ports.haproxy_write),
        "read": pg(ports.haproxy_read),
        "pgbouncer": pg(ports.pgbouncer),
        "redis": redis(configs.REDIS_ADMIN_USER, admin, ports.redis(0)),
        "redis_nodes": [
            redis(configs.REDIS_ADMIN_USER, admin, ports.redis(n))
            for n in range(settings.redis_nodes)
        ],
        "redis_app": redis(
            configs.REDIS_APP_USER, secrets.redis_app if secrets else None, ports.redis(0)
        ),
        "prometheus": f"http://127.0.0.1:{ports.prometheus}",
        "https": f"https://127.0.0.1:{ports.haproxy_https}",
        "haproxy_stats": f"http://127.0.0.1:{ports.haproxy_stats}/stats",
        "haproxy_runtime_api": str(Layout(settings.run_dir).haproxy_socket),
        "supervisor": f"http://127.0.0.1:{ports.supervisor}",
        "etcd": f"http://127.0.0.1:{ports.etcd_client}",
        "fault_api": settings.fault_api_url if settings.fault_proxy else None,
        # Each member directly, as the superuser: for checks that must bypass HAProxy.
        "members": {
            f"pg{m}": (
                f"postgresql://postgres:{secrets.pg_superuser if secrets else '<unknown>'}"
                f"@127.0.0.1:{ports.postgres(m)}/cloudwatcher?{tls}"
            )
            for m in range(settings.pg_members)
        },
    }


async def _tls_versions(settings: EnvSettings, tls: ssl.SSLContext) -> dict[str, str | None]:
    """The TLS version a verifying probe negotiates with each PostgreSQL member, pgBouncer and
    each Redis node (on its own port, not through the fault proxy); None where none was."""
    ports = settings.ports
    targets = {f"pg{m}": (ports.postgres(m), True) for m in range(settings.pg_members)}
    targets["pgbouncer"] = (ports.pgbouncer, True)
    targets.update({f"redis{n}": (ports.redis(n), False) for n in range(settings.redis_nodes)})

    async def version(port: int, postgres: bool) -> str | None:
        try:
            return await asyncio.wait_for(probes.tls_version(port, tls, postgres), 5)
        except Exception:
            return None

    found = await asyncio.gather(*(version(port, pg) for port, pg in targets.values()))
    return dict(zip(targets, found, strict=True))


async def _collect(settings: EnvSettings, sup: dict[str, Any] | None) -> dict[str, Any]:
    layout = Layout(settings.run_dir)
    ports = settings.ports
    secrets = Secrets.load(layout.secrets) if layout.secrets.exists() else None
    comps = {c["name"]: c for c in (sup or {}).get("components", [])}
    patroni_ports = [ports.patroni(m) for m in range(settings.pg_members)]
    redis_ports = [ports.redis(n) for n in range(settings.redis_nodes)]
    tls = client_tls_context(layout.ca_cert) if layout.ca_cert.exists() else None
    tls_by_name = await _tls_versions(settings, tls) if tls else {}
    checks = readiness.Checks(settings, secrets, tls)

    async def safe(coro: Any, default: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, 5)
        except Exception:
            return default

    members, redis_view, etcd_ok, haproxy_rows = await asyncio.gather(
        safe(probes.patroni_cluster(patroni_ports), []),
        safe(_redis_view(layout, secrets, redis_ports), ({}, [])),
        safe(probes.etcd_healthy(ports.etcd_client), False),
        safe(probes.haproxy_stat(layout), []),
    )
    by_name = {m.name: m for m in members}
    # A standby region's leader streams from the primary region; its members cascade from it.
    leader = next((m for m in members if m.role in ("leader", "standby_leader")), None)
    replication: list[dict[str, Any]] = []
    if leader is not None and secrets is not None and tls is not None:
        replication = await safe(
            probes.pg_replication(
                ports.postgres(configs.member_index(leader.name)), secrets.pg_superuser, tls
            ),
            [],
        )
    repl_by_name = {r["application_name"]: r for r in replication}
    link: region.StandbyState | None = None
    if leader is not None and leader.role == "standby_leader" and secrets and tls:
        port = ports.postgres(configs.member_index(leader.name))
        link = await safe(region.standby_state(port, secrets.pg_superuser, tls), None)

    rows: list[dict[str, Any]] = []

    def row(name: str, kind: str, role: str, healthy: bool, **extra: Any) -> None:
        comp = comps.get(name, {})
        rows.append(
            {
                "component": name,
                "kind": kind,
                "role": role,
                "pid": comp.get("pid"),
                "state": comp.get("state", "absent"),
                "restarts": comp.get("restarts", 0),
                # Why the supervisor last restarted it (an exit code, a failed liveness probe).
                "last_restart_reason": comp.get("last_restart_reason", ""),
                "ports": comp.get("ports", {}),
                "healthy": healthy,
                "log": comp.get("log"),
                # The containers runtime's: `pid` is then its main process's pid on the host.
                **({"container": comp["container"]} if comp.get("container") else {}),
                **extra,
            }
        )

    row("etcd", "etcd", "dcs", bool(etcd_ok))
    if settings.backups:
        answered = await safe(checks.backup_servers(), {})
        for name, role in (("backup-repo", "backup repository"), ("backup-pg", "backup agent")):
            row(name, "pgbackrest", role, answered.get(name, False))
    for m in range(settings.pg_members):
        name = f"pg{m}"
        # Patroni's, PostgreSQL's and HAProxy's name for it (a standby region's differ).
        member = by_name.get(configs.member_name(settings, m))
        role = {
            "leader": "primary",
            "standby_leader": "standby leader",
            "sync_standby": "sync replica",
            "replica": "replica",
        }.get(member.role if member else "", member.role if member else "down")
        repl = repl_by_name.get(configs.member_name(settings, m), {})
        running = member is not None and member.state in ("running", "streaming")
        if member is not None and member.role == "standby_leader":
            running = running and bool(link and link.streaming)
        elif member is not None and member.role != "leader":
            # A replica counts only once the primary sees it streaming.
            running = running and repl.get("state") == "streaming"
        row(
            name,
            "postgresql",
            role,
            running,
            postgres_pid=postgres_pid(settings, layout.pg_data(m), comps.get(name, {})),
            patroni_pid=comps.get(name, {}).get("pid"),
            pg_state=member.state if member else None,
            timeline=member.timeline if member else None,
            lag_bytes=member.lag_bytes if member else None,
            replay_lag_s=repl.get("replay_lag_s"),
            sync_state=repl.get("sync_state"),
            tls=tls_by_name.get(name),
        )
    write_up = probes.haproxy_servers_up(haproxy_rows, "pg_write") if haproxy_rows else []
    read_up = probes.haproxy_servers_up(haproxy_rows, "pg_read") if haproxy_rows else []
    routed = region.routed if settings.standby else readiness.pg_routed
    row(
        "haproxy",
        "haproxy",
        "load balancer",
        routed(haproxy_rows, members),
        write_servers=write_up,
        read_servers=read_up,
    )
    entry: dict[str, Any] | None = None
    if settings.standby:
        entry = await safe(region.global_entry(settings, layout), None)
        # After a failover the primary region's server must be off there (the keeper holds it).
        held = entry is not None and (
            not entry["failed_over"] or entry["regions"].get(configs.ENTRY_PRIMARY) == "MAINT"
        )
        row(
            "global-lb",
            "haproxy",
            "global entry point",
            held,
            regions=entry["regions"] if entry else {},
            failed_over=entry["failed_over"] if entry else None,
        )
    pgb_ok = await safe(checks.pgbouncer(), False)
    row(
        "pgbouncer",
        "pgbouncer",
        "pool (transaction)",
        bool(pgb_ok),
        tls=tls_by_name.get("pgbouncer"),
    )
    info, rnodes = redis_view
    by_port = {n.port: n for n in rnodes}
    for n in range(settings.redis_nodes):
        node = by_port.get(configs.redis_announced_port(settings, n))
        alive = comps.get(f"redis{n}", {}).get("pid") is not None
        row(
            f"redis{n}",
            "redis",
            ("master" if node.role == "master" else "replica") if node else "down",
            bool(node and not node.failed and alive),
            slots=node.slots if node else 0,
            node_id=node.node_id if node else None,
            tls=tls_by_name.get(f"redis{n}"),
        )
    if settings.fault_proxy:
        proxies = await safe(probes.http_json(f"{settings.fault_api_url}/proxies"), None)
        wanted = [p["name"] for p in configs.fault_proxies(settings)]
        # The region link's own delay is part of the topology, not an injected fault; and it
        # must be there (a restarted fault proxy comes back with its proxies only).
        standing = (
            {t["name"] for t in configs.region_latency_toxics(settings)}
            if settings.standby
            else set()
        )
        toxics = {
            n: [
                t["name"]
                for t in p["toxics"]
                if n != configs.REGION_LINK or t["name"] not in standing
            ]
            for n, p in (proxies or {}).items()
        }
        link_delay = {
            t["name"] for t in (proxies or {}).get(configs.REGION_LINK, {}).get("toxics", [])
        }
        disabled = sorted(n for n, p in (proxies or {}).items() if not p["enabled"])
        # Healthy means transparent: every proxy there and enabled, no toxic left injected.
        row(
            "faultproxy",
            "faultproxy",
            "fault proxy (Toxiproxy API)",
            proxies is not None
            and all(n in proxies for n in wanted)
            and not disabled
            and not any(toxics.values())
            and standing <= link_delay,
            toxics={n: t for n, t in toxics.items() if t},
            disabled=disabled,
            region_link_delay_missing=sorted(standing - link_delay),
        )
    for name, ok in (await checks.endpoints()).items():
        row(name, name.rstrip("0123456789").replace("-", "_"), "metrics", ok)

    services = [c for c in comps.values() if c["kind"] in SERVICE_ROLES]
    try:
        topo: topology.Topology | None = topology.build(settings)
    except Exception as exc:  # a broken HPA spec must not take the whole status down
        log.warning("no topology to probe the services with: %s", exc)
        topo = None

    async def ready_replica(c: dict[str, Any]) -> bool:
        try:
            w = topo.owner(c["name"]) if topo is not None else None
        except KeyError:  # a replica the description does not know is not one it made ready
            w = None
        return w is not None and await readiness.replica_ready(
            w, _Running(c.get("pid"), c["ports"])
        )

    ready = await asyncio.gather(*(ready_replica(c) for c in services))
    leaders = await asyncio.gather(
        *(
            safe(_scheduler_leads(c["ports"]["http"]), None)
            if c["kind"] == "scheduler"
            else _none()
            for c in services
        )
    )
    behind_lb = (
        set(probes.haproxy_servers_up(haproxy_rows, "api"))
        | set(probes.haproxy_servers_up(haproxy_rows, "hub"))
        if haproxy_rows
        else set()
    )
    for comp, ok, leads in zip(services, ready, leaders, strict=True):
        role = comp["kind"]
        if leads is not None:
            role = "scheduler (leader)" if leads else "scheduler (standby)"
        extra: dict[str, Any] = {}
        if comp["kind"] in ("api", "hub"):
            # A replica the load balancer does not route to serves no phone.
            extra["in_load_balancer"] = comp["name"] in behind_lb
            ok = ok and extra["in_load_balancer"]
        row(comp["name"], comp["kind"], role, ok, **extra)

    # The failover safety net is in place only when Patroni's /sync key (what /cluster reports as
    # sync_standby) names a replica that the primary really replicates to synchronously. Right
    # after a failover the primary sets synchronous_standby_names a loop before it writes /sync;
    # a second failure in that window leaves no member Patroni will promote.
    sync_standbys = [
        r
        for r in rows
        if r["kind"] == "postgresql"
        and r["role"] == "sync replica"
        and r["healthy"]
        and r.get("sync_state") == "sync"
    ]
    # A standby cluster is asynchronous by design (`configs.patroni_config`).
    standing_by = leader is not None and leader.role == "standby_leader"
    pg_sync_ok = settings.pg_members == 1 or standing_by or len(sync_standbys) == 1
    return {
        "phase": (sup or {}).get("phase", "down"),
        "error": (sup or {}).get("error"),
        # What runs with more privilege than it should, and why (env/users.py).
        "warnings": (sup or {}).get("warnings", []),
        "supervisor_pid": (sup or {}).get("pid"),
        "run_dir": str(settings.run_dir),
        "base_port": settings.base_port,
        "runtime": settings.runtime,
        # The failure-detection profile it runs with (env/failover_timing.py).
        "failover": (sup or {}).get("failover", settings.failover),
        "healthy": bool(sup) and pg_sync_ok and all(r["healthy"] for r in rows),
        "pg_sync_standby": sync_standbys[0]["component"] if sync_standbys else None,
        "redis_cluster_state": info.get("cluster_state"),
        # The component's name (`pg<n>`), as every row and URL has it; a standby region's
        # members are named otherwise to Patroni (`configs.member_name`).
        "primary": (
            f"pg{configs.member_index(leader.name)}" if leader and leader.role == "leader" else None
        ),
        "components": rows,
        "urls": connection_urls(settings, secrets),
        # The environment's CA: trust it for HTTPS, PostgreSQL and Redis alike.
        "tls_certificate": str(layout.ca_cert),
        # Registration needs it by default; every client of the local environment reads it here.
        "registration_secret": secrets.registration_secret if secrets else None,
        "secrets_file": str(layout.secrets),
        "auth_rate_limit_per_s": settings.auth_rate_limit_per_s,
        "region": _region(settings, leader, link, entry),
    }


def _region(
    settings: EnvSettings,
    leader: probes.PgMember | None,
    link: region.StandbyState | None,
    entry: dict[str, Any] | None,
) -> dict[str, Any]:
    """Which region this is and, for a standby one, how its link to the primary stands."""
    if not settings.standby:
        return {"role": "primary"}
    promoted = (leader is not None and leader.role == "leader") or bool(
        entry and entry["failed_over"]
    )
    return {
        "role": "promoted" if promoted else "standby",
        "standby_of": settings.standby_of,
        "link_latency_ms": settings.region_latency_ms,
        "streaming": link.streaming if link else False,
        "lag_s": link.lag_s if link else None,
        "received_lsn": link.received_lsn if link else None,
        # The phones' URL in a region failover, and where it sends them now.
        "global_entry": entry,
        # 0: promoted by hand only; else after the primary region was lost this long.
        "failover_after_s": settings.region_failover_s,
        "failover": _failover_record(settings),
    }


def _failover_record(settings: EnvSettings) -> dict[str, Any] | None:
    """What the region's automatic failover wrote, if it happened (`region.failover_record`)."""
    try:
        record: dict[str, Any] = json.loads(
            region.failover_record(Layout(settings.run_dir)).read_text()
        )
    except (OSError, ValueError):  # none yet, or unreadable: no failover to show
        return None
    return record


def collect_status(settings: EnvSettings, supervisor: dict[str, Any] | None) -> dict[str, Any]:
    # The runtime the environment really runs on, whoever asks: its pids are numbered by it.
    runtime = (supervisor or {}).get("runtime") or settings.runtime
    if runtime != settings.runtime:
        settings = dataclasses.replace(settings, runtime=runtime)
    return asyncio.run(_collect(settings, supervisor))
