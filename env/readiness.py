"""What "ready" means, in one place.

The supervisor waits on these checks while it starts each stage, `cwh env status` reports the
same checks per component afterwards, and scaling asks a replica's before routing to it or
counting it available. Before this module each of them had its own idea (the status called a
pgBouncer healthy on `SELECT 1` while start-up also wanted HAProxy to route to the right
members), so "healthy" after start-up could mean less than "ready" during it.

A check answers True or False, or raises while its component starts (a refused connection):
callers take that as "not yet", and the supervisor names the last such error when a stage never
becomes ready.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any, Protocol

import asyncpg

from env import backup, configs, probes, region
from env.layout import Layout
from env.secrets import Secrets
from env.settings import EnvSettings
from env.topology import Workload


class Probed(Protocol):
    """A running replica as readiness sees it (`env.supervisor.Component`, a status row)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def ports(self) -> Mapping[str, int]: ...


def replica_url(w: Workload, comp: Probed) -> str | None:
    """The replica's readiness probe URL (None: the workload declares no probe)."""
    probe = w.readiness
    if probe is None:
        return None
    return f"http://127.0.0.1:{comp.ports[probe.port]}{probe.path}"


async def replica_ready(w: Workload, comp: Probed) -> bool:
    """The replica runs and its readiness probe passes (no probe: it runs)."""
    if comp.pid is None:
        return False
    url = replica_url(w, comp)
    return True if url is None else await probes.http_ok(url)


async def ready_count(w: Workload, comps: list[Any]) -> int:
    """How many of `comps` are ready: a Deployment's available replicas."""
    return sum(await asyncio.gather(*(replica_ready(w, c) for c in comps)))


def pg_routed(rows: list[dict[str, str]], members: list[probes.PgMember]) -> bool:
    """HAProxy sends writes to the Patroni leader alone and reads to every other member."""
    leader = [m.name for m in members if m.role == "leader"]
    replicas = sorted(m.name for m in members if m.role != "leader")
    return (
        bool(leader)
        and probes.haproxy_servers_up(rows, "pg_write") == leader
        and sorted(probes.haproxy_servers_up(rows, "pg_read")) == replicas
    )


def exporter_urls(settings: EnvSettings) -> dict[str, str]:
    """The metrics endpoints that must answer, by component name (Prometheus' readiness too)."""
    ports = settings.ports
    out = {
        f"postgres-exporter{m}": f"http://127.0.0.1:{ports.postgres_exporter(m)}/metrics"
        for m in range(settings.pg_members)
    }
    out["redis-exporter"] = f"http://127.0.0.1:{ports.redis_exporter}/metrics"
    out["prometheus"] = f"http://127.0.0.1:{ports.prometheus}/-/ready"
    return out


class Checks:
    """The readiness of each shared component of one environment.

    Args:
        settings: the environment.
        secrets: its credentials (None before they exist: every credentialed check is False).
        tls: a context that trusts the environment's CA (None likewise).
    """

    def __init__(
        self, settings: EnvSettings, secrets: Secrets | None, tls: ssl.SSLContext | None
    ) -> None:
        self.settings = settings
        self.layout = Layout(settings.run_dir)
        self.secrets = secrets
        self.tls = tls
        ports = settings.ports
        self.patroni_ports = [ports.patroni(m) for m in range(settings.pg_members)]
        self.redis_ports = [ports.redis(n) for n in range(settings.redis_nodes)]

    async def backup_servers(self) -> dict[str, bool]:
        """Each pgBackRest server's answer to `server-ping`, by component name."""
        ports = self.settings.ports
        servers = {"backup-repo": ports.backup_repo, "backup-pg": ports.backup_pg}
        codes = await asyncio.gather(
            *(probes.exit_code(backup.ping_command(p)) for p in servers.values())
        )
        return {name: code == 0 for name, code in zip(servers, codes, strict=True)}

    async def backup(self) -> bool:
        """Both pgBackRest servers answer."""
        return all((await self.backup_servers()).values())

    async def etcd(self) -> bool:
        return await probes.etcd_healthy(self.settings.ports.etcd_client)

    async def postgresql(self) -> bool:
        """Every member in Patroni's cluster view, one leader, every replica streaming to it,
        one of them synchronous."""
        return await self.pg_streaming(sync=True)

    async def pg_streaming(self, sync: bool) -> bool:
        """As `postgresql`; without `sync`, not yet waiting for the synchronous standby (Patroni
        names it two of its loops after the replicas stream). A standby region has none."""
        members = await probes.patroni_cluster(self.patroni_ports)
        n = self.settings.pg_members
        if self.settings.standby:
            return await self._standby_postgresql(members)
        if self.secrets is None or self.tls is None:
            return False
        if not probes.pg_cluster_ready(members, n, sync=sync):
            return False
        leader = next(m for m in members if m.role == "leader")
        rows = await probes.pg_replication(
            self.settings.ports.postgres(configs.member_index(leader.name)),
            self.secrets.pg_superuser,
            self.tls,
        )
        # Its own members only: a second region's standby leader streams from it too.
        own = {configs.member_name(self.settings, m) for m in range(n)}
        own_rows = [r for r in rows if r["application_name"] in own]
        return probes.pg_streaming_ready(own_rows, n - 1, sync=sync)

    async def _standby_postgresql(self, members: list[probes.PgMember]) -> bool:
        """A standby region: its leader runs and its other members cascade from it; or, once
        promoted, a leader and its replicas."""
        n = self.settings.pg_members
        if self.secrets is None or self.tls is None or not region.standby_ready(members, n):
            return False
        leader = next(m for m in members if m.role in ("standby_leader", "leader"))
        port = self.settings.ports.postgres(configs.member_index(leader.name))
        rows = await probes.pg_replication(port, self.secrets.pg_superuser, self.tls)
        own = {configs.member_name(self.settings, m) for m in range(n)}
        rows = [r for r in rows if r["application_name"] in own]
        # Not whether the standby leader streams from the primary region: a standby restarted
        # while that region is gone must still come up, to be promoted (the status says it).
        return bool(sum(r["state"] == "streaming" for r in rows) == n - 1)

    async def haproxy(self) -> bool:
        """HAProxy routes the database paths to the members Patroni says (`pg_routed`)."""
        rows = await probes.haproxy_stat(self.layout)
        members = await probes.patroni_cluster(self.patroni_ports)
        if self.settings.standby:
            # And the global entry point listens (which region it sends to is its checks').
            entry = await probes.port_open(self.settings.ports.global_https)
            return entry and region.routed(rows, members)
        return pg_routed(rows, members)

    async def pgbouncer(self) -> bool:
        """A query through pgBouncer, as the application user, over verified TLS. In a standby
        region that is not promoted, which has no writable database to reach yet, pgBouncer's
        own console answers."""
        if self.secrets is None or self.tls is None:
            return False
        standing_by = self.settings.standby and not any(
            m.role == "leader" for m in await probes.patroni_cluster(self.patroni_ports)
        )
        if standing_by:
            user, password, database = "postgres", self.secrets.pg_superuser, "pgbouncer"
        else:
            user, password, database = "cloudwatcher", self.secrets.pg_app, "cloudwatcher"
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=self.settings.ports.pgbouncer,
            user=user,
            password=password,
            database=database,
            statement_cache_size=0,
            ssl=self.tls,
            timeout=2,
        )
        try:
            if database == "pgbouncer":
                # The console speaks the simple protocol only: `execute` without arguments.
                await conn.execute("SHOW VERSION")
                return True
            return bool(await conn.fetchval("SELECT 1") == 1)
        finally:
            await conn.close()

    async def redis(self) -> bool:
        """The cluster is formed: every slot served, the masters and replicas the settings say."""
        if self.secrets is None:
            return False
        creds = configs.redis_admin_credentials(self.layout, self.secrets)
        info, nodes = await probes.redis_cluster_view(self.redis_ports, creds)
        s = self.settings
        return probes.redis_cluster_ready(info, nodes, s.redis_masters, s.redis_replicas_per_master)

    async def endpoints(self) -> dict[str, bool]:
        """Each exporter's and Prometheus' answer (`exporter_urls`)."""
        urls = exporter_urls(self.settings)
        oks = await asyncio.gather(*(probes.http_ok(u) for u in urls.values()))
        return dict(zip(urls, oks, strict=True))

    async def exporters(self) -> bool:
        found = await self.endpoints()
        return all(ok for name, ok in found.items() if name != "prometheus")

    async def prometheus(self) -> bool:
        return await probes.http_ok(exporter_urls(self.settings)["prometheus"])
