"""The fleet's phones with CWH_SOURCE_ADDRESSES: each phone's HTTP requests and WebSocket leave
from one source address, the phones taking the addresses in turn (scenarios/sockets.py), against
the benchmark's sink (bench/sink.py) on loopback, which sees where each connection comes from.

The phones are Locust users (gevent, monkey-patched): they run in a subprocess of their own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from bench.sink import create_app

ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import json, os, sys, time
import gevent
from locust import events
from locust.env import Environment
from scenarios import phone

class Phone(phone.PhoneUser):
    host = sys.argv[1]

env = Environment(user_classes=[Phone], events=events)
users = [Phone(env) for _ in range(4)]
for user in users:
    user.on_start()
deadline = time.monotonic() + 20
while sum(u.ws is not None for u in users) < len(users) and time.monotonic() < deadline:
    gevent.sleep(0.05)
for user in users:
    user.sync()
ids = [phone.new_id() for _ in range(50)]
print(json.dumps({"sources": [u.source for u in users], "ids": ids}), flush=True)
os._exit(0)
"""

SOURCES = ("127.0.0.7", "127.0.0.8")


def test_each_phone_connects_from_its_source_address(tmp_path: Path) -> None:
    seen: list[tuple[str, str | None]] = []  # (path, the client's address)

    @web.middleware
    async def remember(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append((request.path, request.remote))
        return await handler(request)

    async def flow() -> dict[str, list[str]]:
        app = create_app(30.0)
        app.middlewares.append(remember)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        env = {
            "PYTHONPATH": str(ROOT),
            "CWH_FLEET_DIR": str(tmp_path),
            "CWH_SOURCE_ADDRESSES": ",".join(SOURCES),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", DRIVER, f"http://{host}:{port}", cwd=ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()[-2000:]
            assert out.strip(), err.decode()[-2000:]
            return json.loads(out.decode().strip().splitlines()[-1])
        finally:
            await runner.cleanup()

    got = asyncio.run(flow())
    assert got["sources"] == [*SOURCES, *SOURCES]
    by_path: dict[str, list[str | None]] = {}
    for path, remote in seen:
        by_path.setdefault(path, []).append(remote)
    # Four phones, two from each address, on every path: registration, token, socket, sync.
    for path in ("/v1/devices", "/oauth/token", "/v1/updates", "/v1/sync"):
        assert sorted(by_path[path]) == sorted([*SOURCES, *SOURCES]), (path, by_path)
    # The phone's ids are version-4 UUIDs, as uuid4().hex made them.
    for op_id in got["ids"]:
        assert uuid.UUID(op_id).version == 4
        assert uuid.UUID(op_id).hex == op_id
