"""The environment's status as a typed object: what `cwh env status --json` prints, read once.

The JSON stays the interface between processes (scripts, `jq`, other languages); Python reads it
through `EnvStatus`, so a field's name and type are written down once, here, and a lookup that
misses names what exists (`status.component("api9")` on a 3-replica API).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class UnknownComponent(KeyError):
    """A component the status does not hold; the message lists those it does."""


@dataclass(frozen=True)
class ComponentStatus:
    """One component as the status reports it.

    Attributes:
        name: its name (`api2`, `pg0`, `redis3`, `haproxy`): JSON `component`.
        kind: what it is (`api`, `postgresql`, `redis`, ...).
        role: what it does now (`primary`, `replica`, `master`, `scheduler (leader)`, ...).
        pid: its process (for PostgreSQL, Patroni's; `detail["postgres_pid"]` is the server's);
            on the containers runtime its container's main process, as the host numbers it.
        state: the supervisor's view (`running`, `held`, `exited`, `absent`, ...).
        restarts: restarts since the supervisor started.
        ports: port name -> port on 127.0.0.1.
        healthy: whether it does its job now (ready, in the load balancer, streaming, ...).
        log: its log file.
        container: its container's id (12 characters) on the containers runtime, else "".
        detail: what only some kinds report (replication lag, slots, toxics, ...).
    """

    name: str
    kind: str
    role: str
    pid: int | None
    state: str
    restarts: int
    ports: Mapping[str, int]
    healthy: bool
    log: str | None = None
    container: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    _FIELDS = (
        "component",
        "kind",
        "role",
        "pid",
        "state",
        "restarts",
        "ports",
        "healthy",
        "log",
        "container",
    )

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> ComponentStatus:
        return cls(
            name=row["component"],
            kind=row["kind"],
            role=row["role"],
            pid=row.get("pid"),
            state=row.get("state", "absent"),
            restarts=int(row.get("restarts", 0)),
            ports=dict(row.get("ports") or {}),
            healthy=bool(row["healthy"]),
            log=row.get("log"),
            container=row.get("container") or "",
            detail={k: v for k, v in row.items() if k not in cls._FIELDS},
        )

    def port(self, name: str = "http") -> int:
        """Its port `name`; KeyError naming the ports it has."""
        try:
            return self.ports[name]
        except KeyError:
            raise KeyError(
                f"{self.name} has no port {name!r} (it has {sorted(self.ports)})"
            ) from None


@dataclass(frozen=True)
class EnvStatus:
    """The whole environment.

    Attributes:
        phase: the supervisor's phase (`starting`, `ready`, `failed`, `stopping`, `down`).
        healthy: every component healthy and the failover safety net in place.
        primary: the PostgreSQL member that leads (`pg1`), None when none does.
        components: every component, in start order.
        urls: connection URLs by name (`write`, `read`, `pgbouncer`, `https`, `prometheus`,
            `members` -> {member: URL}, ...).
        run_dir: the environment's run directory.
        base_port: the first port of its block.
        runtime: what runs the replicas (`local` processes, `containers`).
        tls_certificate: the CA every client of the environment trusts.
        registration_secret: what device registration requires.
        warnings: what runs with more privilege than it should, and why.
        pg_sync_standby: the synchronous standby the primary really replicates to (`pg2`), None
            while there is none (the failover safety net is not in place).
        redis_cluster_state: Redis Cluster's `cluster_state` (`ok`, `fail`), None when no node
            answered.
        secrets_file: the file with the environment's passwords and registration secret.
        raw: the JSON it was read from (for fields not modelled here yet).
    """

    phase: str
    healthy: bool
    primary: str | None
    components: tuple[ComponentStatus, ...]
    urls: Mapping[str, Any]
    run_dir: Path
    base_port: int
    tls_certificate: str
    registration_secret: str | None
    warnings: tuple[str, ...] = ()
    pg_sync_standby: str | None = None
    redis_cluster_state: str | None = None
    secrets_file: str = ""
    runtime: str = "local"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, status: Mapping[str, Any]) -> EnvStatus:
        return cls(
            phase=status["phase"],
            healthy=bool(status["healthy"]),
            primary=status.get("primary"),
            components=tuple(ComponentStatus.from_json(r) for r in status["components"]),
            urls=status["urls"],
            run_dir=Path(status["run_dir"]),
            base_port=int(status["base_port"]),
            tls_certificate=status.get("tls_certificate", ""),
            registration_secret=status.get("registration_secret"),
            warnings=tuple(status.get("warnings", ())),
            pg_sync_standby=status.get("pg_sync_standby"),
            redis_cluster_state=status.get("redis_cluster_state"),
            secrets_file=status.get("secrets_file", ""),
            runtime=status.get("runtime", "local"),
            raw=status,
        )

    def component(self, name: str) -> ComponentStatus:
        """The component named `name`; UnknownComponent listing the names there are."""
        for c in self.components:
            if c.name == name:
                return c
        names = ", ".join(c.name for c in self.components)
        raise UnknownComponent(f"no component {name!r} in the environment (there are: {names})")

    def of_kind(self, *kinds: str) -> list[ComponentStatus]:
        """The components of these kinds, in start order."""
        return [c for c in self.components if c.kind in kinds]

    def unhealthy(self) -> list[str]:
        """Names of the components not healthy now."""
        return [c.name for c in self.components if not c.healthy]

    @property
    def leading_scheduler(self) -> ComponentStatus | None:
        return next((c for c in self.components if c.role == "scheduler (leader)"), None)
