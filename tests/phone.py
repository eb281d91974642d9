"""A minimal phone for the tests: the public API over HAProxy's HTTPS frontend."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp


class Phone:
    def __init__(self, status: dict[str, Any], platform: str = "ios") -> None:
        self.base = status["urls"]["https"]
        self.ssl = ssl.create_default_context(cafile=status["tls_certificate"])
        # Registration needs the environment's secret (shown by `cwh env status --json`).
        self.registration_secret = status.get("registration_secret") or ""
        self.platform = platform
        self.session: aiohttp.ClientSession
        self.device: dict[str, str] = {}
        self.token = ""
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def __aenter__(self) -> Phone:
        # Cookies are kept per phone: the sticky-session cookies of HAProxy live here.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl),
            timeout=aiohttp.ClientTimeout(total=20),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in self.sockets:
            await ws.close()
            # When the connection was lost (a hub killed), aiohttp's receive() marks the socket
            # closed without closing its response, and close() then returns early: release the
            # transport ourselves, or it leaks until garbage collection.
            ws._response.close()
        await self.session.close()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def register(self) -> Phone:
        async with self.session.post(
            f"{self.base}/v1/devices",
            json={"platform": self.platform, "name": "test"},
            headers={"X-Registration-Secret": self.registration_secret},
        ) as r:
            assert r.status == 201, await r.text()
            self.device = await r.json()
        async with self.session.post(
            f"{self.base}/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.device["client_id"],
                "client_secret": self.device["client_secret"],
            },
        ) as r:
            assert r.status == 200, await r.text()
            self.token = (await r.json())["access_token"]
        return self

    async def submit(
        self,
        document: str = "doc-001.txt",
        key: str | None = None,
        provider: str = "sharepoint",
        instruction: str = "summarize",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {**self.auth, "Idempotency-Key": key or uuid.uuid4().hex, **(headers or {})}
        async with self.session.post(
            f"{self.base}/v1/requests",
            headers=headers,
            json={"provider": provider, "document": document, "instruction": instruction},
        ) as r:
            return r.status, await r.json()

    async def get(self, request_id: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(
            f"{self.base}/v1/requests/{request_id}", headers=self.auth
        ) as r:
            return r.status, await r.json()

    async def statuses(self, body: Any) -> tuple[int, dict[str, Any]]:
        """`POST /v1/request-statuses` with `body` as sent (a test may send a wrong one)."""
        async with self.session.post(
            f"{self.base}/v1/request-statuses", json=body, headers=self.auth
        ) as r:
            return r.status, await r.json()

    async def sync(self, since: str = "0") -> dict[str, Any]:
        async with self.session.get(
            f"{self.base}/v1/sync", params={"since": since}, headers=self.auth
        ) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def updates(self, last_event_id: int | None = None) -> aiohttp.ClientWebSocketResponse:
        params = {"last_event_id": str(last_event_id)} if last_event_id is not None else {}
        ws = await self.session.ws_connect(
            f"{self.base}/v1/updates", headers=self.auth, params=params, heartbeat=30
        )
        self.sockets.append(ws)
        return ws


async def next_event(ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> dict[str, Any]:
    """The next event (a batch counts as its first event), skipping hello and "more" messages."""
    while True:
        msg = await ws.receive_json(timeout=timeout_s)
        if msg.get("type") in ("hello", "more"):
            continue
        if msg.get("type") == "batch":
            return msg["events"][0]
        return msg


@dataclass(frozen=True)
class Probe:
    """One write of `probe_writes`: when it was sent (wall clock), how long it took, its HTTP
    status (0: no answer; `error` says why)."""

    wall: float
    took_s: float
    status: int
    error: str = ""


@contextlib.contextmanager
def probe_writes(
    status: dict[str, Any],
    start: Callable[[], bool],
    stop: Callable[[list[Probe]], bool],
    phones: int = 2,
    period_s: float = 0.1,
    bound_s: float = 300,
) -> Iterator[list[Probe]]:
    """Phones of the test's own that write on a fixed schedule, in a thread, from when `start()`
    holds until `stop(probes)` does (checked before each write), the end of the body, or
    `bound_s`.

    Each phone submits once (one job each), then replays that submit (same Idempotency-Key and
    body): a replay is the API's write path (an INSERT ... ON CONFLICT on the primary, through
    pgBouncer) and makes no job, so the probes load no worker. Phone i writes at
    `i * period_s / phones + k * period_s` (a slot missed while a write was held is skipped):
    a write goes out every `period_s / phones`, so a write-path outage of a few tenths of a
    second holds one, where a fleet's writes, seconds apart per phone, can all miss it. Each
    phone stays under the API's per-device rate limit (20/s). `start` and `stop` keep the
    probes to the moments a test needs: their requests count in the SLOs a run checks too."""
    probes: list[Probe] = []
    done = threading.Event()
    ready = threading.Event()

    async def one(phone: Phone, key: str, t0: float, offset_s: float) -> None:
        deadline = t0 + bound_s
        slot = t0 + offset_s
        while not done.is_set() and time.monotonic() < deadline and not stop(probes):
            await asyncio.sleep(max(0.0, slot - time.monotonic()))
            wall, sent = time.time(), time.monotonic()
            code, error = 0, ""
            try:
                code, _ = await phone.submit(key=key)
            except aiohttp.ClientResponseError as e:  # an answer that was not JSON
                code, error = e.status, repr(e)
            except Exception as e:  # recorded: a probe that got no answer is evidence too
                error = repr(e)
            probes.append(Probe(wall, time.monotonic() - sent, code, error))
            slot += period_s * (1 + (time.monotonic() - slot) // period_s)

    async def run() -> None:
        async with contextlib.AsyncExitStack() as stack:
            fleet = [await stack.enter_async_context(Phone(status)) for _ in range(phones)]
            keys = []
            for phone in fleet:
                await phone.register()
                keys.append(uuid.uuid4().hex)
                code, body = await phone.submit(key=keys[-1])
                assert code == 202, body
            ready.set()
            deadline = time.monotonic() + bound_s
            while not (done.is_set() or start() or time.monotonic() > deadline):
                await asyncio.sleep(0.1)
            if not start():  # the body ended first, or the bound passed: no probe is due
                return
            t0 = time.monotonic()
            await asyncio.gather(
                *(
                    one(p, k, t0, i * period_s / phones)
                    for i, (p, k) in enumerate(zip(fleet, keys, strict=True))
                )
            )

    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as e:  # raised again in the test's thread
            errors.append(e)
            ready.set()

    thread = threading.Thread(target=main, name="probe-writes", daemon=True)
    thread.start()
    try:
        assert ready.wait(60), "the probing phones never registered"
        if errors:
            raise errors[0]
        yield probes
    finally:
        done.set()
        thread.join(30)
    assert not thread.is_alive(), "the probing phones did not stop"
    if errors:
        raise errors[0]
