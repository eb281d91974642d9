"""CPU pressure on the API: an open-loop arrival rate of reads that follows a ramp of stages.

The phones' fleet (Locust) models people; it spends most of its CPU being them, and on this
2-core machine it cannot also push three API replicas past the 70 % of their CPU request that
makes the HPA act. This driver spends little per request: a few registered devices read their
own request back (`GET /v1/requests/{id}`: token check, rate limit, cache or database, JSON)
at a set rate, through HAProxy's HTTPS frontend like any phone. Open loop: arrivals do not wait
for answers (a slow API gets more concurrent requests, as under real load), bounded by
`max_in_flight` so an overloaded API cannot make the driver itself explode; arrivals skipped at
that bound are counted, never hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

#: A device may make this many requests a second before the API answers 429
#: (`reference_impl.settings.rate_limit_per_s` is 20); stay under it with room.
PER_DEVICE_RATE = 12.0
SECRET_VAR = "CWH_PRESSURE_SECRET"


@dataclass(frozen=True)
class Stage:
    """`rate` reads per second for `seconds`."""

    seconds: float
    rate: float


@dataclass
class Tally:
    """What the driver saw: answers by kind, and arrivals it skipped at its in-flight bound."""

    ok: int = 0
    throttled: int = 0  # 429
    failed: int = 0  # any other status
    errors: int = 0  # no answer (connection refused, reset, timeout)
    skipped: int = 0  # not sent: max_in_flight requests were already waiting
    seconds: float = 0.0
    #: What the failed and errored requests were, counted by "status code: reason" or by
    #: exception: a count alone cannot tell a shed request from a lost database connection.
    reasons: dict[str, int] = field(default_factory=dict)

    def note(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    @property
    def sent(self) -> int:
        return self.ok + self.throttled + self.failed + self.errors


def ramp(peak: float, up_s: float, hold_s: float, steps: int = 4) -> list[Stage]:
    """Stairs from peak/steps to `peak` over `up_s`, then `peak` for `hold_s`."""
    step_s = up_s / steps
    return [Stage(step_s, peak * (i + 1) / steps) for i in range(steps)] + [Stage(hold_s, peak)]


async def register(session: aiohttp.ClientSession, base: str, secret: str) -> str:
    """A newly registered device's access token (registration, then the token grant)."""
    async with session.post(
        f"{base}/v1/devices",
        json={"platform": "ios", "name": "pressure"},
        headers={"X-Registration-Secret": secret},
    ) as r:
        r.raise_for_status()
        dev = await r.json()
    async with session.post(
        f"{base}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": dev["client_id"],
            "client_secret": dev["client_secret"],
        },
    ) as r:
        r.raise_for_status()
        return str((await r.json())["access_token"])


async def _device(session: aiohttp.ClientSession, base: str, secret: str) -> tuple[str, str]:
    """A registered device with one request of its own: (token, request id)."""
    token = await register(session, base, secret)
    async with session.post(
        f"{base}/v1/requests",
        json={"provider": "gdrive", "document": "doc-001.txt", "instruction": "pressure"},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
    ) as r:
        r.raise_for_status()
        return token, (await r.json())["request_id"]


def _reason(body: bytes) -> str:
    """An error answer's reason: the API's JSON `error`/`detail`, else the body's start."""
    try:
        doc = json.loads(body)
        return f"{doc.get('error', '?')} ({doc.get('detail', '')})"[:120]
    except (ValueError, AttributeError):
        return body[:80].decode(errors="replace")


async def pressure(
    base: str,
    cafile: str,
    secret: str,
    stages: Sequence[Stage],
    max_in_flight: int = 64,
    stop: asyncio.Event | None = None,
) -> Tally:
    """Read at each stage's rate through `base` (HAProxy's HTTPS URL) until the stages end or
    `stop` is set; what happened, counted."""
    peak = max((s.rate for s in stages), default=0.0)
    ctx = ssl.create_default_context(cafile=cafile)
    tally = Tally()
    in_flight: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(ssl=ctx, limit=max_in_flight)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        count = max(1, math.ceil(peak / PER_DEVICE_RATE))
        devices = await asyncio.gather(*(_device(session, base, secret) for _ in range(count)))

        async def read(token: str, request_id: str) -> None:
            try:
                async with session.get(
                    f"{base}/v1/requests/{request_id}",
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:
                    body = await r.read()
                    if r.status == 200:
                        tally.ok += 1
                    elif r.status == 429:
                        tally.throttled += 1
                    else:
                        tally.failed += 1
                        tally.note(f"{r.status}: {_reason(body)}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.errors += 1
                tally.note(type(exc).__name__)

        started = time.monotonic()
        n = 0
        for stage in stages:
            stage_end = time.monotonic() + stage.seconds
            interval = 1.0 / stage.rate if stage.rate > 0 else stage.seconds
            due = time.monotonic()
            while (now := time.monotonic()) < stage_end and not (stop and stop.is_set()):
                if now < due:
                    await asyncio.sleep(due - now)
                    continue
                due += interval
                if stage.rate <= 0:
                    continue
                if len(in_flight) >= max_in_flight:
                    tally.skipped += 1
                    continue
                token, request_id = devices[n % len(devices)]
                n += 1
                task = asyncio.create_task(read(token, request_id))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if stop and stop.is_set():
                break
        if in_flight:
            await asyncio.wait(in_flight, timeout=15)
        tally.seconds = time.monotonic() - started
    return tally


class InBackground:
    """`pressure` in a thread of its own, for a caller that watches something else meanwhile:
    started on entering, stopped and joined on leaving (also on an exception); `stop()` ends it
    earlier and returns the tally, or raises what made the driver fail."""

    def __init__(self, base: str, cafile: str, secret: str, stages: Sequence[Stage]) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._tally: Tally | None = None
        self._error: BaseException | None = None

        def drive() -> None:
            try:
                self._tally = self._loop.run_until_complete(
                    pressure(base, cafile, secret, stages, stop=self._stop)
                )
            except BaseException as exc:  # handed to the caller by stop()
                self._error = exc

        self._thread = threading.Thread(target=drive, name="pressure", daemon=True)

    def __enter__(self) -> InBackground:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """The driver still sends (False once it ended, by a stop or a failure)."""
        return self._thread.is_alive()

    def stop(self) -> Tally | None:
        """End the arrivals, wait for the requests in flight (bounded), return what happened
        (None when the driver is still stuck after the wait); RuntimeError when it failed."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=60)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()  # also when it never started: nothing else would close it
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"the pressure driver failed: {error!r}") from error
        return self._tally

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            self.stop()
        except RuntimeError:
            if exc_type is None:  # the block's own exception says more; do not replace it
                raise


async def _until_signalled(args: argparse.Namespace) -> Tally:
    """The ramp, ended early by SIGTERM or SIGINT (how an experiment stops it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await pressure(
        args.url, args.ca, args.secret, ramp(args.peak, args.up, args.hold), stop=stop
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scenarios.pressure", description=__doc__)
    parser.add_argument("--url", required=True, help="HAProxy's HTTPS URL (127.0.0.1 only)")
    parser.add_argument("--ca", required=True, help="the environment's CA certificate")
    parser.add_argument(
        "--secret",
        default=os.environ.get(SECRET_VAR, ""),
        help=f"the registration secret (default: ${SECRET_VAR}; an argument shows in `ps`)",
    )
    parser.add_argument("--peak", type=float, default=250.0, help="reads per second at the top")
    parser.add_argument("--up", type=float, default=30.0, help="seconds of stairs up")
    parser.add_argument("--hold", type=float, default=120.0, help="seconds at the peak")
    parser.add_argument("--out", type=Path, help="write the tally here (JSON) as well")
    args = parser.parse_args(argv)
    host = urlsplit(args.url).hostname or ""
    if not host.startswith("127.") and host != "localhost":
        parser.error(f"--url {args.url}: pressure goes to loopback addresses only")
    if not 0 < args.peak <= 5000 or not 0 <= args.up <= 3600 or not 0 < args.hold <= 3600:
        parser.error("--peak 0-5000 reads/s, --up 0-3600 s, --hold 0-3600 s")
    tally = asyncio.run(_until_signalled(args))
    text = json.dumps({**asdict(tally), "sent": tally.sent})
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
