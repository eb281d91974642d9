"""How each replica of the topology runs as a process on this machine: its command line,
environment, working directory, OS user and liveness probe.

This is the local runtime's half of the topology seam: `env/topology.py` says *what* runs
(workloads, replicas, ports, probes), this module says *how* a process runs it here; a
containers runtime maps the same replicas to containers instead. Pure: nothing is started.
"""

from __future__ import annotations

import math
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from env import backup, configs, hpa, network, topology
from env.layout import Layout
from env.liveness import LivenessProbe
from env.patroni_launch import patroni_argv
from env.secrets import Secrets
from env.settings import EnvSettings
from env.topology import SERVICE_ROLES, Replica, Topology, Workload

PROJECT_ROOT = Path(__file__).resolve().parent.parent
Ids = tuple[int, int] | None
#: Where the image links Debian's `libjemalloc2` (deploy/images/Dockerfile), whatever the
#: architecture's directory.
IMAGE_JEMALLOC = "/usr/local/lib/libjemalloc.so.2"


def allocator() -> str | None:
    """The malloc the service replicas preload: jemalloc when Debian's `libjemalloc2` is
    installed here (in this architecture's library directory), else None (glibc's). Under a
    long soak glibc's arenas fragment with the TLS connections' churn: the workers grew
    15-28 %/h on glibc against 1-4 %/h on jemalloc with the same Python heap (README,
    "Benchmarks")."""
    multiarch = sysconfig.get_config_var("MULTIARCH")
    here = [Path(f"/usr/lib/{multiarch}/libjemalloc.so.2")] if multiarch else []
    found = [
        p for p in (*here, *sorted(Path("/usr/lib").glob("*/libjemalloc.so.2"))) if p.is_file()
    ]
    return str(found[0]) if found else None


#: Patroni's writes to etcd a second, measured on the environment's etcd (its revision over a
#: minute of a quiet soak: 2.28): what `bench/etcd_memory.py` scales its retention by.
PATRONI_WRITES_PER_S = 2.3
#: How much history etcd keeps (periodic compaction) and how many raft entries between
#: snapshots: the two settings that bound its memory (`etcd_memory_flags`).
ETCD_RETENTION_S = 300
ETCD_SNAPSHOT_COUNT = 1000


def etcd_memory_flags(
    retention_s: float = ETCD_RETENTION_S, snapshot_count: int = ETCD_SNAPSHOT_COUNT
) -> list[str]:
    """etcd's flags that bound its memory under Patroni's writes (`make bench-etcd` measures
    them at an accelerated rate: it passes a retention scaled by the acceleration).

    Patroni renews its keys every loop: etcd keeps every revision unless told to compact,
    and grew linearly through a 30-minute soak (28 -> 33 MiB). Patroni reads no history (a
    watch that falls behind re-reads), so five minutes of it is plenty (Patroni's own image
    keeps an hour).

    etcd also keeps its raft log in memory: `--snapshot-count` entries (3.4's default,
    100,000, is ~12 h of Patroni's writes) plus the 5,000 it keeps after each snapshot (not a
    setting in 3.4). `make bench-etcd` (30,000 puts, 3.6 h of Patroni): with 1,000 its
    anonymous memory levelled after 8,000 writes (an hour of Patroni), at 13.2-15.2 MiB; with
    10,000 it swung in a larger sawtooth (peaks 16.7, 20.3, 19.7 MiB at each snapshot), level
    only from the second (2.4 h of Patroni). A snapshot of a store this small is cheap (under
    2 MB, about every 7 minutes)."""
    return [
        *("--auto-compaction-mode", "periodic"),
        # Whole milliseconds: Go's durations take no exponent, and a bare number means hours.
        *("--auto-compaction-retention", f"{round(retention_s * 1000)}ms"),
        *("--snapshot-count", str(snapshot_count)),
    ]


#: Prometheus's series per replica by the replica's kind, counted on the default topology
#: (7,871 in all): a PostgreSQL member (its exporter's 569 and Patroni's 25), a Redis node, a
#: replica of each service (its own, plus HAProxy's lines for a server behind it); and the
#: rest (HAProxy's frontends and backends, Prometheus itself, the gateway, the stubs, the
#: supervisor).
PROMETHEUS_SERIES = {
    "patroni": 594, "redis": 356, "api": 219, "hub": 172, "worker": 82, "scheduler": 82,
}  # fmt: skip
PROMETHEUS_SERIES_REST = 2542
#: The measured point the limit scales from: 80 MiB held Prometheus flat at the default
#: topology's 7,871 series, scraped every 2 s, with its live heap (half the collector's goal,
#: about 35 MiB) at less than half of it (README, "Prometheus's memory").
PROMETHEUS_MEASURED_MIB, PROMETHEUS_MEASURED_SERIES, PROMETHEUS_MEASURED_SCRAPE_S = 80, 7871, 2.0
#: A series' live heap, KiB: at the start (32 MiB at 7,125 series), and what a full 3-hour
#: head adds at a 2 s scrape (a 40-byte reference per chunk mapped to disk, one chunk per 120
#: scrapes); the second scales with the scrape rate.
PROMETHEUS_LIVE_KIB, PROMETHEUS_HEAD_KIB = 4.5, 1.8


def prometheus_series(settings: EnvSettings, topo: Topology) -> int:
    """How many series Prometheus may hold for `topo` (`PROMETHEUS_SERIES`): each workload at
    every slot it has when the autoscaler runs (it, or `cwh env scale`, may fill them), at its
    replicas otherwise (the autoscaler switched on later, or a manual scale beyond the start,
    takes from the limit's room: set `CWH_PROMETHEUS_MEMORY_MIB` for that)."""
    return PROMETHEUS_SERIES_REST + sum(
        (len(w.slots) if settings.autoscale else w.replicas) * PROMETHEUS_SERIES[w.kind]
        for w in topo.workloads
        if w.kind in PROMETHEUS_SERIES
    )


def prometheus_memory_mib(settings: EnvSettings, topo: Topology) -> int:
    """Prometheus's Go memory limit, MiB: the setting, or (0) derived from the topology: the
    measured point scaled by the series it may hold and by what a series costs at the
    settings' scrape interval against the measured one; at least the measured point."""
    if settings.prometheus_memory_mib:
        return settings.prometheus_memory_mib
    at = PROMETHEUS_MEASURED_SCRAPE_S / settings.scrape_interval_s
    per_series = (PROMETHEUS_LIVE_KIB + PROMETHEUS_HEAD_KIB * at) / (
        PROMETHEUS_LIVE_KIB + PROMETHEUS_HEAD_KIB
    )
    scale = prometheus_series(settings, topo) / PROMETHEUS_MEASURED_SERIES * per_series
    return max(PROMETHEUS_MEASURED_MIB, math.ceil(PROMETHEUS_MEASURED_MIB * scale))


def prometheus_memory_env(settings: EnvSettings, topo: Topology) -> dict[str, str]:
    """Prometheus's Go memory limit (`prometheus_memory_mib`), as its environment. The Go
    runtime returns freed memory to the system only slowly and keeps the high-water mark of
    its busiest moments (a compaction, a burst of queries); a limit makes it collect and
    return memory before passing it, so resident memory levels off at the limit."""
    return {"GOMEMLIMIT": f"{prometheus_memory_mib(settings, topo)}MiB"}


@dataclass(frozen=True)
class ProcessSpec:
    """One replica's process.

    Attributes:
        argv: command line (never a secret: those go through `env` or files).
        env: variables added to the supervisor's minimal environment.
        cwd: working directory (None: the supervisor's).
        as_user: (uid, gid) to run as (None: the supervisor's user).
        grace_s: how long SIGTERM may take before SIGKILL.
        liveness: restart the process when this probe fails (None: only when it exits).
    """

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    as_user: Ids = None
    grace_s: float = 10.0
    liveness: LivenessProbe | None = None


@dataclass(frozen=True)
class Commands:
    """The process of each replica, from the environment's settings, layout and secrets.

    Attributes:
        pg_user: the PostgreSQL OS user's ids (Patroni and pgBouncer refuse root).
        service_user: the unprivileged user of everything else (None: stay as we are).
        python_user: the same for Python processes, None when that user cannot run our Python.
        exporter_queries: postgres-exporter's extra queries, copied into the run directory.
    """

    settings: EnvSettings
    layout: Layout
    secrets: Secrets
    pg_user: Ids
    service_user: Ids
    python_user: Ids
    exporter_queries: Path
    #: The Python and the source tree the replicas run (the image's on the containers runtime).
    python: str = sys.executable
    code_root: Path = PROJECT_ROOT
    #: The malloc preloaded into the service replicas (`allocator`), None for glibc's.
    malloc: str | None = field(default_factory=allocator)
    #: The topology being run (the supervisor's), whose bounds size Prometheus's memory;
    #: None: the settings' with the HPAs of `settings.hpa_dir`.
    topo: Topology | None = None

    def at(self, name: str, port: int) -> str:
        """`host:port` of replica `name`'s `port`, as the other replicas reach it."""
        return f"{network.host(self.settings, name)}:{port}"

    @property
    def bind(self) -> str:
        return network.bind(self.settings)

    def for_replica(self, workload: Workload, replica: Replica) -> ProcessSpec:
        """The process that runs `replica` of `workload`; KeyError for a kind unknown here."""
        if workload.kind in SERVICE_ROLES:
            return self.service(workload, replica)
        return {
            "etcd": self.etcd,
            "faultproxy": self.fault_proxy,
            "patroni": self.patroni,
            "haproxy": self.haproxy,
            "haproxy_global": self.global_lb,
            "pgbouncer": self.pgbouncer,
            "redis": self.redis,
            "postgres_exporter": self.postgres_exporter,
            "redis_exporter": self.redis_exporter,
            "prometheus": self.prometheus,
            "pgbackrest_repo": self.backup_repo,
            "pgbackrest_pg": self.backup_pg,
        }[workload.kind](replica)

    def etcd(self, r: Replica) -> ProcessSpec:
        client, peer = r.ports["client"], r.ports["peer"]
        argv = [
            "etcd",
            *("--name", "cwh", "--data-dir", str(self.layout.etcd_data)),
            *("--listen-client-urls", f"http://{self.bind}:{client}"),
            *("--advertise-client-urls", f"http://{self.at(r.name, client)}"),
            *("--listen-peer-urls", f"http://{self.bind}:{peer}"),
            *("--initial-advertise-peer-urls", f"http://{self.at(r.name, peer)}"),
            *("--initial-cluster", f"cwh=http://{self.at(r.name, peer)}"),
            *("--listen-metrics-urls", "", "--log-level", "warn"),
            *etcd_memory_flags(),
        ]
        return ProcessSpec(argv, as_user=self.service_user)

    def fault_proxy(self, r: Replica) -> ProcessSpec:
        """A real `toxiproxy-server` when one is on the PATH, else our compatible one."""
        port, config = str(r.ports["api"]), str(self.layout.fault_proxy_config)
        # The image has no toxiproxy-server: on the containers runtime, always ours.
        if shutil.which("toxiproxy-server") and not network.containers(self.settings):
            argv = ["toxiproxy-server", "-host", self.bind, "-port", port, "-config", config]
            as_user = self.service_user
        else:
            argv = [self.python, "-m", "env.faultproxy", "--host", self.bind, "--port", port]
            argv += ["--config", config]
            as_user = self.python_user
        return ProcessSpec(
            argv,
            env={"PYTHONPATH": str(self.code_root)},
            cwd=self.layout.run_dir,
            as_user=as_user,
        )

    @property
    def _pg_env(self) -> dict[str, str]:
        return {"HOME": str(self.layout.pg_root), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

    def patroni(self, r: Replica) -> ProcessSpec:
        return ProcessSpec(
            # Patroni with upstream's fix for a live postmaster taken for a stale pid file.
            patroni_argv(str(self.layout.patroni_config(r.index))),
            env=self._pg_env,
            cwd=self.layout.pg_member(r.index),
            as_user=self.pg_user,
            grace_s=30.0,
        )

    def backup_repo(self, r: Replica) -> ProcessSpec:
        """The backup repository host's pgBackRest server, as the user that owns the
        repository (the scheduler's, which starts the backups there)."""
        argv = backup.server_command(backup.repo_config_path(self.layout))
        return ProcessSpec(argv, cwd=self.layout.backup_dir, as_user=self.python_user)

    def backup_pg(self, r: Replica) -> ProcessSpec:
        """The database host's pgBackRest server, as the PostgreSQL user (it reads the data
        directories for backups, and writes them on a restore)."""
        argv = backup.server_command(backup.pg_config_path(self.layout))
        return ProcessSpec(
            argv, env=self._pg_env, cwd=self.layout.backup_pg_dir, as_user=self.pg_user
        )

    def haproxy(self, r: Replica) -> ProcessSpec:
        # As root: it reads its key and binds, then its workers drop to the service user.
        return ProcessSpec(
            ["haproxy", "-W", "-db", "-f", str(self.layout.haproxy_dir / "haproxy.cfg")]
        )

    def global_lb(self, r: Replica) -> ProcessSpec:
        return ProcessSpec(
            ["haproxy", "-W", "-db", "-f", str(self.layout.global_lb_dir / "haproxy.cfg")]
        )

    def pgbouncer(self, r: Replica) -> ProcessSpec:
        return ProcessSpec(
            ["pgbouncer", str(self.layout.pgbouncer_dir / "pgbouncer.ini")],
            env=self._pg_env,
            cwd=self.layout.pgbouncer_dir,
            as_user=self.pg_user,
        )

    def redis(self, r: Replica) -> ProcessSpec:
        return ProcessSpec(
            ["redis-server", str(self.layout.redis_dir(r.index) / "redis.conf")],
            cwd=self.layout.redis_dir(r.index),
            as_user=self.service_user,
        )

    def postgres_exporter(self, r: Replica) -> ProcessSpec:
        member = self.at(f"pg{r.index}", self.settings.ports.postgres(r.index))
        dsn = (
            f"postgresql://postgres:{self.secrets.pg_superuser}@{member}/postgres?"
            + configs.postgres_url_tls(self.layout)
        )
        argv = [
            "prometheus-postgres-exporter",
            f"--web.listen-address={self.bind}:{r.ports['metrics']}",
            "--log.level=warn",
            f"--extend.query-path={self.exporter_queries}",
        ]
        return ProcessSpec(argv, env={"DATA_SOURCE_NAME": dsn}, as_user=self.service_user)

    def redis_exporter(self, r: Replica) -> ProcessSpec:
        argv = [
            "prometheus-redis-exporter",
            f"-web.listen-address={self.bind}:{r.ports['metrics']}",
            "-redis.addr=",
            "-is-cluster=false",
            f"-tls-ca-cert-file={self.layout.ca_cert}",
        ]
        # Its ACL user for every node it scrapes; the password only in its environment.
        env = {
            "REDIS_USER": configs.REDIS_EXPORTER_USER,
            "REDIS_PASSWORD": self.secrets.redis_exporter,
        }
        return ProcessSpec(argv, env=env, as_user=self.service_user)

    def prometheus(self, r: Replica) -> ProcessSpec:
        port, lay = r.ports["http"], self.layout
        argv = [
            "prometheus",
            f"--config.file={lay.prometheus_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={lay.prometheus_dir / 'data'}",
            f"--web.listen-address={self.bind}:{port}",
            # No lifecycle or admin API (a web page could POST /-/quit or delete series):
            # reloads are SIGHUP (`LocalEnvironment.reload_prometheus`). Answers carry no
            # CORS header for any origin but its own, so other sites cannot read them.
            f"--web.cors.origin=http://127\\.0\\.0\\.1:{port}",
            "--storage.tsdb.retention.time=7d",
            "--log.level=warn",
        ]
        topo = self.topo or topology.build(self.settings, hpa.load(self.settings.hpa_dir))
        env = prometheus_memory_env(self.settings, topo)
        return ProcessSpec(argv, env=env, as_user=self.service_user)

    # ---- the reference implementation ------------------------------------------------------

    def service_environment(self) -> dict[str, str]:
        """What every service replica is told (`CW_*`): where its dependencies are (through
        the fault proxy when there is one), its credentials, its state directory."""
        s, lay, ports, secrets = self.settings, self.layout, self.settings.ports, self.secrets
        through = {
            int(p["upstream"].rsplit(":", 1)[1]): int(p["listen"].rsplit(":", 1)[1])
            for p in configs.fault_proxies(s)
        }

        def via(name: str, port: int, proxied: bool = True) -> str:
            """Replica `name`'s `port`, through the fault proxy when there is one."""
            if s.fault_proxy and proxied:
                return self.at("faultproxy", through[port])
            return self.at(name, port)

        # Redis nodes announce themselves directly on the containers runtime (`redis_config`).
        redis_proxied = not network.containers(s)
        pg = f"postgresql://cloudwatcher:{secrets.pg_app}@"
        return {
            "CW_STATE_DIR": str(lay.services_dir),
            "CW_PG_WRITE_URL": f"{pg}{via('pgbouncer', ports.pgbouncer)}/cloudwatcher",
            "CW_PG_READ_URL": f"{pg}{via('haproxy', ports.haproxy_read)}/cloudwatcher",
            "CW_REDIS_NODES": ",".join(
                via(f"redis{n}", ports.redis(n), redis_proxied) for n in range(s.redis_nodes)
            ),
            "CW_REDIS_USER": configs.REDIS_APP_USER,
            "CW_REDIS_PASSWORD": secrets.redis_app,
            "CW_TLS_CA_FILE": str(lay.ca_cert),
            "CW_LLM_URL": f"http://{via('llm', ports.llm)}",
            "CW_GATEWAY_URL": f"http://{self.at('gateway', ports.gateway)}",
            "CW_SHAREPOINT_URL": f"http://{via('sharepoint', ports.sharepoint)}",
            "CW_GDRIVE_URL": f"http://{via('gdrive', ports.gdrive)}",
            "CW_HOST": self.bind,
            "PYTHONPATH": str(self.code_root),
            "PYTHONUNBUFFERED": "1",
            **({"LD_PRELOAD": self.malloc} if self.malloc else {}),
            # Short, so a job of a killed worker reappears soon; live workers extend their claim.
            "CW_VISIBILITY_TIMEOUT_S": "10",
            # The harness measures itself against planted faults (reference_impl/planted.py);
            # only environments the project starts allow them.
            "CW_PLANTED_FAULTS": "1",
            # The scheduler's leader starts backups on the repository host (env/backup.py).
            **(
                {
                    "CW_BACKUP_CONFIG": str(backup.repo_config_path(lay)),
                    "CW_BACKUP_STANZA": backup.STANZA,
                    "CW_BACKUP_INTERVAL_S": f"{s.backup_diff_every_s:g}",
                    "CW_BACKUP_FULL_EVERY_S": f"{s.backup_full_every_s:g}",
                }
                if s.backups
                else {}
            ),
        }

    def service(self, w: Workload, r: Replica) -> ProcessSpec:
        """`python -m reference_impl` as role `w.kind`, configured by `CW_*` variables."""
        port = r.ports["http"]
        env = {
            **self.service_environment(),
            "CW_ROLE": w.kind,
            "CW_NAME": r.name,
            "CW_PORT": str(port),
            "CW_TRACE_FILE": str(self.layout.trace_file(r.name)),
        }
        if w.kind == "api":  # the only role that checks the registration secret
            env["CW_REGISTRATION_SECRET"] = self.secrets.registration_secret
        live = w.liveness
        return ProcessSpec(
            [self.python, "-m", "reference_impl"],
            env=env,
            cwd=self.layout.run_dir,
            as_user=self.python_user,
            grace_s=30.0,
            liveness=LivenessProbe(
                f"http://127.0.0.1:{r.ports[live.port]}{live.path}",
                live.period_s,
                live.failure_threshold,
            )
            if live
            else None,
        )
