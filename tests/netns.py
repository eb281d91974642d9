"""Other machines, on this one: Linux network namespaces, each with its own network stack joined
to the host by a veth pair, for fleets whose workers must not share anything with the master
but the network.

Inside a namespace, 127.0.0.1 is the namespace's own loopback. The environment listens on the
host's, so `forward(port)` makes `127.0.0.1:port` inside every namespace reach the host's: a
DNAT rule there sends it over the veth to the host's side, where a relay of ours carries it on to
127.0.0.1. Phones in a namespace then use the very URL (and TLS name) the master uses.

Needs root (`ip netns`, iptables in the namespace). Everything is removed on exit: deleting a
namespace deletes its veth pair and its rules; the relays stop with the context.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _in(ns: str, *cmd: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Namespace:
    """One namespace: `host_addr` is the host's end of its veth, `addr` the namespace's."""

    name: str
    host_addr: str
    addr: str

    def command(self, *cmd: str) -> list[str]:
        """`cmd` as run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]


class _Relays:
    """TCP relays on the host, in one event loop on a thread of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="netns-relays")
        self.servers: list[asyncio.Server] = []
        self.thread.start()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()

    async def _serve(self, listen: str, port: int, to_port: int) -> asyncio.Server:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", to_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))

        return await asyncio.start_server(relay, listen, port)

    def add(self, listen: str, port: int, to_port: int) -> None:
        future = asyncio.run_coroutine_threadsafe(self._serve(listen, port, to_port), self.loop)
        self.servers.append(future.result(timeout=10))

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            # Connections still open (phones of a worker being torn down) are cut.
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Namespaces:
    """`count` namespaces named `<prefix>-<i>`, on 10.231.<third>.0/24 (a /30 each)."""

    def __init__(self, prefix: str, count: int, third_octet: int) -> None:
        self.items = [
            Namespace(
                f"{prefix}-{i}",
                f"10.231.{third_octet}.{4 * i + 1}",
                f"10.231.{third_octet}.{4 * i + 2}",
            )
            for i in range(count)
        ]
        self.prefix = prefix
        self.relays: _Relays | None = None

    def _veth(self, i: int) -> tuple[str, str]:
        # Interface names are at most 15 characters.
        tag = f"{zlib.crc32(self.prefix.encode()) % 10_000:04d}{i}"
        return f"cwh{tag}h", f"cwh{tag}n"

    def __enter__(self) -> list[Namespace]:
        self._remove()  # what a crashed run left
        try:
            for i, ns in enumerate(self.items):
                host_if, ns_if = self._veth(i)
                _ip("netns", "add", ns.name)
                _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
                _ip("link", "set", ns_if, "netns", ns.name)
                _ip("addr", "add", f"{ns.host_addr}/30", "dev", host_if)
                _ip("link", "set", host_if, "up")
                _in(ns.name, "ip", "addr", "add", f"{ns.addr}/30", "dev", ns_if)
                _in(ns.name, "ip", "link", "set", ns_if, "up")
                _in(ns.name, "ip", "link", "set", "lo", "up")
                _in(ns.name, "ip", "route", "add", "default", "via", ns.host_addr)
                # Packets to 127.0.0.1 may leave over the veth (DNAT below), with the
                # namespace's own address as their source.
                _in(ns.name, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
                _in(ns.name, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", ns_if,
                    "-j", "MASQUERADE")  # fmt: skip
        except BaseException:
            self._remove()
            raise
        self.relays = _Relays()
        return self.items

    def forward(self, port: int) -> None:
        """`127.0.0.1:port` inside every namespace reaches the host's `127.0.0.1:port`."""
        assert self.relays is not None
        for ns in self.items:
            to = f"{ns.host_addr}:{port}"
            _in(ns.name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.1",
                "--dport", str(port), "-j", "DNAT", "--to-destination", to)  # fmt: skip
            self.relays.add(ns.host_addr, port, port)

    def __exit__(self, *_: object) -> None:
        if self.relays is not None:
            self.relays.close()
        self._remove()

    def _remove(self) -> None:
        for i, ns in enumerate(self.items):
            # Processes still inside would keep the namespace alive: none may be (the test
            # stops its workers), and a leftover is killed rather than left running.
            pids = subprocess.run(
                ["ip", "netns", "pids", ns.name], capture_output=True, text=True, timeout=30
            ).stdout.split()
            if pids:
                subprocess.run(["kill", "-9", *pids], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", self._veth(i)[0]], capture_output=True, timeout=30)


@contextlib.contextmanager
def namespaces(prefix: str, count: int, third_octet: int) -> Iterator[Namespaces]:
    spaces = Namespaces(prefix, count, third_octet)
    with spaces:
        yield spaces
