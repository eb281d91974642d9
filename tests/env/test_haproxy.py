"""HAProxy: TLS 1.3 on the HTTPS frontend, servers added at run time, sticky cookies."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from env.layout import Layout
from env.local import LocalEnvironment
from tests.helpers import poll, wait_healthy

pytestmark = pytest.mark.env


def test_https_frontend_negotiates_tls13_only(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    port = local_env.settings.ports.haproxy_https
    ctx = ssl.create_default_context(cafile=status["tls_certificate"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"

    old = ssl.create_default_context(cafile=status["tls_certificate"])
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        pytest.raises(ssl.SSLError),
    ):
        old.wrap_socket(sock, server_hostname="127.0.0.1")


def shared_writable_kib(pid: int) -> int:
    """KiB of `pid`'s shared writable mappings, as mapped (touched or not): where HAProxy's
    SSL session cache lives (one `/dev/zero` mapping of 4.7 MiB shared by its processes)."""
    total, shared = 0, False
    for line in (Path("/proc") / str(pid) / "smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header: range perms offset ...
            shared = fields[1].startswith("rw") and fields[1].endswith("s")
        elif shared and fields[0] == "Size:":
            total += int(fields[1])
    return total


def handshake(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSocket:
    """A TLS connection to the HTTPS frontend that has had an answer (TLS 1.3 sends its
    tickets after the handshake: they have arrived once a response has)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        tls = ctx.wrap_socket(sock, server_hostname="127.0.0.1", session=session)
    except BaseException:
        sock.close()
        raise
    tls.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert tls.recv(64).startswith(b"HTTP/1.1 "), "the frontend did not answer"
    return tls


def test_phones_resume_tls_sessions_and_haproxy_keeps_no_session_cache(
    local_env: LocalEnvironment,
):
    """A reconnecting phone resumes its session from a ticket (no full handshake), and
    HAProxy maps no shared session cache: TLS 1.3's tickets never read it, yet it stored
    every ticket issued and took its 4.7 MiB page by page (a soak's memory growth)."""
    status = wait_healthy(local_env)
    port = local_env.settings.ports.haproxy_https
    ctx = ssl.create_default_context(cafile=status["tls_certificate"])
    with handshake(port, ctx, None) as first:
        session = first.session
    with handshake(port, ctx, session) as again:
        assert again.session_reused, "a reconnect with a ticket made a full handshake"

    worker = worker_pid(Layout(local_env.settings.run_dir))
    assert worker is not None, "HAProxy's stats socket named no worker"
    mapped = shared_writable_kib(worker)
    assert mapped < 1024, f"HAProxy's worker maps {mapped} KiB of shared memory: a session cache"


def runtime(layout: Layout, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(layout.haproxy_socket))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.fixture
def tiny_servers() -> Iterator[list[int]]:
    """Two aiohttp servers on free ports, each answering with its own name."""
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []
    ports: list[int] = []

    async def start(name: str) -> None:
        async def ready(_: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        async def whoami(_: web.Request) -> web.Response:
            return web.json_response({"server": name})

        app = web.Application()
        app.router.add_get("/health/ready", ready)
        app.router.add_get("/v1/whoami", whoami)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    for name in ("a", "b"):
        asyncio.run_coroutine_threadsafe(start(name), loop).result(10)
    yield ports
    for runner in runners:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def served_by(get: Callable[[], requests.Response], most: int = 200) -> dict[str, int]:
    """Requests sent until both run-time servers answered one (at most `most`): who served
    how many."""
    counts: dict[str, int] = {}
    for _ in range(most):
        name = get().json()["server"]
        counts[name] = counts.get(name, 0) + 1
        if set(counts) == {"a", "b"}:
            break
    return counts


ERROR_COUNTERS = ("econ", "eresp", "wretr", "wredis")


def error_counters(layout: Layout, backend: str, servers: tuple[str, ...]) -> dict[str, tuple]:
    """Connection errors, response errors, retries and redispatches of `servers` so far
    (`show stat`'s cumulative counters): a request a server failed and HAProxy retried
    elsewhere still reaches the client as a success, and only these show it."""
    lines = runtime(layout, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    at = [header.index(c) for c in ERROR_COUNTERS]
    out = {}
    for ln in lines[1:]:
        cells = ln.split(",")
        if len(cells) > 1 and cells[0] == backend and cells[1] in servers:
            out[cells[1]] = tuple(cells[i] for i in at)
    return out


def test_servers_added_at_run_time_serve_request_by_request(
    local_env: LocalEnvironment, tiny_servers: list[int]
):
    status = wait_healthy(local_env)
    layout = Layout(local_env.settings.run_dir)
    # Spare slots; the environment's own API replicas (api1..) step aside meanwhile (drain:
    # no new sessions) so that only the run-time servers take traffic, and come back after.
    slots = ["api/api9", "api/api10"]
    replicas = [f"api/api{i}" for i in range(1, local_env.settings.api_replicas + 1)]
    try:
        for slot in replicas:
            assert runtime(layout, f"set server {slot} state drain").strip() == ""
        for slot, port in zip(slots, tiny_servers, strict=True):
            answer = runtime(layout, f"set server {slot} addr 127.0.0.1 port {port}")
            assert "port changed" in answer, answer
            assert runtime(layout, f"set server {slot} state ready").strip() == ""

        def both_up() -> bool:
            text = runtime(layout, "show stat")
            up = [
                ln.split(",")[1]
                for ln in text.splitlines()
                if ln.startswith(("api,api9,", "api,api10,")) and ",UP," in ln
            ]
            return sorted(up) == ["api10", "api9"]

        # Health checks run every 5 s and need 2 successes (rise 2).
        poll(both_up, local_env.settings.timeout(30), "run-time servers marked UP", 0.5)

        base = status["urls"]["https"]
        cert = status["tls_certificate"]
        # The slots may have served (and failed) in earlier tests: their counters are compared.
        errors_before = error_counters(layout, "api", ("api9", "api10"))
        assert set(errors_before) == {"api9", "api10"}, errors_before
        # Round robin, but not strictly alternating at first: HAProxy's weighted round robin
        # places a server that leaves maintenance by its position in the tree, and after the
        # heavy traffic of earlier tests one of the two may take several turns before the other
        # gets its first (seen: 6 in a row). Both must serve within a bounded number of requests.
        seen = served_by(lambda: requests.get(f"{base}/v1/whoami", verify=cert, timeout=5))
        assert set(seen) == {"a", "b"}, f"round robin over both run-time servers: {seen}"

        # No affinity: one phone's kept-alive connection is balanced request by request, so a
        # replica added by a scale-out serves phones already connected.
        with requests.Session() as s:
            served = served_by(lambda: s.get(f"{base}/v1/whoami", verify=cert, timeout=5))
            assert set(served) == {"a", "b"}, served
            assert not s.cookies
        # Every request served at the first try: none failed on a server and was retried.
        assert error_counters(layout, "api", ("api9", "api10")) == errors_before
    finally:
        for slot in slots:
            runtime(layout, f"set server {slot} state maint")
        for slot in replicas:
            runtime(layout, f"set server {slot} state ready")
    # Removed again: the run-time servers are out of the backend.
    assert not any(
        ln.startswith(("api,api9,", "api,api10,")) and ",UP," in ln
        for ln in runtime(layout, "show stat").splitlines()
    )


def worker_pid(layout: Layout) -> int | None:
    """The pid of HAProxy's current worker process (`show info` on its stats socket)."""
    try:
        info = runtime(layout, "show info")
    except OSError:
        return None
    return next((int(ln.split(":")[1]) for ln in info.splitlines() if ln.startswith("Pid:")), None)


def frontend_serves(status: dict) -> bool | None:
    """True once the HTTPS frontend routes to an API replica (None while it answers 503)."""
    try:
        r = requests.get(
            f"{status['urls']['https']}/openapi.json", verify=status["tls_certificate"], timeout=3
        )
    except requests.RequestException:
        return None
    return True if r.status_code == 200 else None


@pytest.mark.fault
@pytest.mark.parametrize("how", ["crash", "reload"])
def test_frontend_gets_its_servers_back_after_haproxy_restarts(
    local_env: LocalEnvironment, how: str
):
    """Servers join the HTTPS frontend at run time; a restarted (SIGKILL) or reloaded (SIGUSR2)
    HAProxy starts from its configuration, where the slots are empty: they must come back by
    themselves, not leave the frontend answering 503 for good."""
    status = wait_healthy(local_env)
    layout = Layout(local_env.settings.run_dir)
    before = local_env.component("haproxy")
    if how == "crash":
        os.kill(before["pid"], signal.SIGKILL)
        poll(
            lambda: (c := local_env.component("haproxy"))["pid"] not in (None, before["pid"]) and c,
            local_env.settings.timeout(15),
            "haproxy restarted by the supervisor",
        )
    else:
        worker = worker_pid(layout)
        os.kill(before["pid"], signal.SIGUSR2)  # the master reloads: a new worker takes over
        poll(
            lambda: worker_pid(layout) not in (None, worker) or None,
            local_env.settings.timeout(15),
            "haproxy reloaded (a new worker)",
        )
    poll(
        lambda: frontend_serves(status),
        local_env.settings.timeout(20),
        f"the HTTPS frontend serving again after an HAProxy {how}",
        interval_s=0.5,
    )
    wait_healthy(local_env)


SLOW_HEADERS = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
#: A registration whose body never ends (the secret is added: without it the API would answer
#: 403 at once, before reading any body).
SLOW_BODY = (
    b"POST /v1/devices HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\nX-Registration-Secret: %s\r\n\r\n{"
)


@pytest.mark.fault
@pytest.mark.parametrize("start", [SLOW_HEADERS, SLOW_BODY], ids=["headers", "body"])
def test_a_client_sending_slowly_cannot_hold_a_connection(
    local_env: LocalEnvironment, start: bytes
):
    """Slowloris: headers, or a body, trickling in a byte a second. HAProxy's `timeout
    http-request` must close the connection; with only `timeout client` (an hour), it stayed
    open, and without `option http-buffer-request` that timeout did not cover the body."""
    status = wait_healthy(local_env)
    port = local_env.settings.ports.haproxy_https
    ctx = ssl.create_default_context(cafile=status["tls_certificate"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        secret = (status.get("registration_secret") or "").encode()
        tls.sendall(start % secret if start is SLOW_BODY else start)
        started = time.monotonic()
        closed_after = None
        tls.settimeout(1.0)
        # The slow client's own pace (a byte a second) is the fault, bounded at 40 s.
        while time.monotonic() - started < 40:
            try:
                tls.sendall(b"X" if start is SLOW_HEADERS else b" ")
                answer = tls.recv(4096)
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError, OSError):
                closed_after = time.monotonic() - started
                break
            if answer == b"" or answer.startswith(b"HTTP/1.1 408"):
                closed_after = time.monotonic() - started
                break
            pytest.fail(f"an answer before the request was whole: {answer[:200]!r}")
    assert closed_after is not None, "the slow client still held its connection after 40 s"
    assert closed_after <= 15, closed_after
