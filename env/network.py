"""Where each replica of the topology is reached, by the other replicas, on each runtime.

On the local runtime every replica is a process on 127.0.0.1 with ports of its own. On the
containers runtime every replica is its own host on one Docker network, with a fixed address
derived from its name (below), and keeps the same port numbers: the harness on the host reaches
it as before through ports published on 127.0.0.1, the other replicas at its address.

Fixed addresses rather than names: HAProxy, pgBouncer and Redis Cluster resolve a name once and
keep the address, so a container restarted at another address would be lost to them; and TLS
certificates name the addresses they serve (`env/secrets.py`), which are known before anything
starts. Pure: nothing here touches Docker.
"""

from __future__ import annotations

import ipaddress
import re

from env.settings import PORT_SPAN, EnvSettings

LOOPBACK = "127.0.0.1"

#: The host octet of each single replica, and the first of each indexed kind (`pg0` is 30,
#: `pg1` 31, `api1` 101). Room: 10 PostgreSQL members, 30 Redis nodes, the slots of
#: `env.settings.SERVICE_SLOTS`.
SINGLE = {
    "etcd": 10,
    "faultproxy": 11,
    "backup-repo": 12,
    "backup-pg": 13,
    "haproxy": 14,
    "pgbouncer": 15,
    "redis-exporter": 16,
    "prometheus": 17,
    "llm": 18,
    "sharepoint": 19,
    "gdrive": 20,
    "gateway": 21,
}
INDEXED = {
    "pg": (30, 10),
    "postgres-exporter": (40, 10),
    "redis": (50, 30),
    "api": (100, 11),
    "hub": (120, 7),
    "worker": (140, 21),
    "scheduler": (170, 3),
}
_NAME = re.compile(r"^(?P<kind>[a-z-]+?)(?P<index>\d+)$")


class AddressError(ValueError):
    """A replica name with no address on the containers network."""


def containers(settings: EnvSettings) -> bool:
    return settings.runtime == "containers"


def subnet(settings: EnvSettings) -> ipaddress.IPv4Network:
    """The Docker network's subnet: one /24 per environment, from its base port (two
    environments on one machine have bases at least `PORT_SPAN` apart), unless the settings
    name one."""
    if settings.container_subnet:
        return ipaddress.IPv4Network(settings.container_subnet)
    third = (settings.base_port // PORT_SPAN) % 256
    return ipaddress.IPv4Network(f"10.213.{third}.0/24")


def octet(name: str) -> int:
    """The host part of replica `name`'s address (AddressError for a name not listed here)."""
    if name in SINGLE:
        return SINGLE[name]
    m = _NAME.match(name)
    if m and m["kind"] in INDEXED:
        first, room = INDEXED[m["kind"]]
        index = int(m["index"])
        if index < room:
            return first + index
    raise AddressError(f"no container address for replica {name!r}")


def container_ip(settings: EnvSettings, name: str) -> str:
    return str(subnet(settings).network_address + octet(name))


def host(settings: EnvSettings, name: str) -> str:
    """Where the other replicas reach replica `name`: 127.0.0.1 locally, its container's
    address on the containers runtime."""
    return container_ip(settings, name) if containers(settings) else LOOPBACK


def bind(settings: EnvSettings) -> str:
    """The address a replica listens on: loopback locally (nothing else may reach it); every
    interface of its own container otherwise (its network and the port published on the
    host's loopback are the only ways in)."""
    return "0.0.0.0" if containers(settings) else LOOPBACK


def all_ips(settings: EnvSettings) -> tuple[str, ...]:
    """Every address a replica may have (what server certificates name); none locally."""
    if not containers(settings):
        return ()
    net = subnet(settings).network_address
    octets = [*SINGLE.values()] + [
        first + i for first, room in INDEXED.values() for i in range(room)
    ]
    return tuple(str(net + o) for o in sorted(octets))


def client_networks(settings: EnvSettings) -> tuple[str, ...]:
    """The source addresses PostgreSQL accepts password logins from (pg_hba): loopback (Patroni
    and the exporters reach their own member there), and the containers network."""
    own = (str(subnet(settings)),) if containers(settings) else ()
    return (f"{LOOPBACK}/32", *own)


def gateway(settings: EnvSettings) -> str:
    """The host's own address on the containers network (the bridge's)."""
    return str(subnet(settings).network_address + 1)


def supervisor_host(settings: EnvSettings) -> str:
    """Where Prometheus reaches the supervisor's metrics (the supervisor runs on the host on
    either runtime: in containers it listens on the bridge's address too)."""
    return gateway(settings) if containers(settings) else LOOPBACK
