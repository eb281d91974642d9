"""A trivial aiohttp stand-in for CloudWatcher's public API, for `make bench-load` only: it
answers every call the phone makes at once, from memory, so what the benchmark measures is the
load generator, not the system.

    python -m bench.sink --port 21500 --admin-port 21501 --heartbeat 15

Several sink processes share `--port` (SO_REUSEPORT), so the phones' connections spread over
them (and over the cores). Each raises its open-file limit for its share (`--fds`, as far as it
may: scenarios/sockets.py) and answers `/stats` on its own admin port: open sockets, phones whose
heartbeat is flowing, heartbeats received, open sockets by the phones' source address.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import time
import uuid

from aiohttp import web

from scenarios.sockets import raise_fd_limit

STARTED = time.monotonic()
HEARTBEAT_S = web.AppKey("heartbeat_s", float)  # the period the phones are told to beat at
LAST_PING: dict[int, float] = {}  # open socket -> monotonic time of its last heartbeat
BY_SOURCE: collections.Counter[str] = collections.Counter()  # open sockets by source address
COUNTS = {"http": 0, "ws_connects": 0, "pings": 0}


def json_ok(body: dict[str, object], status: int = 200) -> web.Response:
    COUNTS["http"] += 1
    return web.json_response(body, status=status)


async def register(_: web.Request) -> web.Response:
    return json_ok(
        {"device_id": str(uuid.uuid4()), "client_id": uuid.uuid4().hex, "client_secret": "s"},
        201,
    )


async def token(_: web.Request) -> web.Response:
    return json_ok({"access_token": "t", "token_type": "Bearer", "expires_in": 3600})


async def submit(_: web.Request) -> web.Response:
    return json_ok({"request_id": str(uuid.uuid4()), "status": "queued"}, 202)


async def read(request: web.Request) -> web.Response:
    return json_ok({"request_id": request.match_info["rid"], "status": "queued"})


async def sync(_: web.Request) -> web.Response:
    return json_ok({"events": [], "next_cursor": "0"})


async def updates(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=4096)
    await ws.prepare(request)
    COUNTS["ws_connects"] += 1
    heartbeat_s = request.app[HEARTBEAT_S]
    await ws.send_json({"type": "hello", "server": "sink", "heartbeat_s": heartbeat_s})
    key = id(ws)
    LAST_PING[key] = time.monotonic()  # connected counts as a first sign of life
    source = request.remote or "?"
    BY_SOURCE[source] += 1
    try:
        async for msg in ws:
            if msg.type == web.WSMsgType.TEXT and msg.data == "ping":
                LAST_PING[key] = time.monotonic()
                COUNTS["pings"] += 1
                await ws.send_str("pong")
    finally:
        LAST_PING.pop(key, None)
        BY_SOURCE[source] -= 1
    return ws


async def stats(request: web.Request) -> web.Response:
    now, window = time.monotonic(), request.app[HEARTBEAT_S] * 1.5
    return web.json_response(
        {
            "open_sockets": len(LAST_PING),
            "live_phones": sum(1 for t in LAST_PING.values() if now - t <= window),
            **COUNTS,
            "by_source": {k: n for k, n in BY_SOURCE.items() if n},
        }
    )


def create_app(heartbeat_s: float) -> web.Application:
    app = web.Application()
    app[HEARTBEAT_S] = heartbeat_s
    app.router.add_post("/v1/devices", register)
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/v1/requests", submit)
    app.router.add_get("/v1/requests/{rid}", read)
    app.router.add_get("/v1/sync", sync)
    app.router.add_get("/v1/updates", updates)
    return app


async def serve(port: int, admin_port: int, heartbeat_s: float) -> None:
    """Listen on `port` (shared) and `admin_port` (this process's) until SIGTERM or SIGINT."""
    # Idle HTTP connections closed after 10 s, as HAProxy's `timeout http-keep-alive` in front of
    # the real API does (env/configs.py), not aiohttp's 75 s.
    runner = web.AppRunner(
        create_app(heartbeat_s), access_log=None, shutdown_timeout=1.0, keepalive_timeout=10.0
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True, backlog=4096).start()
    admin = web.Application()
    admin[HEARTBEAT_S] = heartbeat_s
    admin.router.add_get("/stats", stats)
    admin_runner = web.AppRunner(admin, access_log=None)
    await admin_runner.setup()
    await web.TCPSite(admin_runner, "127.0.0.1", admin_port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await admin_runner.cleanup()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, default=15.0)
    parser.add_argument("--fds", type=int, default=0, help="descriptors this process needs")
    args = parser.parse_args()
    limit = raise_fd_limit(args.fds)
    print(f"sink {args.admin_port}: {limit.describe()}", flush=True)
    asyncio.run(serve(args.port, args.admin_port, args.heartbeat))
