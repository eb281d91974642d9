"""The notification hub under hostile clients and out-of-order commits.

Most tests run a hub in this process (an aiohttp runner on an ephemeral port) against the session
environment's own PostgreSQL (through pgBouncer) and Redis Cluster: the hub's real code, real
pub/sub and real transactions, with clients that a phone would never be (sockets that never read,
never answer a close). The token tests go through HAProxy to the environment's own hubs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psycopg
import pytest
import redis
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from env.local import LocalEnvironment
from reference_impl import hub
from reference_impl.auth import LEEWAY_S, TokenIssuer
from reference_impl.settings import ServiceSettings
from reference_impl.stores import NOTIFY_CHANNEL
from tests.helpers import redis_options, service_settings, wait_healthy
from tests.phone import Phone

pytestmark = pytest.mark.env

SCALE = float(os.environ.get("CWH_TIMEOUT_SCALE", "1"))
#: The close codes the hub documents (module docstring, README).
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_RESUME = 4002
#: Closing sockets in parallel with a deadline of a couple of seconds: well under this.
SHUTDOWN_BOUND_S = 8


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def hub_settings(status: dict[str, Any]) -> ServiceSettings:
    settings: ServiceSettings = service_settings(status, "hub", "hub-test")
    return settings


@dataclass
class RunningHub:
    app: web.Application
    base: str
    #: Runs a coroutine on the hub's loop and awaits it from the test's.
    on: Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]]
    runner: web.AppRunner

    async def stop(self, timeout_s: float) -> None:
        """Shut the hub down as SIGTERM would (going away, then cleanup)."""
        await asyncio.wait_for(self.on(self.runner.cleanup()), timeout_s)


@contextlib.asynccontextmanager
async def running_hub(status: dict[str, Any]) -> AsyncIterator[RunningHub]:
    """A hub on a thread and event loop of its own, as another process would be: what the test
    does meanwhile (blocking Redis and psycopg calls included) never stalls it."""
    app = hub.create_app(hub_settings(status))
    runner = web.AppRunner(app, shutdown_timeout=60)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hub-under-test", daemon=True)
    thread.start()

    def on(coro: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    # A hub whose listener ends stops its process (SIGTERM): here, fail the test instead of
    # ending the session without its teardown.
    def listener_ended(*_: Any) -> None:
        raise RuntimeError("the hub under test asked to stop: its pub/sub listener ended")

    previous = signal.signal(signal.SIGTERM, listener_ended)
    try:
        yield RunningHub(app, await on(start()), on, runner)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if runner.server is not None:
            with contextlib.suppress(TimeoutError):  # a hub that cannot stop fails its test
                await asyncio.wait_for(on(runner.cleanup()), 60)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 30)
        loop.close()


def token_for(status: dict[str, Any], device: uuid.UUID, ttl_s: int = 900) -> str:
    return TokenIssuer(hub_settings(status).jwt_key_path, ttl_s).issue(device, "test")[0]


def redis_node(status: dict[str, Any]) -> redis.Redis:
    url = urlsplit(status["urls"]["redis_nodes"][0])
    return redis.Redis(host=url.hostname, port=url.port, socket_timeout=10, **redis_options(status))


def event(device: uuid.UUID, event_id: int, pad: int = 0) -> str:
    body = {
        "event_id": event_id,
        "type": "completed",
        "request_id": str(uuid.uuid4()),
        "device_id": str(device),
        "status": "completed",
    }
    if pad:
        body["pad"] = "x" * pad
    return json.dumps(body)


def publish(status: dict[str, Any], messages: list[str]) -> None:
    """PUBLISH in Redis Cluster reaches every node: one node is enough."""
    with redis_node(status) as r:
        pipe = r.pipeline(transaction=False)
        for m in messages:
            pipe.publish(NOTIFY_CHANNEL, m)
        pipe.execute()


async def dead_peer(base: str, token: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads again, nor answers
    anything: a phone frozen in the background, or gone without a FIN. Its receive window is
    tiny, so what the hub sends soon piles up on the hub's side."""
    host, port = base.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /v1/updates HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:  # byte by byte: leave the frames that follow unread
        chunk = await loop.sock_recv(sock, 1)
        assert chunk, f"hub closed the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


class Socket:
    """A well-behaved client: a task of its own reads everything as it comes (answering the hub's
    heartbeat pings meanwhile), and remembers the last `resume` value it was given."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids: list[int] = []
        self.resume: str | None = None
        self.hello: dict[str, Any] = {}
        self.close_code: int | None = None
        self.closed = False
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._take(json.loads(msg.data))
                self._changed.set()
        self.close_code, self.closed = self.ws.close_code, True
        self._changed.set()

    def _take(self, body: dict[str, Any]) -> None:
        self.resume = body.get("resume", self.resume)
        if body.get("type") == "hello":
            self.hello = body
            return
        if body.get("type") == "more":  # the replay was cut: a close follows
            return
        events = body["events"] if body.get("type") == "batch" else [body]
        ids = [int(e["event_id"]) for e in events]
        self.ids.extend(ids)
        if "resume" not in body:  # a hub of the old protocol: resume from the highest id seen
            self.resume = str(max(int(self.resume or 0), *ids))

    async def wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"{what}: not after {timeout_s} s"
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def until(self, wanted: set[int], timeout_s: float) -> None:
        def done() -> bool:
            assert not (self.closed and not wanted <= set(self.ids)), f"closed: {self.close_code}"
            return wanted <= set(self.ids)

        await self.wait(done, timeout_s, f"events {sorted(wanted)[:5]}...")

    async def quiet(self, seconds: float) -> None:
        """Let anything still on its way arrive (to see duplicates, if any)."""
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


async def connect(
    session: aiohttp.ClientSession, base: str, token: str, resume: str | None = None
) -> Socket:
    params = {"last_event_id": resume} if resume is not None else {}
    ws = await session.ws_connect(
        f"{base}/v1/updates", headers={"Authorization": f"Bearer {token}"}, params=params
    )
    sock = Socket(ws)
    await sock.wait(lambda: bool(sock.hello) or sock.closed, 5 * SCALE, "hello")
    assert sock.hello.get("type") == "hello", sock.close_code
    return sock


@contextlib.asynccontextmanager
async def hub_and_phone(
    status: dict[str, Any],
) -> AsyncIterator[tuple[RunningHub, aiohttp.ClientSession, uuid.UUID, Socket]]:
    """A hub of the test's own, and one phone connected to it (no replay asked)."""
    async with running_hub(status) as h, aiohttp.ClientSession() as session:
        device = uuid.uuid4()
        yield h, session, device, await connect(session, h.base, token_for(status, device))


async def metric(session: aiohttp.ClientSession, base: str, name: str, **labels: str) -> float:
    """The sum of the hub's samples `name` whose labels include `labels`."""
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


# ---- 1. a slow or dead client never stalls the hub ---------------------------------------------


def flood(status: dict[str, Any], devices: list[uuid.UUID], first_id: int) -> int:
    """Fill the TCP path to each device's socket (fat events, more than the kernel buffers),
    then overflow its queue (small ones). Returns the next free id."""
    n = first_id
    fat, small = [], []
    for device in devices:
        for _ in range(150):
            fat.append(event(device, n, pad=32 * 1024))
            n += 1
        for _ in range(hub.QUEUE_LIMIT + 100):
            small.append(event(device, n))
            n += 1
    publish(status, fat)
    publish(status, small)
    return n


def test_dead_clients_do_not_stall_delivery_to_others(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with running_hub(status) as h, aiohttp.ClientSession() as session:
            slow = [uuid.uuid4() for _ in range(3)]
            peers = [await dead_peer(h.base, token_for(status, d)) for d in slow]
            normal = uuid.uuid4()
            phone = await connect(session, h.base, token_for(status, normal))
            try:
                next_id = 10**12
                latencies = []
                for _ in range(3):
                    next_id = await asyncio.to_thread(flood, status, slow, next_id)
                    sent = time.monotonic()
                    await asyncio.to_thread(publish, status, [event(normal, next_id)])
                    await phone.until({next_id}, 10 * SCALE)
                    latencies.append(time.monotonic() - sent)
                    next_id += 1
                assert max(latencies) < 2 * SCALE, f"normal client waited {latencies}"
                print(f"beside {len(slow)} dead clients: delivered in {latencies} s")
                # The fault happened: each slow socket overflowed and was dropped by the hub.
                closed = await metric(session, h.base, "cw_ws_closes_total", reason="too_slow")
                assert closed >= len(slow)
            finally:
                for p in peers:
                    p.close()

    run(flow())


def test_shutdown_with_dead_peers_finishes_within_a_bound(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with running_hub(status) as h, aiohttp.ClientSession() as session:
            # Dead peers: two idle (never answer the close), one whose window is full.
            idle = [await dead_peer(h.base, token_for(status, uuid.uuid4())) for _ in range(2)]
            blocked_device = uuid.uuid4()
            blocked = await dead_peer(h.base, token_for(status, blocked_device))
            fat = [event(blocked_device, 10**12 + i, pad=32 * 1024) for i in range(150)]
            await asyncio.to_thread(publish, status, fat)
            phone = await connect(session, h.base, token_for(status, uuid.uuid4()))
            try:
                started = time.monotonic()
                try:
                    await h.stop(SHUTDOWN_BOUND_S * SCALE)
                except TimeoutError:
                    pytest.fail(f"shutdown still running after {SHUTDOWN_BOUND_S * SCALE} s")
                took = time.monotonic() - started
                await phone.wait(lambda: phone.closed, 5, "the phone's socket closed")
                assert phone.close_code == 1001, "going away: reconnect elsewhere"
                assert took < SHUTDOWN_BOUND_S * SCALE
                print(f"shutdown with {len(idle) + 1} dead peers: {took:.2f} s")
            finally:
                for p in [*idle, blocked]:
                    p.close()

    run(flow())


# ---- 2. exactly once despite out-of-order commits ----------------------------------------------


def test_an_event_published_out_of_order_is_delivered_once(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with hub_and_phone(status) as (_h, _session, device, phone):
            base_id = 10**12
            # 2 committed after 3 (and 3 is published twice, as a retried publish would).
            publish(status, [event(device, base_id + i) for i in (1, 3, 3, 2, 4)])
            await phone.until({base_id + i for i in (1, 2, 3, 4)}, 10 * SCALE)
            await phone.quiet(1)
            assert Counter(phone.ids) == {base_id + i: 1 for i in (1, 2, 3, 4)}

    run(flow())


def insert_event(conn: psycopg.Connection, device: uuid.UUID) -> int:
    row = conn.execute(
        "INSERT INTO events (device_id, request_id, type, payload)"
        " VALUES (%s, %s, 'completed', '{\"status\": \"completed\"}') RETURNING event_id",
        (device, uuid.uuid4()),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_resume_after_a_late_commit_replays_it_once(local_env: LocalEnvironment):
    """Ids come from a sequence inside concurrent transactions: the phone sees the larger one
    first, goes away, and the smaller one commits while it is away."""
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]
    device = uuid.uuid4()

    async def flow() -> None:
        async with running_hub(status) as h, aiohttp.ClientSession() as session:
            token = token_for(status, device)
            phone = await connect(session, h.base, token)
            with psycopg.connect(primary) as late, psycopg.connect(primary) as early:
                small = insert_event(late, device)  # takes its id, commits later
                large = insert_event(early, device)
                early.commit()
                assert small < large
                publish(status, [event(device, large)])
                await phone.until({large}, 10 * SCALE)
                await phone.close()
                late.commit()
                publish(status, [event(device, small)])  # nobody listens for this device now
            again = await connect(session, h.base, token, resume=phone.resume)
            await again.until({small}, 10 * SCALE)
            await again.quiet(1)
            assert Counter(phone.ids + again.ids) == {small: 1, large: 1}

    run(flow())


def kill_pubsub_clients(status: dict[str, Any]) -> int:
    killed = 0
    for url in map(urlsplit, status["urls"]["redis_nodes"]):
        with redis.Redis(
            host=url.hostname, port=url.port, socket_timeout=5, **redis_options(status)
        ) as r:
            killed += int(r.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
    return killed


def test_catch_up_beyond_a_queue_closes_and_the_phone_resumes_exactly_once(
    local_env: LocalEnvironment,
):
    """Events committed while the hub heard nothing (their publish lost): the catch-up after
    pub/sub comes back has more than one queue for this phone. The hub must say so (close, resume)
    rather than drop the rest, and resuming must page through them all, each once."""
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]
    device = uuid.uuid4()
    total = 2 * hub.REPLAY_LIMIT + 500

    def insert_all() -> None:
        with psycopg.connect(primary) as conn:
            for _ in range(total):
                insert_event(conn, device)

    async def flow() -> None:
        async with running_hub(status) as h, aiohttp.ClientSession() as session:
            token = token_for(status, device)
            sockets = [await connect(session, h.base, token)]
            await asyncio.to_thread(insert_all)
            assert await asyncio.to_thread(kill_pubsub_clients, status) >= 1
            deadline = time.monotonic() + 60 * SCALE

            def received() -> list[int]:
                return [i for s in sockets for i in s.ids]

            while len(set(received())) < total:
                phone = sockets[-1]
                left = deadline - time.monotonic()
                with contextlib.suppress(AssertionError):
                    await phone.wait(lambda p=phone: p.closed, max(left, 0), "a close")
                got = len(set(received()))
                assert phone.closed or got == total, f"{got} of {total} after {60 * SCALE} s"
                if phone.closed:
                    sockets.append(await connect(session, h.base, token, resume=phone.resume))
            await sockets[-1].quiet(1)
            closes = [s.close_code for s in sockets if s.closed]
            assert closes, "the catch-up overflowed: the hub must have closed the socket"
            assert set(closes) <= {CLOSE_RESUME}, closes
            assert len(received()) == total == len(set(received())), "each event exactly once"

    run(flow())


# ---- 3. tokens --------------------------------------------------------------------------------


def test_a_token_in_the_url_is_refused(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            upgrade = {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                "Sec-WebSocket-Version": "13",
            }
            async with phone.session.get(
                f"{phone.base}/v1/updates", params={"access_token": phone.token}, headers=upgrade
            ) as r:
                assert r.status == 400, f"a token in the URL was accepted ({r.status})"
                body = await r.json()
            assert body["error"] == "bad_request"
            assert "Authorization" in body["detail"]

    run(flow())


def test_a_socket_is_closed_when_its_token_expires(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            ttl_s = 3
            phone.token = token_for(status, uuid.UUID(phone.device["device_id"]), ttl_s=ttl_s)
            issued = time.monotonic()
            ws = await phone.updates()
            assert (await ws.receive_json(timeout=5))["type"] == "hello"
            # One deadline for the whole wait: receive(timeout=) starts again at each of the
            # hub's heartbeat pings.
            try:
                async with asyncio.timeout(ttl_s + LEEWAY_S + 10 * SCALE):
                    msg = await ws.receive()
            except TimeoutError:
                pytest.fail("the socket outlived its token")
            closed_after = time.monotonic() - issued
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            assert msg.data == CLOSE_TOKEN_EXPIRED
            assert msg.extra == "token expired"
            assert closed_after >= ttl_s - 1, f"closed {closed_after:.1f} s after issue"

    run(flow())


# ---- 4. no silent zombies ---------------------------------------------------------------------


def test_the_listener_survives_an_unexpected_error(local_env, monkeypatch):
    status = wait_healthy(local_env)
    real = hub.single_node_pubsub
    calls = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("unexpected, once")
        return await real(*args, **kwargs)

    monkeypatch.setattr(hub, "single_node_pubsub", flaky)

    async def flow() -> None:
        async with hub_and_phone(status) as (h, session, device, phone):
            deadline = time.monotonic() + 15 * SCALE
            n = 10**12
            while not phone.ids:  # publish until the listener is back and hears one
                assert time.monotonic() < deadline, "the listener never came back"
                await asyncio.to_thread(publish, status, [event(device, n)])
                n += 1
                with contextlib.suppress(AssertionError):
                    await phone.wait(lambda: bool(phone.ids), 0.5, "an event")
            assert len(calls) >= 2, "the fault happened and the listener tried again"
            async with session.get(f"{h.base}/health/live") as r:
                assert r.status == 200

    run(flow())


def test_a_malformed_event_does_not_silence_a_socket(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with hub_and_phone(status) as (_h, _session, device, phone):
            bad = {"device_id": str(device), "type": "completed"}  # no event_id
            publish(status, [json.dumps(bad), "not json", event(device, 10**12)])
            await phone.until({10**12}, 10 * SCALE)

    run(flow())
