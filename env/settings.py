"""Settings of the local environment: one frozen object, built at the edge from `CWH_*` variables.

Every port derives from `base_port`, so two environments (a developer's and a test session's) run
side by side on one machine by choosing two bases at least `PORT_SPAN` apart.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from env.failover_timing import PROFILES, FailoverTiming

#: Ports used above `base_port`. Redis Cluster also uses each node's port + 10000 for its bus.
PORT_SPAN = 200
PREFIX = "CWH_"
#: The HPA specs a cluster applies (kustomize base); the local autoscaler reads the same files.
DEFAULT_HPA_DIR = Path(__file__).resolve().parent.parent / "deploy" / "base"


class SettingsError(ValueError):
    """A `CWH_*` variable has a value the environment cannot use; the message names it."""


#: What can run the replicas (`EnvSettings.runtime`). `kubernetes` is a cluster the manifests
#: of `deploy/` were applied to (`make kind-up`): `up` does not start it, experiments act on
#: it through the Kubernetes API (`experiments/kube/`).
RUNTIMES = ("local", "containers", "kubernetes")
#: A namespace's name: an RFC 1123 label, as the API server checks it.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

#: The largest topology the settings accept (`Ports` has a port for each of these): PostgreSQL
#: members, Redis masters, and Redis nodes (each master with its one replica at most).
MAX_PG_MEMBERS, MAX_REDIS_MASTERS = 9, 5
MAX_REDIS_NODES = MAX_REDIS_MASTERS * 2

#: Replica slots of the scalable services: each has its ports (`Ports.api(1..10)`, ...).
SERVICE_SLOTS = {"api": 10, "hub": 6, "worker": 20, "scheduler": 2}


@dataclass(frozen=True)
class Ports:
    """Every TCP port of the local environment, all on 127.0.0.1."""

    base: int

    @property
    def supervisor(self) -> int:
        return self.base

    @property
    def etcd_client(self) -> int:
        return self.base + 1

    @property
    def etcd_peer(self) -> int:
        return self.base + 2

    def postgres(self, member: int) -> int:
        return self.base + 10 + member

    def patroni(self, member: int) -> int:
        return self.base + 20 + member

    @property
    def haproxy_write(self) -> int:
        return self.base + 30

    @property
    def haproxy_read(self) -> int:
        return self.base + 31

    @property
    def haproxy_https(self) -> int:
        return self.base + 32

    @property
    def haproxy_stats(self) -> int:
        """HAProxy's stats page and Prometheus endpoint (`/metrics`)."""
        return self.base + 33

    @property
    def pgbouncer(self) -> int:
        return self.base + 40

    def redis(self, node: int) -> int:
        return self.base + 50 + node

    def postgres_exporter(self, member: int) -> int:
        # Members 5 to 8 step over the Redis exporter's port: a topology that fitted before
        # keeps every port it had, so a running environment and a standby region's recorded
        # link (in its DCS) stay right across an upgrade.
        return self.base + 60 + member + (1 if member >= 5 else 0)

    @property
    def redis_exporter(self) -> int:
        return self.base + 65

    @property
    def prometheus(self) -> int:
        return self.base + 70

    @property
    def backup_scratch(self) -> int:
        """The scratch PostgreSQL a backup-verify drill restores into (only while it runs)."""
        return self.base + 77

    @property
    def backup_repo(self) -> int:
        """The backup repository host's pgBackRest TLS server (what archive-push talks to)."""
        return self.base + 78

    @property
    def backup_pg(self) -> int:
        """The database host's pgBackRest TLS server (what backups read the members through)."""
        return self.base + 79

    @property
    def fault_api(self) -> int:
        """The fault proxy's Toxiproxy-compatible API (Toxiproxy's own default is 8474)."""
        return self.base + 75

    # Fault-proxy listeners: what the services (and the replicas) connect to instead.
    @property
    def proxy_pg_write(self) -> int:
        return self.base + 170

    @property
    def proxy_pg_read(self) -> int:
        return self.base + 171

    @property
    def proxy_llm(self) -> int:
        return self.base + 172

    @property
    def proxy_sharepoint(self) -> int:
        return self.base + 173

    @property
    def proxy_gdrive(self) -> int:
        return self.base + 174

    def proxy_pg_link(self, member: int) -> int:
        """Member `member`'s replication link: the address the other members stream from."""
        return self.base + 175 + member

    def proxy_redis(self, node: int) -> int:
        """The address Redis node `node` announces to cluster clients (and its replicas)."""
        # Nodes 6 to 9 step over the region link's port, for the same reason.
        return self.base + 184 + node + (1 if node >= 6 else 0)

    @property
    def global_https(self) -> int:
        """The global entry point a standby region runs: phones reach whichever region serves
        through it (TLS passed through to that region's HTTPS frontend)."""
        return self.base + 91

    @property
    def proxy_region_link(self) -> int:
        """A standby region's replication link: its standby leader streams from the primary
        region's database entry through this listener (latency and cuts are applied here)."""
        return self.base + 190

    def service(self, index: int) -> int:
        """Ports handed to the reference implementation's services (base+100 onwards)."""
        return self.base + 100 + index

    @property
    def llm(self) -> int:
        return self.service(0)

    @property
    def sharepoint(self) -> int:
        return self.service(1)

    @property
    def gdrive(self) -> int:
        return self.service(2)

    @property
    def gateway(self) -> int:
        return self.service(3)

    def api(self, replica: int) -> int:
        """API replica 1..10."""
        return self.service(9 + replica)

    def hub(self, replica: int) -> int:
        """Hub replica 1..6."""
        return self.service(19 + replica)

    def worker(self, replica: int) -> int:
        """Worker replica 1..20."""
        return self.service(29 + replica)

    def scheduler(self, replica: int) -> int:
        return self.service(49 + replica)


@dataclass(frozen=True)
class EnvSettings:
    """What the local environment is made of and where it lives.

    Attributes:
        base_port: first port of the block of `PORT_SPAN` ports this environment uses.
        run_dir: all state (data directories, configs, logs, pid files) lives below it. It must be
            reachable by the `postgres` user, so it defaults to /var/tmp rather than a home folder.
        timeout_scale: multiplies every deadline, for slow machines (2.0 doubles them).
        pg_members: PostgreSQL members managed by Patroni (one primary, the rest replicas).
        redis_masters: Redis Cluster masters; each gets `redis_replicas_per_master` replicas.
        pg_sync_strict: Patroni's `synchronous_mode_strict`: the primary refuses to commit without a
            synchronous standby. Off by default (the seed's topology), which is what lets cascading
            failures lose acknowledged writes: the harness must be able to show that.
        failover: the failure-detection timings (`env/failover_timing.py`): `standard` or
            `fast` (Patroni ttl 5 s, HAProxy checks every 0.5 s, Redis node timeout 1 s).
            Faster detection risks spurious failovers on a loaded machine; `make bench-chaos`
            measures both sides.
        scrape_interval_s: Prometheus scrape and evaluation interval, in seconds.
        prometheus_memory_mib: the soft limit on Prometheus's Go runtime memory (GOMEMLIMIT),
            MiB; 0: derived from the topology (`env.commands.prometheus_memory_mib`). Without
            a limit the Go runtime keeps memory it freed after its busiest moments, and
            Prometheus's resident memory ratchets up for hours under the same series (README,
            "Prometheus's memory"). Soft: a compaction may pass it for a moment; near it the
            collector runs more often (Go caps that at half of the CPUs it uses).
        pg_os_user: the account PostgreSQL, Patroni and pgBouncer run as (they refuse root).
        service_os_user: the unprivileged account every other component runs as when the
            supervisor is root (`tools/deps.sh` creates it; see `env/users.py`).
        services: start the reference implementation's services (off: the data tier alone).
        api_replicas, hub_replicas, worker_replicas, scheduler_replicas: instances of each.
        fault_proxy: put the fault proxy between the services and PostgreSQL, Redis, the storage
            providers and the LLM stub, and on the replication links (off: direct connections).
        toxiproxy_url: a Toxiproxy server to use instead of starting one ("" = start one:
            `toxiproxy-server` when it is on the PATH, else the project's `env.faultproxy`).
        liveness_period_s, liveness_failure_threshold: the services' liveness probe, as
            Kubernetes' `periodSeconds` and `failureThreshold`: after that many failed probes in
            a row (`/health/live` not 200 within 2 s) the supervisor restarts the service.
        auth_rate_limit_per_s: requests per second one client address may make to registration,
            and separately to the token endpoint, through the public frontend (429 beyond). A
            fleet from one address needs its spawn rate plus token renewals: 10,000 phones
            spawned at 150/s need about 150/s each (renewals add ~12/s at a 900 s token life).
        autoscale: run the local autoscaler (the HPA algorithm over `deploy/base/`'s specs) once
            the environment is ready; `cwh env autoscale on|off` switches it at run time.
        autoscale_sync_s: its sync period, kube-controller-manager's
            `--horizontal-pod-autoscaler-sync-period` (15 s there too).
        hpa_dir: the HorizontalPodAutoscaler specs the autoscaler follows (a folder or a file;
            `deploy/base/`, the same files a cluster applies). Another folder is for trying other
            windows or targets; the test session uses one with shorter scale-down windows.
        backups: continuous WAL archiving and scheduled backups with pgBackRest, into a
            repository in the run directory (standing for blob storage; `env/backup.py`).
        archive_timeout_s: PostgreSQL's `archive_timeout`: a WAL segment is archived at the
            latest this long after its first write, however little it holds. It bounds what a
            restore from the archive can lose: the seed's RPO is 5 minutes, 60 s leaves room for
            a failed push and its retry.
        backup_full_every_s, backup_diff_every_s: a full backup when the newest full one is
            this old, a differential one (changes since that full) in between.
        backup_retention_days: full backups are kept this many days (pgBackRest's time-based
            retention: it expires a full, its differentials and their WAL once a newer full is
            older than this). The seed's 7 days.
        standby_of: the base port of the primary region's environment on this machine when this
            one is its second region (0: this one is a primary region). Its PostgreSQL is then a
            Patroni standby cluster that streams from the primary region's write path, through
            this environment's fault proxy (`Ports.proxy_region_link`), until it is promoted;
            it shares the primary region's secrets, CA and service keys (what a real second
            region gets from the same vault), archives nothing while it stands by, and starts
            its services only once promoted (a pilot light: `Supervisor.start_all`).
        standby_source_dir: the primary region's run directory (default
            `/var/tmp/cwh-<standby_of>`), where those secrets are read.
        region_latency_ms: the one-way delay of the cross-region link, each direction: 35 ms
            is about half the round trip between us-east-1 and us-west-2 (the seed's regions).
        region_failover_s: a standby region promotes itself once the primary region has been
            lost this long (`env.region.primary_region_lost`: its public API, its Patroni
            members and the replication link all silent, at every check, a second apart). 0,
            the default: only `cwh env promote` promotes; a restart or a `down` of the primary
            region must not split the regions unless its operators chose automatic failover.
            Shorter detects sooner (the RTO) and risks promoting over a blip while the primary
            region still takes writes, which the global entry point would then leave for good
            (`env.region.keep_entry`): at least 5 s.
        runtime: what runs the replicas: `local` (processes under the supervisor, the default)
            or `containers` (each replica its own container of the `make images` image, on one
            Docker network; `env/containers.py`). The supervisor, status, scenarios and
            experiments are the same on both.
        container_subnet: the containers runtime's network ("" = `10.213.<base/200>.0/24`,
            one per environment; `env/network.py` gives each replica a fixed address in it).
        container_cpu_scale, container_memory_scale: each container's CPU and memory limit as
            a share of the seed's pod limit (2 CPU, 2 GiB): 0.5 gives 1 CPU and 1 GiB, so no
            replica can take all of a 2-core machine, and an OOM is a replica's own.
        kubeconfig: the kubernetes runtime's kubeconfig file, an absolute path ("" = what
            kubectl and chaosk8s use by themselves: `$KUBECONFIG`, else `~/.kube/config`).
            chaosk8s reads it from the process's `KUBECONFIG`, so `cwh chaos run` sets that
            variable from this one, and a bare `chaos run` must export the same file.
        kube_context: the kubeconfig's context to use ("" = its current context).
        namespace: the namespace the overlay was applied to (`deploy/overlays/kind`:
            `cloudwatcher`, `staging`: `cloudwatcher-staging`).
        kube_target: the system's public URL as phones reach it on the kubernetes runtime (the
            Ingress, e.g. `https://cloudwatcher.staging.example`): where an experiment's fleet
            sends its phones. "" = no fleet can start (the experiment says so).
    """

    base_port: int = 17000
    run_dir: Path = field(default_factory=lambda: Path("/var/tmp/cwh-17000"))
    timeout_scale: float = 1.0
    pg_members: int = 3
    redis_masters: int = 3
    redis_replicas_per_master: int = 1
    pg_sync_strict: bool = False
    failover: str = "standard"
    scrape_interval_s: float = 2.0
    prometheus_memory_mib: int = 0
    pg_os_user: str = "postgres"
    service_os_user: str = "cwh"
    services: bool = True
    api_replicas: int = 3
    hub_replicas: int = 2
    worker_replicas: int = 3
    scheduler_replicas: int = 2
    fault_proxy: bool = True
    toxiproxy_url: str = ""
    liveness_period_s: float = 5.0
    liveness_failure_threshold: int = 3
    auth_rate_limit_per_s: int = 300
    autoscale: bool = True
    autoscale_sync_s: float = 15.0
    hpa_dir: Path = DEFAULT_HPA_DIR
    backups: bool = True
    archive_timeout_s: int = 60
    backup_full_every_s: float = 24 * 3600.0
    backup_diff_every_s: float = 3600.0
    backup_retention_days: int = 7
    standby_of: int = 0
    standby_source_dir: str = ""
    region_latency_ms: int = 35
    region_failover_s: float = 0.0
    runtime: str = "local"
    container_subnet: str = ""
    container_cpu_scale: float = 0.5
    container_memory_scale: float = 0.5
    kubeconfig: str = ""
    kube_context: str = ""
    namespace: str = "cloudwatcher"
    kube_target: str = ""

    def __post_init__(self) -> None:
        if not 1024 <= self.base_port <= 65535 - 10000 - PORT_SPAN:
            raise SettingsError(
                f"{PREFIX}BASE_PORT={self.base_port}: must be between 1024 and "
                f"{65535 - 10000 - PORT_SPAN} (Redis Cluster uses port + 10000 for its bus)"
            )
        if self.failover not in PROFILES:
            raise SettingsError(f"{PREFIX}FAILOVER={self.failover!r}: one of {', '.join(PROFILES)}")
        if self.timeout_scale <= 0:
            raise SettingsError(f"{PREFIX}TIMEOUT_SCALE={self.timeout_scale}: must be > 0")
        if not 0.1 <= self.scrape_interval_s <= 300:  # also refuses nan
            raise SettingsError(f"{PREFIX}SCRAPE_INTERVAL_S={self.scrape_interval_s}: 0.1 to 300")
        if self.prometheus_memory_mib != 0 and not 32 <= self.prometheus_memory_mib <= 65536:
            raise SettingsError(
                f"{PREFIX}PROMETHEUS_MEMORY_MIB={self.prometheus_memory_mib}: 0 (derived from "
                "the topology) or 32 to 65536"
            )
        if not 1 <= self.pg_members <= MAX_PG_MEMBERS:
            raise SettingsError(
                f"{PREFIX}PG_MEMBERS={self.pg_members}: must be 1 to {MAX_PG_MEMBERS}"
            )
        if not 3 <= self.redis_masters <= MAX_REDIS_MASTERS:
            raise SettingsError(
                f"{PREFIX}REDIS_MASTERS={self.redis_masters}: must be 3 to {MAX_REDIS_MASTERS} "
                "(Redis Cluster needs 3 masters to elect)"
            )
        if not 0 <= self.redis_replicas_per_master <= 1:
            raise SettingsError(f"{PREFIX}REDIS_REPLICAS_PER_MASTER: must be 0 or 1")
        for name, value, top in (
            ("API_REPLICAS", self.api_replicas, SERVICE_SLOTS["api"]),
            ("HUB_REPLICAS", self.hub_replicas, SERVICE_SLOTS["hub"]),
            ("WORKER_REPLICAS", self.worker_replicas, SERVICE_SLOTS["worker"]),
            ("SCHEDULER_REPLICAS", self.scheduler_replicas, SERVICE_SLOTS["scheduler"]),
        ):
            if not 1 <= value <= top:
                raise SettingsError(f"{PREFIX}{name}={value}: must be 1 to {top}")
        if not 1 <= self.auth_rate_limit_per_s <= 100_000:
            raise SettingsError(
                f"{PREFIX}AUTH_RATE_LIMIT_PER_S={self.auth_rate_limit_per_s}: must be 1 to 100000"
            )
        if self.toxiproxy_url and not self.toxiproxy_url.startswith(("http://", "https://")):
            raise SettingsError(f"{PREFIX}TOXIPROXY_URL={self.toxiproxy_url!r}: an http(s) URL")
        if not 0.5 <= self.liveness_period_s <= 300:
            raise SettingsError(f"{PREFIX}LIVENESS_PERIOD_S={self.liveness_period_s}: 0.5 to 300")
        if not 1 <= self.liveness_failure_threshold <= 100:
            raise SettingsError(
                f"{PREFIX}LIVENESS_FAILURE_THRESHOLD={self.liveness_failure_threshold}: 1 to 100"
            )
        if not 1.0 <= self.autoscale_sync_s <= 300:
            raise SettingsError(f"{PREFIX}AUTOSCALE_SYNC_S={self.autoscale_sync_s}: 1 to 300")
        if not self.hpa_dir.is_absolute() or not self.hpa_dir.exists():
            raise SettingsError(f"{PREFIX}HPA_DIR={self.hpa_dir}: not an existing absolute path")
        if not 5 <= self.archive_timeout_s <= 300:
            raise SettingsError(
                f"{PREFIX}ARCHIVE_TIMEOUT_S={self.archive_timeout_s}: 5 to 300 (the RPO is 5 min)"
            )
        if not 60 <= self.backup_diff_every_s <= self.backup_full_every_s <= 7 * 24 * 3600:
            raise SettingsError(
                f"{PREFIX}BACKUP_DIFF_EVERY_S={self.backup_diff_every_s:g}, "
                f"{PREFIX}BACKUP_FULL_EVERY_S={self.backup_full_every_s:g}: need "
                "60 <= diff <= full <= 604800 s"
            )
        if not 1 <= self.backup_retention_days <= 365:
            raise SettingsError(
                f"{PREFIX}BACKUP_RETENTION_DAYS={self.backup_retention_days}: 1 to 365"
            )
        if not self.run_dir.is_absolute():
            raise SettingsError(f"{PREFIX}RUN_DIR={self.run_dir}: must be an absolute path")
        if self.standby_of:
            self._check_standby()
        self._check_runtime()

    def _check_runtime(self) -> None:
        if self.runtime not in RUNTIMES:
            raise SettingsError(f"{PREFIX}RUNTIME={self.runtime!r}: one of {', '.join(RUNTIMES)}")
        if self.runtime == "containers" and self.standby_of:
            raise SettingsError(
                f"{PREFIX}STANDBY_OF={self.standby_of}: a second region runs on the local "
                "runtime only"
            )
        if self.container_subnet:
            try:
                net = ipaddress.IPv4Network(self.container_subnet)
            except ValueError as exc:
                raise SettingsError(f"{PREFIX}CONTAINER_SUBNET: {exc}") from None
            if net.prefixlen > 24:
                raise SettingsError(
                    f"{PREFIX}CONTAINER_SUBNET={self.container_subnet}: at least a /24"
                )
        for name, value in (
            ("CONTAINER_CPU_SCALE", self.container_cpu_scale),
            ("CONTAINER_MEMORY_SCALE", self.container_memory_scale),
        ):
            if not 0.05 <= value <= 4:
                raise SettingsError(f"{PREFIX}{name}={value:g}: 0.05 to 4")
        self._check_kubernetes()

    def _check_kubernetes(self) -> None:
        if self.runtime == "kubernetes" and self.standby_of:
            raise SettingsError(
                f"{PREFIX}STANDBY_OF={self.standby_of}: a second region runs on the local "
                "runtime only"
            )
        if not _DNS_LABEL.match(self.namespace):
            raise SettingsError(
                f"{PREFIX}NAMESPACE={self.namespace!r}: a namespace's name (lower-case letters, "
                "digits and '-', at most 63, starting and ending with a letter or digit)"
            )
        if self.kube_context != self.kube_context.strip() or "\n" in self.kube_context:
            raise SettingsError(f"{PREFIX}KUBE_CONTEXT={self.kube_context!r}: a context's name")
        if self.kube_target and not self.kube_target.startswith(("http://", "https://")):
            raise SettingsError(f"{PREFIX}KUBE_TARGET={self.kube_target!r}: an http(s) URL")
        if not self.kubeconfig:
            return
        path = Path(self.kubeconfig)
        if not path.is_absolute():
            raise SettingsError(f"{PREFIX}KUBECONFIG={self.kubeconfig}: must be an absolute path")
        if self.runtime == "kubernetes" and not path.is_file():
            raise SettingsError(f"{PREFIX}KUBECONFIG={self.kubeconfig}: no such file")

    def _check_standby(self) -> None:
        if abs(self.standby_of - self.base_port) < PORT_SPAN:
            raise SettingsError(
                f"{PREFIX}STANDBY_OF={self.standby_of}: the primary region's base port must be "
                f"at least {PORT_SPAN} from this region's ({self.base_port})"
            )
        if self.backups:
            raise SettingsError(
                f"{PREFIX}STANDBY_OF={self.standby_of}: a standby region archives nothing until "
                "it is promoted; build it with backups off"
            )
        if not self.fault_proxy:
            raise SettingsError(
                f"{PREFIX}STANDBY_OF={self.standby_of}: the cross-region link goes through the "
                "fault proxy; it cannot be off"
            )
        if not 0 <= self.region_latency_ms <= 1000:
            raise SettingsError(f"{PREFIX}REGION_LATENCY_MS={self.region_latency_ms}: 0 to 1000")
        if self.region_failover_s and not 5 <= self.region_failover_s <= 3600:
            raise SettingsError(
                f"{PREFIX}REGION_FAILOVER_S={self.region_failover_s:g}: 0 (promote by hand) or "
                "5 to 3600 s"
            )

    @property
    def standby(self) -> bool:
        """This environment is a standby region (until promoted)."""
        return self.standby_of != 0

    @property
    def primary_region_dir(self) -> Path:
        """The primary region's run directory (meaningful for a standby region only)."""
        return Path(self.standby_source_dir or f"/var/tmp/cwh-{self.standby_of}")

    @property
    def timing(self) -> FailoverTiming:
        """The failure-detection timings of `failover`."""
        return PROFILES[self.failover]

    @property
    def ports(self) -> Ports:
        return Ports(self.base_port)

    @property
    def redis_nodes(self) -> int:
        return self.redis_masters * (1 + self.redis_replicas_per_master)

    @property
    def fault_api_url(self) -> str:
        """The Toxiproxy API experiments drive: a configured server, else the local one."""
        return self.toxiproxy_url.rstrip("/") or f"http://127.0.0.1:{self.ports.fault_api}"

    def listening_ports(self) -> dict[int, str]:
        """Every port this environment listens on the host -> what for (Redis buses included on
        the local runtime: a base 10000 away puts its Redis nodes on them)."""
        p = self.ports
        out = {
            p.supervisor: "supervisor",
            p.etcd_client: "etcd client",
            p.etcd_peer: "etcd peer",
            p.haproxy_write: "haproxy write",
            p.haproxy_read: "haproxy read",
            p.haproxy_https: "haproxy https",
            p.haproxy_stats: "haproxy stats",
            p.pgbouncer: "pgbouncer",
            p.redis_exporter: "redis exporter",
            p.prometheus: "prometheus",
        }
        for m in range(self.pg_members):
            out |= {p.postgres(m): f"pg{m}", p.patroni(m): f"patroni pg{m}"}
            out[p.postgres_exporter(m)] = f"postgres exporter pg{m}"
        for n in range(self.redis_nodes):
            out[p.redis(n)] = f"redis{n}"
            if self.runtime == "local":
                # In containers the bus stays on each node's own address, never published.
                out[p.redis(n) + 10000] = f"redis{n} cluster bus"
        if self.backups:
            out |= {p.backup_repo: "pgbackrest repository", p.backup_pg: "pgbackrest database"}
            out |= {p.backup_scratch: "backup-verify scratch postgres"}
        if self.standby:
            out[p.global_https] = "global entry point (https)"
        if self.fault_proxy and not self.toxiproxy_url:
            out[p.fault_api] = "fault proxy API"
            out |= {port: "fault proxy listener" for port in self.fault_proxy_listeners()}
        if self.services:
            out |= {p.service(i): "reference implementation" for i in range(4)}
            # Every slot scaling may fill, not only the replicas that start: a port taken
            # later would fail a scale-up, not the start.
            for name, slots in SERVICE_SLOTS.items():
                port = getattr(p, name)
                out |= {port(i): f"{name}{i}" for i in range(1, slots + 1)}
        return out

    def fault_proxy_listeners(self) -> list[int]:
        """Every port the fault proxy may listen on: the most members and Redis nodes the
        settings accept, whatever this topology uses (the start's port check covers them)."""
        p = self.ports
        out = [p.proxy_pg_write, p.proxy_pg_read, p.proxy_llm, p.proxy_sharepoint, p.proxy_gdrive]
        out += [p.proxy_pg_link(m) for m in range(MAX_PG_MEMBERS)]
        out += [p.proxy_redis(n) for n in range(MAX_REDIS_NODES)]
        return [*out, p.proxy_region_link]

    def timeout(self, seconds: float) -> float:
        """A deadline of `seconds`, scaled for this machine."""
        return seconds * self.timeout_scale

    def to_environ(self) -> dict[str, str]:
        """The `CWH_*` variables that rebuild these settings in another process."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, bool):
                value = "1" if value else "0"
            out[PREFIX + key.upper()] = str(value)
        return out

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> EnvSettings:
        """Build from `CWH_*` variables; unset ones take their defaults.

        `CWH_RUN_DIR` defaults to `/var/tmp/cwh-<base port>`.

        Raises:
            SettingsError: a variable does not parse or is out of range; the message names it.
        """
        env = os.environ if environ is None else environ

        def get(name: str, conv: type, default: object) -> object:
            raw = env.get(PREFIX + name)
            if raw is None or raw == "":
                return default
            try:
                if conv is bool:
                    if raw.lower() in ("1", "true", "yes", "on"):
                        return True
                    if raw.lower() in ("0", "false", "no", "off"):
                        return False
                    raise ValueError(raw)
                return conv(raw)
            except ValueError:
                raise SettingsError(f"{PREFIX}{name}={raw!r}: expected {conv.__name__}") from None

        base = int(str(get("BASE_PORT", int, cls.base_port)))
        standby_of = int(str(get("STANDBY_OF", int, cls.standby_of)))
        source = get("STANDBY_SOURCE_DIR", str, "")
        run_dir = Path(str(get("RUN_DIR", str, f"/var/tmp/cwh-{base}")))
        return cls(
            base_port=base,
            run_dir=run_dir,
            timeout_scale=float(str(get("TIMEOUT_SCALE", float, cls.timeout_scale))),
            pg_members=int(str(get("PG_MEMBERS", int, cls.pg_members))),
            redis_masters=int(str(get("REDIS_MASTERS", int, cls.redis_masters))),
            redis_replicas_per_master=int(
                str(get("REDIS_REPLICAS_PER_MASTER", int, cls.redis_replicas_per_master))
            ),
            pg_sync_strict=bool(get("PG_SYNC_STRICT", bool, cls.pg_sync_strict)),
            failover=str(get("FAILOVER", str, cls.failover)),
            scrape_interval_s=float(str(get("SCRAPE_INTERVAL_S", float, cls.scrape_interval_s))),
            prometheus_memory_mib=int(
                str(get("PROMETHEUS_MEMORY_MIB", int, cls.prometheus_memory_mib))
            ),
            pg_os_user=str(get("PG_OS_USER", str, cls.pg_os_user)),
            service_os_user=str(get("SERVICE_OS_USER", str, cls.service_os_user)),
            services=bool(get("SERVICES", bool, cls.services)),
            api_replicas=int(str(get("API_REPLICAS", int, cls.api_replicas))),
            hub_replicas=int(str(get("HUB_REPLICAS", int, cls.hub_replicas))),
            worker_replicas=int(str(get("WORKER_REPLICAS", int, cls.worker_replicas))),
            scheduler_replicas=int(str(get("SCHEDULER_REPLICAS", int, cls.scheduler_replicas))),
            fault_proxy=bool(get("FAULT_PROXY", bool, cls.fault_proxy)),
            toxiproxy_url=str(get("TOXIPROXY_URL", str, cls.toxiproxy_url)),
            liveness_period_s=float(str(get("LIVENESS_PERIOD_S", float, cls.liveness_period_s))),
            liveness_failure_threshold=int(
                str(get("LIVENESS_FAILURE_THRESHOLD", int, cls.liveness_failure_threshold))
            ),
            auth_rate_limit_per_s=int(
                str(get("AUTH_RATE_LIMIT_PER_S", int, cls.auth_rate_limit_per_s))
            ),
            autoscale=bool(get("AUTOSCALE", bool, cls.autoscale)),
            autoscale_sync_s=float(str(get("AUTOSCALE_SYNC_S", float, cls.autoscale_sync_s))),
            hpa_dir=Path(str(get("HPA_DIR", str, cls.hpa_dir))).absolute(),
            # A standby region archives nothing until it is promoted (`_check_standby`).
            backups=not standby_of,
            standby_of=standby_of,
            standby_source_dir=str(source),
            region_latency_ms=int(str(get("REGION_LATENCY_MS", int, cls.region_latency_ms))),
            region_failover_s=float(str(get("REGION_FAILOVER_S", float, cls.region_failover_s))),
            runtime=str(get("RUNTIME", str, cls.runtime)),
            container_subnet=str(get("CONTAINER_SUBNET", str, cls.container_subnet)),
            container_cpu_scale=float(
                str(get("CONTAINER_CPU_SCALE", float, cls.container_cpu_scale))
            ),
            container_memory_scale=float(
                str(get("CONTAINER_MEMORY_SCALE", float, cls.container_memory_scale))
            ),
            kubeconfig=str(get("KUBECONFIG", str, cls.kubeconfig)),
            kube_context=str(get("KUBE_CONTEXT", str, cls.kube_context)),
            namespace=str(get("NAMESPACE", str, cls.namespace)),
            kube_target=str(get("KUBE_TARGET", str, cls.kube_target)),
        )
