"""Where each component keeps its files below the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Paths below one run directory. Nothing of the environment lives outside it."""

    run_dir: Path

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def secrets(self) -> Path:
        return self.run_dir / "secrets.json"

    @property
    def supervisor_pid(self) -> Path:
        return self.run_dir / "supervisor.pid"

    @property
    def runtime_record(self) -> Path:
        """The runtime `up` started the environment on (`local`, `containers`), until `down`."""
        return self.run_dir / "runtime"

    @property
    def failover_record(self) -> Path:
        """The failover profile `up` started the environment with, until `down`."""
        return self.run_dir / "failover"

    @property
    def dockerd_started(self) -> Path:
        """Present when this environment's `up` started the Docker engine (`down` stops it)."""
        return self.run_dir / "dockerd-started"

    @property
    def startup_error(self) -> Path:
        """Written by a supervisor whose start-up failed, for the CLI to report."""
        return self.run_dir / "startup-error.json"

    @property
    def etcd_data(self) -> Path:
        return self.run_dir / "etcd"

    @property
    def pg_root(self) -> Path:
        """Owned by the PostgreSQL OS user: Patroni configs, data directories, pgpass files."""
        return self.run_dir / "pg"

    def pg_member(self, member: int) -> Path:
        return self.pg_root / f"pg{member}"

    def pg_data(self, member: int) -> Path:
        return self.pg_member(member) / "data"

    def patroni_config(self, member: int) -> Path:
        return self.pg_member(member) / "patroni.yml"

    @property
    def backup_pg_dir(self) -> Path:
        """The database host's pgBackRest: config, log, lock and spool (the PostgreSQL user's)."""
        return self.pg_root / "pgbackrest"

    @property
    def backup_dir(self) -> Path:
        """The backup repository host: its pgBackRest config, log, lock, and the repository."""
        return self.run_dir / "backup"

    @property
    def backup_repo(self) -> Path:
        """The repository (standing for blob storage): backups and archived WAL."""
        return self.backup_dir / "repo"

    @property
    def pgbouncer_dir(self) -> Path:
        return self.pg_root / "pgbouncer"

    @property
    def haproxy_dir(self) -> Path:
        return self.run_dir / "haproxy"

    @property
    def haproxy_socket(self) -> Path:
        """HAProxy's runtime API (admin level)."""
        return self.haproxy_dir / "admin.sock"

    @property
    def global_lb_dir(self) -> Path:
        """A standby region's global entry point (an HAProxy of its own)."""
        return self.run_dir / "global-lb"

    @property
    def tls_pem(self) -> Path:
        """Certificate and key of the HTTPS frontend, signed by the environment's CA."""
        return self.haproxy_dir / "tls.pem"

    @property
    def tls_dir(self) -> Path:
        """The environment's CA and the data stores' server certificates."""
        return self.run_dir / "tls"

    @property
    def ca_cert(self) -> Path:
        """The environment's CA certificate: what every client trusts (HTTPS, PostgreSQL, Redis)."""
        return self.tls_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca.key"

    def server_cert(self, server: str) -> Path:
        """`postgres` (PostgreSQL members and pgBouncer) or `redis`."""
        return self.tls_dir / f"{server}.crt"

    def server_key(self, server: str) -> Path:
        return self.tls_dir / f"{server}.key"

    def redis_dir(self, node: int) -> Path:
        return self.run_dir / "redis" / f"node{node}"

    @property
    def services_dir(self) -> Path:
        """Keys and the document corpus of the reference implementation."""
        return self.run_dir / "services"

    def trace_file(self, component: str) -> Path:
        return self.run_dir / "traces" / f"{component}.jsonl"

    @property
    def fault_proxy_config(self) -> Path:
        """The fault proxy's proxies (Toxiproxy's config format), read at every start."""
        return self.run_dir / "faultproxy" / "proxies.json"

    @property
    def prometheus_dir(self) -> Path:
        return self.run_dir / "prometheus"

    @property
    def prometheus_targets(self) -> Path:
        """file_sd folder: a service adds a JSON file here to be scraped."""
        return self.prometheus_dir / "targets"
