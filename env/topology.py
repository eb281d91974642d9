"""The environment's topology as data: what runs, how many of each, within which bounds, what
each replica requests and listens on, how it is probed, what it needs first.

Pure: `build(settings, hpas)` reads nothing but its arguments, so the shape of the system is
tested like a config (`tests/unit/test_topology.py`) and every runtime starts the same thing. The
local supervisor starts processes from it; a containers runtime and a Kubernetes one read the same
description (a workload is a Deployment or StatefulSet there, a replica a pod).

Vocabulary is Kubernetes': a *workload* is a set of interchangeable replicas of one component
(`api`, `pg`, `redis`); a *replica* one running copy with a stable name (`api2`, `pg0`) and its
own ports; *probes* are HTTP liveness/readiness checks with Kubernetes' fields; the replica
bounds of an autoscaled workload come from its HorizontalPodAutoscaler (`deploy/base/`), and
`min_available` is its PodDisruptionBudget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from env.hpa import HPASpec
from env.settings import SERVICE_SLOTS, EnvSettings

#: The stages, in an order that respects `STAGE_PREREQUISITES` (stopping goes the other way).
#: A workload depends only on workloads of the stages its stage waits for.
STAGES = (
    "etcd",
    "faultproxy",
    "backup",
    "postgresql",
    "sync_standby",
    "backup_stanza",
    "haproxy",
    "pgbouncer",
    "redis",
    "exporters",
    "prometheus",
    "services",
    "scheduler",
)

#: What each stage waits for before it starts: the stages whose readiness it really needs.
#: Everything else starts at once, side by side (`env/startgraph.py`); a stage an environment
#: does not have (no backups, no fault proxy, a user's Toxiproxy) is skipped over. The start is
#: over when every stage is ready.
STAGE_PREREQUISITES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "etcd": (),
        # Its proxies listen whether or not their upstreams run yet.
        "faultproxy": (),
        "backup": (),
        # Patroni keeps its leader lock in etcd (with the credentials `etcd.enable_auth` sets
        # when etcd is ready); the members stream from each other through the fault proxy; the
        # primary's archive command pushes to the backup servers from its first segment.
        "postgresql": ("etcd", "faultproxy", "backup"),
        # Patroni names the synchronous standby two of its loops after the replicas stream;
        # nothing but the end of the start needs it, so nothing else waits for it.
        "sync_standby": ("postgresql",),
        # pgBackRest's stanza, created on the repository host from the running primary.
        "backup_stanza": ("postgresql", "backup"),
        # Routes to the members Patroni names: ready once it routes to the leader and replicas.
        "haproxy": ("postgresql",),
        # Forwards to HAProxy's write path: ready once a query reaches the primary through it.
        "pgbouncer": ("haproxy",),
        # The nodes announce the fault proxy's ports: replicas replicate through it.
        "redis": ("faultproxy",),
        # Each exporter scrapes its member or the Redis nodes.
        "exporters": ("postgresql", "redis"),
        "prometheus": ("exporters",),
        # Their database and cache addresses are the load balancer's, pgBouncer's and the
        # nodes' (through the fault proxy); the API and hub replicas join HAProxy; Prometheus
        # learns of each replica as it starts.
        "services": ("faultproxy", "haproxy", "pgbouncer", "redis", "prometheus"),
        # The same, and its leader takes the first backup at once: into the stanza. Apart from
        # the other services so that they need not wait for the stanza too.
        "scheduler": ("faultproxy", "backup_stanza", "haproxy", "pgbouncer", "redis", "prometheus"),
    }
)

#: The stages of the reference implementation's services (a standby region starts them when it
#: is promoted).
SERVICE_STAGES = ("services", "scheduler")

#: The reference implementation's roles: each replica is `python -m reference_impl`.
SERVICE_ROLES = ("llm", "sharepoint", "gdrive", "gateway", "api", "hub", "worker", "scheduler")

#: The seed's PodDisruptionBudget: at least two replicas of a serving workload stay available
#: through every voluntary disruption (scale-in, rolling update, drain).
SEED_MIN_AVAILABLE = 2

#: CPU requests, millicores. The API's decides where the HPA's "70 %" lies: 200m makes it
#: reachable on a 2-core machine (deploy/base/README.md explains the choice).
API_CPU_REQUEST_M = 200
SERVICE_CPU_REQUEST_M = 100
#: The seed's pods are limited to 2 CPUs.
SEED_CPU_LIMIT_M = 2000


class TopologyError(ValueError):
    """The description contradicts itself (a bound, a dependency, a port): the message says
    where."""


@dataclass(frozen=True)
class Probe:
    """An HTTP probe with Kubernetes' fields: GET `path` on the replica's `port` (a port name)
    every `period_s`; an answer other than 2xx/3xx within `timeout_s` fails it; it fails for
    good after `failure_threshold` failures in a row."""

    path: str
    port: str = "http"
    period_s: float = 5.0
    timeout_s: float = 2.0
    failure_threshold: int = 3


@dataclass(frozen=True)
class Resources:
    """What one replica declares, Kubernetes' way (None: nothing declared). Millicores."""

    cpu_request_m: int | None = None
    cpu_limit_m: int | None = None


@dataclass(frozen=True)
class Replica:
    """One copy of a workload: `name` is stable (its log, its load balancer slot, its scrape
    target), `index` its number in the workload, `ports` name -> TCP port on 127.0.0.1."""

    workload: str
    name: str
    index: int
    ports: Mapping[str, int]


@dataclass(frozen=True)
class Workload:
    """A set of interchangeable replicas.

    Attributes:
        name: the workload (`api`, `pg`, `redis`, `etcd`, ...).
        kind: what each replica is (the status' `kind`: `api`, `patroni`, `redis`, ...).
        stage: the start stage it belongs to (one of STAGES).
        slots: every replica it may ever have, in order: the first `replicas` run at start,
            scaling up takes the next free slot (a slot fixes a replica's name and ports).
        replicas: how many run at start (an autoscaler, when one runs, brings it within the
            bounds, as Kubernetes' HPA does with a Deployment's `replicas`).
        min_replicas, max_replicas: the bounds scaling keeps to (equal when it never scales).
        autoscaled: an HPA drives `replicas` between the bounds.
        min_available: PodDisruptionBudget: voluntary removals never leave fewer available
            (None: no budget).
        resources: what each replica requests.
        liveness: failing it restarts the replica (None: only its exit does).
        readiness: while it fails the replica takes no traffic (None: readiness is the
            workload's own check, e.g. Patroni's cluster view).
        depends_on: workloads that must be ready before this one starts (in stages its stage
            waits for: `STAGE_PREREQUISITES`).
        load_balancer: the HAProxy backend its replicas join once ready (None: not behind it).
    """

    name: str
    kind: str
    stage: str
    slots: tuple[Replica, ...]
    replicas: int
    min_replicas: int
    max_replicas: int
    autoscaled: bool = False
    min_available: int | None = None
    resources: Resources = field(default_factory=Resources)
    liveness: Probe | None = None
    readiness: Probe | None = None
    depends_on: tuple[str, ...] = ()
    load_balancer: str | None = None

    @property
    def initial(self) -> tuple[Replica, ...]:
        """The replicas that run at start."""
        return self.slots[: self.replicas]

    def slot(self, name: str) -> Replica:
        for r in self.slots:
            if r.name == name:
                return r
        raise KeyError(f"{self.name} has no replica {name!r}")


@dataclass(frozen=True)
class Topology:
    """Every workload of the environment, in start order."""

    workloads: tuple[Workload, ...]

    def workload(self, name: str) -> Workload:
        for w in self.workloads:
            if w.name == name:
                return w
        known = ", ".join(w.name for w in self.workloads)
        raise KeyError(f"no workload {name!r} (known: {known})")

    def owner(self, replica: str) -> Workload:
        """The workload replica `replica` (`api2`, `pg0`) belongs to."""
        for w in self.workloads:
            if any(r.name == replica for r in w.slots):
                return w
        raise KeyError(f"no replica {replica!r} in the topology")

    def stages(self) -> list[tuple[str, list[Workload]]]:
        """(stage, its workloads) in start order, empty stages left out."""
        out = [(s, [w for w in self.workloads if w.stage == s]) for s in STAGES]
        return [(s, ws) for s, ws in out if ws]

    def initial_replicas(self) -> list[Replica]:
        return [r for w in self.workloads for r in w.initial]

    def ports(self) -> dict[int, str]:
        """Every port any slot may listen on -> the replica and port name (for the preflight)."""
        return {
            port: f"{r.name} {what}"
            for w in self.workloads
            for r in w.slots
            for what, port in r.ports.items()
        }


# --- building -----------------------------------------------------------------------------------


def _one(workload: str, ports: Mapping[str, int]) -> tuple[Replica, ...]:
    return (Replica(workload, workload, 0, dict(ports)),)


def _numbered(
    workload: str, indexes: Iterable[int], ports: Mapping[str, Callable[[int], int]]
) -> tuple[Replica, ...]:
    """Replicas `<workload><i>`; `ports` maps a port name to the port of replica i."""
    return tuple(
        Replica(workload, f"{workload}{i}", i, {k: f(i) for k, f in ports.items()}) for i in indexes
    )


def _fixed(
    name: str,
    kind: str,
    stage: str,
    slots: tuple[Replica, ...],
    *,
    depends_on: tuple[str, ...] = (),
    readiness: Probe | None = None,
    liveness: Probe | None = None,
    resources: Resources | None = None,
) -> Workload:
    """A workload that never scales: every slot runs."""
    n = len(slots)
    return Workload(
        name,
        kind,
        stage,
        slots,
        n,
        n,
        n,
        resources=resources or Resources(),
        liveness=liveness,
        readiness=readiness,
        depends_on=depends_on,
    )


def _bounds(
    name: str, initial: int, slots: int, hpas: Mapping[str, HPASpec]
) -> tuple[int, int, bool]:
    """(min, max, autoscaled): the HPA's bounds when one targets the workload, else fixed at
    `initial`."""
    hpa = next((h for h in hpas.values() if h.target.name == name), None)
    if hpa is None:
        return initial, initial, False
    if hpa.max_replicas > slots:
        raise TopologyError(
            f"{hpa.file}:{hpa.line}: {name} maxReplicas {hpa.max_replicas}: "
            f"the local environment has ports for {slots}"
        )
    return hpa.min_replicas, hpa.max_replicas, True


def _services(settings: EnvSettings, hpas: Mapping[str, HPASpec]) -> list[Workload]:
    p = settings.ports
    live = Probe(
        "/health/live",
        period_s=settings.liveness_period_s,
        failure_threshold=settings.liveness_failure_threshold,
    )
    ready = Probe("/health/ready", period_s=5.0, failure_threshold=2)
    deps = ("pgbouncer", "haproxy", "redis", "prometheus")
    small = Resources(SERVICE_CPU_REQUEST_M, SEED_CPU_LIMIT_M)
    out = [
        _fixed(
            role,
            role,
            "services",
            _one(role, {"http": port}),
            depends_on=deps,
            readiness=ready,
            liveness=live,
            resources=small,
        )
        for role, port in (
            ("llm", p.llm),
            ("sharepoint", p.sharepoint),
            ("gdrive", p.gdrive),
            ("gateway", p.gateway),
        )
    ]
    # (workload, initial replicas, port of slot i, CPU request, load balancer backend)
    scaled = (
        ("api", settings.api_replicas, p.api, API_CPU_REQUEST_M, "api"),
        ("hub", settings.hub_replicas, p.hub, SERVICE_CPU_REQUEST_M, "hub"),
        ("worker", settings.worker_replicas, p.worker, SERVICE_CPU_REQUEST_M, None),
        ("scheduler", settings.scheduler_replicas, p.scheduler, SERVICE_CPU_REQUEST_M, None),
    )
    for name, initial, port, cpu_m, backend in scaled:
        n_slots = SERVICE_SLOTS[name]
        lo, hi, auto = _bounds(name, initial, n_slots, hpas)
        serving = name in ("api", "hub", "worker")
        out.append(
            Workload(
                name,
                name,
                "scheduler" if name == "scheduler" else "services",
                _numbered(name, range(1, n_slots + 1), {"http": port}),
                # As a Deployment's `replicas` beside its HPA: the start count is the settings',
                # and the autoscaler, when it runs, brings it within the bounds (a benchmark
                # starts one API replica on purpose).
                initial,
                lo,
                hi,
                autoscaled=auto,
                min_available=min(SEED_MIN_AVAILABLE, lo) if serving else None,
                resources=Resources(cpu_m, SEED_CPU_LIMIT_M),
                liveness=live,
                readiness=ready,
                depends_on=deps,
                load_balancer=backend,
            )
        )
    return out


def build(settings: EnvSettings, hpas: Mapping[str, HPASpec] | None = None) -> Topology:
    """The environment `settings` describe; `hpas` (by name, `env.hpa.load()`) give the bounds
    of the workloads they target. Raises TopologyError when the result contradicts itself."""
    s, p = settings, settings.ports
    workloads = [
        _fixed("etcd", "etcd", "etcd", _one("etcd", {"client": p.etcd_client, "peer": p.etcd_peer}))
    ]
    if s.fault_proxy and not s.toxiproxy_url:
        workloads.append(
            _fixed(
                "faultproxy", "faultproxy", "faultproxy", _one("faultproxy", {"api": p.fault_api})
            )
        )
    if s.backups:
        # Before PostgreSQL: its archive command pushes to the repository host from the start.
        workloads += [
            _fixed(
                "backup-repo",
                "pgbackrest_repo",
                "backup",
                _one("backup-repo", {"tls": p.backup_repo}),
            ),
            _fixed("backup-pg", "pgbackrest_pg", "backup", _one("backup-pg", {"tls": p.backup_pg})),
        ]
    pg_ports: dict[str, Callable[[int], int]] = {"postgres": p.postgres, "patroni": p.patroni}
    workloads += [
        _fixed(
            "pg",
            "patroni",
            "postgresql",
            _numbered("pg", range(s.pg_members), pg_ports),
            depends_on=("etcd",),
        ),
        _fixed(
            "haproxy",
            "haproxy",
            "haproxy",
            _one(
                "haproxy",
                {
                    "write": p.haproxy_write,
                    "read": p.haproxy_read,
                    "https": p.haproxy_https,
                    "stats": p.haproxy_stats,
                },
            ),
            depends_on=("pg",),
        ),
        *(
            [
                _fixed(
                    "global-lb",
                    "haproxy_global",
                    "haproxy",
                    _one("global-lb", {"https": p.global_https}),
                )
            ]
            if s.standby
            else []
        ),
        _fixed(
            "pgbouncer",
            "pgbouncer",
            "pgbouncer",
            _one("pgbouncer", {"pgbouncer": p.pgbouncer}),
            depends_on=("haproxy",),
        ),
        _fixed(
            "redis",
            "redis",
            "redis",
            _numbered(
                "redis",
                range(s.redis_nodes),
                # Redis Cluster's bus is each node's port + 10000, fixed by Redis.
                {"redis": p.redis, "bus": lambda n: p.redis(n) + 10000},
            ),
        ),
        _fixed(
            "postgres-exporter",
            "postgres_exporter",
            "exporters",
            _numbered("postgres-exporter", range(s.pg_members), {"metrics": p.postgres_exporter}),
            depends_on=("pg",),
        ),
        _fixed(
            "redis-exporter",
            "redis_exporter",
            "exporters",
            _one("redis-exporter", {"metrics": p.redis_exporter}),
            depends_on=("redis",),
        ),
        _fixed(
            "prometheus",
            "prometheus",
            "prometheus",
            _one("prometheus", {"http": p.prometheus}),
            readiness=Probe("/-/ready"),
            depends_on=("postgres-exporter", "redis-exporter"),
        ),
    ]
    if s.services:
        workloads += _services(s, hpas or {})
    topo = Topology(tuple(workloads))
    check(topo)
    return topo


def waits_for(stage: str) -> set[str]:
    """Every stage `stage` waits for, directly or through another (`STAGE_PREREQUISITES`)."""
    out: set[str] = set()
    todo = list(STAGE_PREREQUISITES[stage])
    while todo:
        dep = todo.pop()
        if dep not in out:
            out.add(dep)
            todo += STAGE_PREREQUISITES[dep]
    return out


def check(topo: Topology) -> None:
    """Raise TopologyError when a bound, a dependency or a port contradicts the rest."""
    order = {s: i for i, s in enumerate(STAGES)}
    names = [w.name for w in topo.workloads]
    if len(set(names)) != len(names):
        raise TopologyError(f"a workload is named twice: {names}")
    by_name = {w.name: w for w in topo.workloads}
    seen: dict[int, str] = {}
    for w in topo.workloads:
        if w.stage not in order:
            raise TopologyError(f"{w.name}: unknown stage {w.stage!r}")
        if not 0 < w.min_replicas <= w.max_replicas <= len(w.slots):
            raise TopologyError(
                f"{w.name}: bounds {w.min_replicas}..{w.max_replicas} do not fit its "
                f"{len(w.slots)} slots"
            )
        if not 0 < w.replicas <= len(w.slots):
            raise TopologyError(f"{w.name}: {w.replicas} replicas, {len(w.slots)} slots")
        if w.min_available is not None and w.min_available > w.min_replicas:
            raise TopologyError(
                f"{w.name}: disruption budget {w.min_available} above its minimum "
                f"{w.min_replicas}: no replica could ever be removed"
            )
        for dep in w.depends_on:
            if dep not in by_name:
                raise TopologyError(f"{w.name} depends on {dep!r}, which is not in the topology")
            if by_name[dep].stage not in waits_for(w.stage):
                raise TopologyError(f"{w.name} depends on {dep}, which does not start before it")
        for r in w.slots:
            for port in r.ports.values():
                if port in seen:
                    raise TopologyError(f"port {port}: {r.name} and {seen[port]}")
                seen[port] = r.name
