"""A large fleet's sockets: which local address a phone's connections leave from, and how many
descriptors its process may hold.

Ports: a TCP connection is (source address, source port, destination address, destination port),
so one source address reaches one destination through at most as many connections as the
ephemeral port range has ports (`net.ipv4.ip_local_port_range`, 28,232 by default): 20,000
phones, each with a socket and an HTTP connection, need more. Each phone therefore binds its
connections to one of several local addresses (on loopback every 127.0.0.0/8 address is local),
with IP_BIND_ADDRESS_NO_PORT, so the kernel picks the port at connect time for the whole
four-tuple rather than at bind time for the source address alone (without it, every bound
socket would hold a port of its address against all destinations).

Descriptors: a phone holds its socket, and its keep-alive HTTP connection while it is in use. A
phone about to think longer than the server keeps an idle connection (HAProxy's `timeout
http-keep-alive`, 10 s: env/configs.py) closes its idle connections itself
(`close_idle_connections`): the server would close them meanwhile anyway, and the next request
would connect again either way, but the HTTP client holds the descriptor of a connection the
server closed until it next uses it. An idle phone then holds one descriptor, not two.
`raise_fd_limit` raises the soft limit to the hard one, and the hard one too when the process may
(it has CAP_SYS_RESOURCE, up to `fs.nr_open`), and says what it could not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import math
import resource
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Linux's IP_BIND_ADDRESS_NO_PORT (include/uapi/linux/in.h); Python names it from 3.12 on.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: Descriptors a process needs beside its phones' sockets: the master link, SQLite, logs,
#: Python's own, and a few HTTP connections in flight at once.
SPARE_FDS = 1024


def parse_sources(spec: str) -> tuple[str, ...]:
    """Source addresses from a comma-separated list ("127.0.0.2,127.0.0.3"); "" is none (the
    kernel chooses, as for any client).

    Raises:
        ValueError: an entry is not an IP address.
    """
    return tuple(str(ipaddress.ip_address(a.strip())) for a in spec.split(",") if a.strip())


def loopback_sources(n: int, first: str = "127.0.0.2") -> tuple[str, ...]:
    """`n` consecutive loopback addresses from `first` (all of 127.0.0.0/8 is local on Linux).

    Raises:
        ValueError: they would leave 127.0.0.0/8.
    """
    start = ipaddress.ip_address(first)
    out = tuple(str(start + i) for i in range(n))
    net = ipaddress.ip_network("127.0.0.0/8")
    if any(ipaddress.ip_address(a) not in net for a in out):
        raise ValueError(f"{n} addresses from {first} leave 127.0.0.0/8")
    return out


def rotation(sources: tuple[str, ...]) -> Callable[[], str | None]:
    """Hands out the sources in turn (None, the kernel's choice, when there are none): the
    phones of one process spread evenly over them."""
    if not sources:
        return lambda: None
    cycle: Iterator[str] = itertools.cycle(sources)
    return lambda: next(cycle)


def bind_source(sock: socket.socket, source: str) -> None:
    """Bind `sock` (not yet connected) to `source`, its port left to connect()."""
    with contextlib.suppress(OSError):  # not Linux: bind picks the port, which still works
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))


def connect_from(
    source: str, host: str, port: int, timeout_s: float, options: list[tuple[int, int, int]]
) -> socket.socket:
    """A TCP connection to host:port leaving from `source`, with socket `options` (level,
    name, value) set before it connects.

    Raises:
        OSError: the name does not resolve or no address of it accepts the connection.
    """
    last: OSError | None = None
    for family, kind, proto, _, addr in socket.getaddrinfo(
        host, port, socket.AF_INET, socket.SOCK_STREAM
    ):
        sock = socket.socket(family, kind, proto)
        try:
            for opt in options:
                sock.setsockopt(*opt)
            bind_source(sock, source)
            sock.settimeout(timeout_s)
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last or OSError(f"{host}:{port} has no IPv4 address")


def _connection_pool(session: Any, base_url: str) -> Any:
    """The geventhttpclient ConnectionPool behind a Locust FastHttpSession for `base_url` (one
    per host, made on first use: made now if not yet)."""
    from geventhttpclient.url import URL

    return session.client.clientpool.get_client(URL(base_url))._connection_pool


def bind_http_client(session: Any, base_url: str, source: str) -> None:
    """Make a Locust FastHttpSession's connections to `base_url` leave from `source`.

    `_create_tcp_socket` is geventhttpclient's socket factory, there to be overridden ("tcp
    socket factory" in its source); this wraps the factory of this session's pool.
    """
    pool = _connection_pool(session, base_url)
    create = pool._create_tcp_socket

    def bound(family: int, kind: int, proto: int) -> socket.socket:
        sock: socket.socket = create(family, kind, proto)
        bind_source(sock, source)
        return sock

    pool._create_tcp_socket = bound


def close_idle_connections(session: Any, base_url: str) -> int:
    """Close a FastHttpSession's idle keep-alive connections to `base_url`; how many.

    The pool's idle sockets wait in its queue and hold no slot of its semaphore (a socket
    returned to the pool releases its slot): taking one out and closing it is what the pool
    does itself with a socket it finds dead.
    """
    from gevent.queue import Empty

    queue = _connection_pool(session, base_url)._socket_queue
    closed = 0
    while True:
        try:
            sock = queue.get(block=False)
        except Empty:
            return closed
        sock.close()
        closed += 1


# ---- descriptors -------------------------------------------------------------------------------


def fds_needed(phones: int, processes: int = 1, per_phone: float = 2) -> int:
    """Descriptors one of `processes` processes needs for its share of `phones`, holding
    `per_phone` each (2: a socket and an HTTP connection; 1: the socket, idle phones closing
    their connections; between: `descriptors_per_phone`), and SPARE_FDS."""
    return math.ceil(-(-phones // max(1, processes)) * per_phone) + SPARE_FDS


def descriptors_per_phone(think_mean_s: float, think_cap_s: float, keepalive_s: float) -> float:
    """What a phone holds on average, with a margin: its socket, and its HTTP connection unless
    it is about to think longer than the server keeps an idle one (it closes it then). Think
    times are exponential with `think_mean_s`, drawn again above `think_cap_s`; the share of
    them no longer than `keepalive_s` keep their connection, plus 5 % for requests in flight."""
    if think_mean_s <= 0 or think_cap_s <= keepalive_s:
        return 2.0  # no think outlasts the keep-alive: every phone keeps its connection
    drawn = 1 - math.exp(-think_cap_s / think_mean_s)
    short = (1 - math.exp(-keepalive_s / think_mean_s)) / drawn
    return 1 + min(1.0, short + 0.05)


@dataclass(frozen=True)
class FdLimit:
    """A process's open-file limit after `raise_fd_limit`.

    Attributes:
        soft, hard: the limit now (soft is what the process may open).
        was_soft, was_hard: before.
        need: what the caller said it needs.
        note: "" when soft >= need; else why not and how to raise it.
    """

    soft: int
    hard: int
    was_soft: int
    was_hard: int
    need: int
    note: str

    @property
    def enough(self) -> bool:
        return self.soft >= self.need

    def describe(self) -> str:
        raised = (
            f"raised from {self.was_soft}/{self.was_hard}"
            if (self.soft, self.hard) != (self.was_soft, self.was_hard)
            else "unchanged"
        )
        text = f"open files {self.soft} (soft) / {self.hard} (hard), {raised}; need {self.need}"
        return f"{text}: {self.note}" if self.note else text


def plan_fd_limit(soft: int, hard: int, need: int, ceiling: int) -> tuple[int, int]:
    """The (soft, hard) limit to ask for: the soft one up to the hard one, and both up to
    `need` (at most `ceiling`, the kernel's `fs.nr_open`) when the hard one is lower. Never
    lower than now."""
    target = min(max(need, hard), max(ceiling, hard))
    return max(soft, target), max(hard, target)


def nr_open() -> int:
    """The kernel's ceiling for any process's open-file limit (`fs.nr_open`)."""
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20


def raise_fd_limit(need: int) -> FdLimit:
    """Raise this process's RLIMIT_NOFILE as far as it may toward `need` (see `plan_fd_limit`);
    a hard limit the process may not raise leaves the soft one at the hard one, and says so."""
    # (Linux's open-file limit is never RLIM_INFINITY: it is bounded by fs.nr_open.)
    was_soft, was_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = plan_fd_limit(was_soft, was_hard, need, nr_open())
    note = ""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (ValueError, OSError):  # raising the hard limit needs CAP_SYS_RESOURCE
        resource.setrlimit(resource.RLIMIT_NOFILE, (was_hard, was_hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        note = (
            f"the hard limit {hard} is below the {need} needed and this process may not raise "
            f"it: raise it where the run starts (as root `ulimit -Hn {need}` in that shell, "
            f"`LimitNOFILE={need}` in a systemd unit, or `nofile` in "
            "/etc/security/limits.conf), or run more generator processes"
        )
    return FdLimit(soft, hard, was_soft, was_hard, need, note)
