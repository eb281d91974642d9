"""The fault proxy serves Toxiproxy's API: driven here by the clients that exist
(`toxiproxy-python`, `chaostoolkit-toxiproxy`) and by plain HTTP, in front of a real TCP echo
server, each toxic's effect measured on the wire."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from chaostoxi.proxy import actions as proxy_actions
from chaostoxi.proxy.probes import proxy_exist
from chaostoxi.toxic import actions as toxic_actions
from toxiproxy import Toxiproxy
from toxiproxy.exceptions import ProxyExists

from env.faultproxy import FaultProxy
from env.process import wait_until

ROOT = Path(__file__).resolve().parents[2]
API_PORT = int(os.environ.get("CWH_TEST_BASE_PORT", "19000")) + 95


class Echo:
    """A TCP echo server on a thread: what the proxy sits in front of."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    @staticmethod
    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "env.faultproxy", "--port", str(API_PORT)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{API_PORT}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/version", timeout=1).ok
        except requests.ConnectionError:
            return False

    try:
        wait_until(up, 15, "fault proxy API answering")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def echo() -> Echo:
    return Echo()


@pytest.fixture
def server(api: str) -> Iterator[Toxiproxy]:
    server = Toxiproxy()
    server.update_api_consumer("127.0.0.1", API_PORT)
    yield server
    server.destroy_all()


def round_trip(port: int, payload: bytes = b"ping", timeout_s: float = 5) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got, time.monotonic() - started


def listen_port(proxy: object) -> int:
    return int(str(proxy.listen).rsplit(":", 1)[1])  # type: ignore[attr-defined]


def test_toxiproxy_python_client(server: Toxiproxy, echo: Echo) -> None:
    assert server.running()
    assert server.version().decode().startswith("2.")
    proxy = server.create(upstream=f"127.0.0.1:{echo.port}", name="echo")
    with pytest.raises(ProxyExists):
        server.create(upstream=f"127.0.0.1:{echo.port}", name="echo")
    assert set(server.proxies()) == {"echo"}
    port = listen_port(proxy)
    got, base_s = round_trip(port)
    assert got == b"ping"

    proxy.add_toxic(type="latency", attributes={"latency": 300, "jitter": 0})
    assert set(proxy.toxics()) == {"latency_downstream"}
    got, slow_s = round_trip(port)
    assert got == b"ping"
    assert slow_s >= 0.3 > base_s
    proxy.destroy_toxic("latency_downstream")
    assert proxy.toxics() == {}
    assert round_trip(port)[1] < 0.3

    with proxy.down(), pytest.raises(ConnectionRefusedError):
        round_trip(port)
    assert round_trip(port)[0] == b"ping"

    # populate: same listen and upstream is kept, a new one created
    made = server.populate(
        [
            {"name": "echo", "upstream": proxy.upstream, "listen": proxy.listen},
            {"name": "echo2", "upstream": f"127.0.0.1:{echo.port}", "listen": "127.0.0.1:0"},
        ]
    )
    assert [p.name for p in made] == ["echo2"]
    assert round_trip(listen_port(made[0]))[0] == b"ping"


def test_chaostoolkit_toxiproxy_actions(api: str, echo: Echo) -> None:
    config = {"toxiproxy_host": "127.0.0.1", "toxiproxy_port": API_PORT}
    try:
        assert proxy_actions.create_proxy(
            "ctk", "127.0.0.1", echo.port, listen_host="127.0.0.1", configuration=config
        )
        assert proxy_exist("ctk", configuration=config)
        port = int(config["ctk_PORT"])  # the action puts the chosen port there
        assert toxic_actions.create_latency_toxic("ctk", "slow", 250, configuration=config)
        assert round_trip(port)[1] >= 0.25
        assert toxic_actions.delete_toxic("ctk", "slow", configuration=config)
        assert toxic_actions.create_toxic(
            "ctk",
            "rst",
            "reset_peer",
            stream="upstream",
            attributes={"timeout": 0},
            configuration=config,
        )
        with pytest.raises((ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            round_trip(port)
        assert proxy_actions.reset(configuration=config)
        assert round_trip(port)[0] == b"ping"
        assert proxy_actions.disable_proxy("ctk", configuration=config)
        with pytest.raises(ConnectionRefusedError):
            round_trip(port)
        assert proxy_actions.enable_proxy("ctk", configuration=config)
        assert round_trip(port)[0] == b"ping"
    finally:
        proxy_actions.delete_proxy("ctk", configuration=config)
    assert not proxy_exist("ctk", configuration=config)


def _proxy(api: str, echo: Echo, name: str) -> int:
    r = requests.post(
        f"{api}/proxies",
        json={"name": name, "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"},
        timeout=5,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["listen"].rsplit(":", 1)[1])


def _toxic(api: str, proxy: str, **body: object) -> requests.Response:
    return requests.post(f"{api}/proxies/{proxy}/toxics", json=body, timeout=5)


@pytest.fixture
def plain(api: str, echo: Echo) -> Iterator[tuple[str, int]]:
    port = _proxy(api, echo, "plain")
    yield "plain", port
    requests.delete(f"{api}/proxies/plain", timeout=5)


def test_bandwidth_slicer_and_limit(api: str, plain: tuple[str, int]) -> None:
    name, port = plain
    payload = os.urandom(20_000)
    got, fast_s = round_trip(port, payload)
    assert got == payload
    # 10 KB/s downstream: 20 KB take about 2 s (chunks are delayed by their own size)
    assert _toxic(api, name, type="bandwidth", attributes={"rate": 10}).ok
    got, slow_s = round_trip(port, payload, timeout_s=10)
    assert got == payload
    assert slow_s >= 1.5 > fast_s
    requests.post(f"{api}/reset", timeout=5)

    # slicer: 100 bytes in slices of ~10, 20 ms apart, arrive whole, after 9 gaps or more
    assert _toxic(
        api,
        name,
        type="slicer",
        attributes={"average_size": 10, "size_variation": 0, "delay": 20000},
    ).ok
    got, sliced_s = round_trip(port, b"x" * 100)
    assert got == b"x" * 100
    assert sliced_s >= 0.18
    requests.post(f"{api}/reset", timeout=5)

    # limit_data: the connection closes after 10 bytes downstream
    assert _toxic(api, name, type="limit_data", attributes={"bytes": 10}).ok
    got, _ = round_trip(port, b"y" * 50)
    assert got == b"y" * 10


def test_timeout_slow_close_and_toxicity(api: str, plain: tuple[str, int]) -> None:
    name, port = plain
    # timeout: no data, the connection closed after 300 ms
    assert _toxic(api, name, type="timeout", attributes={"timeout": 300}).ok
    got, took_s = round_trip(port)
    assert got == b""
    assert took_s >= 0.3
    requests.post(f"{api}/reset", timeout=5)
    # toxicity 0: the toxic exists and touches no connection
    assert _toxic(api, name, type="timeout", toxicity=0.0, attributes={"timeout": 0}).ok
    assert round_trip(port)[0] == b"ping"
    requests.post(f"{api}/reset", timeout=5)
    # slow_close: the client's close reaches upstream 400 ms late, so the echo's EOF does too
    assert _toxic(api, name, type="slow_close", stream="upstream", attributes={"delay": 400}).ok
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        assert s.recv(10) == b""
        assert time.monotonic() - started >= 0.35


def test_toxic_reaches_a_live_connection(api: str, plain: tuple[str, int]) -> None:
    name, port = plain
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"a")
        assert s.recv(10) == b"a"
        assert _toxic(api, name, type="latency", attributes={"latency": 300}).ok
        started = time.monotonic()
        s.sendall(b"b")
        assert s.recv(10) == b"b"
        assert time.monotonic() - started >= 0.3


def test_api_errors_are_toxiproxys(api: str, plain: tuple[str, int]) -> None:
    name, _ = plain
    r = _toxic(api, name, type="nope")
    assert (r.status_code, r.json()["error"]) == (400, "bad toxic type: nope")
    assert _toxic(api, name, type="latency", stream="sideways").status_code == 400
    assert _toxic(api, name, type="latency", attributes={"latency": -1}).status_code == 400
    assert _toxic(api, "missing", type="latency").status_code == 404
    assert requests.get(f"{api}/proxies/missing", timeout=5).status_code == 404
    assert _toxic(api, name, name="t", type="latency").ok
    assert _toxic(api, name, name="t", type="latency").status_code == 409
    r = requests.post(
        f"{api}/proxies/{name}/toxics/t", json={"attributes": {"latency": 5}}, timeout=5
    )
    assert r.json()["attributes"] == {"latency": 5, "jitter": 0}
    assert requests.delete(f"{api}/proxies/{name}/toxics/t", timeout=5).status_code == 204
    r = requests.post(
        f"{api}/proxies",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert r.status_code == 400
    assert "bad request body" in r.json()["error"]


def recv_exactly(s: socket.socket, n: int, deadline_s: float = 5) -> bytes:
    """`n` bytes, or fewer when the connection ends first; DeadlineExceeded-like failure when
    they do not come within `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    got = b""
    while len(got) < n:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_limit_data_added_to_a_live_connection_counts_what_went_before(
    api: str, plain: tuple[str, int]
) -> None:
    """The first 10 bytes took the path with no toxic; the limit added then still closes the
    connection at 15 bytes downstream, counted from the connection's start."""
    name, port = plain
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"a" * 10)
        assert recv_exactly(s, 10) == b"a" * 10
        assert _toxic(api, name, type="limit_data", attributes={"bytes": 15}).ok
        s.sendall(b"b" * 10)
        assert recv_exactly(s, 10) == b"b" * 5  # then the end


def test_removing_a_toxic_keeps_the_order_of_what_it_still_holds(
    api: str, plain: tuple[str, int]
) -> None:
    """Chunks queued behind a latency toxic go out before a chunk that arrives once the toxic
    is gone: the direct path is taken only when nothing is queued."""
    name, port = plain
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"0")
        assert recv_exactly(s, 1) == b"0"
        assert _toxic(api, name, name="slow", type="latency", attributes={"latency": 400}).ok
        s.sendall(b"1")
        s.sendall(b"2")
        # The echo's answers to 1 and 2 reach the proxy within milliseconds and wait there.
        assert requests.delete(f"{api}/proxies/{name}/toxics/slow", timeout=5).ok
        s.sendall(b"3")
        assert recv_exactly(s, 3) == b"123"


def test_a_large_transfer_with_a_slow_reader_arrives_whole(
    api: str, plain: tuple[str, int]
) -> None:
    """Flow control on the direct path: 16 MB echoed while the client reads slowly at first, so
    both sides' buffers fill and the proxy pauses and resumes reading; every byte arrives in
    order."""
    _, port = plain
    payload = os.urandom(16 << 20)
    errors: list[BaseException] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:

        def send() -> None:
            try:
                s.sendall(payload)
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = bytearray()
        deadline = time.monotonic() + 60
        while len(got) < len(payload) and time.monotonic() < deadline:
            chunk = s.recv(4096 if len(got) < (1 << 20) else 1 << 20)  # slow, then fast
            if not chunk:
                break
            got += chunk
        sender.join(10)
    assert not errors
    assert len(got) == len(payload)
    assert bytes(got) == payload


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_what_a_client_sends_at_once_reaches_upstream_on_either_loop(loop: str, echo: Echo) -> None:
    """A client that writes as soon as it is connected, before the proxy has its upstream
    connection: uvloop starts reading the client before the proxy can hold it, and what it reads
    then must wait for the link, not vanish (in-process, on each loop the proxy can run on).
    Both of the proxy's sockets have TCP_NODELAY (each loop sets it; checked, not assumed)."""
    import uvloop

    async def clients() -> None:
        proxy = FaultProxy()
        made = await proxy.create(
            {"name": "x", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}
        )
        port = int(made.listen.rsplit(":", 1)[1])
        try:
            for i in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"hello %02d" % i)
                assert await asyncio.wait_for(reader.readexactly(8), 5) == b"hello %02d" % i
                # Small writes go out at once on both sides (Nagle off), as a query needs.
                assert made.links
                for link in made.links:
                    for side in (link.client, link.upstream):
                        assert side.transport is not None
                        sock = side.transport.get_extra_info("socket")
                        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                writer.close()
                await writer.wait_closed()
        finally:
            await proxy.shutdown()

    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(clients())
