"""The fleet's phone against a hub that closes its socket with 4001 (token expired) and 4002
(resume): it renews its token, resumes from the `resume` value it was last given, reconnects at
once, and counts none of it as a failure.

The phone is a Locust user (gevent, monkey-patched): it runs in a subprocess of its own, against a
stub hub served from this process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import json, os, sys, time
import gevent
from locust import events
from locust.env import Environment
from scenarios import phone

class Phone(phone.PhoneUser):
    host = sys.argv[1]

user = Phone(Environment(user_classes=[Phone], events=events))
user.on_start()
deadline = time.monotonic() + float(sys.argv[2])
connects = lambda: [op for op in phone.LEDGER if op.kind == "connect"]
while len(connects()) < 3 and time.monotonic() < deadline:
    gevent.sleep(0.05)
gevent.sleep(0.5)  # a fourth connection would show here
print(json.dumps([[op.outcome, op.error] for op in connects()]), flush=True)
os._exit(0)
"""


def stub_hub(seen: list[dict[str, Any]]) -> web.Application:
    tokens = iter(range(1, 100))

    async def devices(_: web.Request) -> web.Response:
        body = {"device_id": "d1", "client_id": "c1", "client_secret": "s1"}
        return web.json_response(body, status=201)

    async def token(_: web.Request) -> web.Response:
        return web.json_response({"access_token": f"tok-{next(tokens)}", "expires_in": 900})

    async def updates(request: web.Request) -> web.WebSocketResponse:
        n = len(seen) + 1
        seen.append(
            {
                "at": time.monotonic(),
                "auth": request.headers.get("Authorization"),
                "last_event_id": request.query.get("last_event_id"),
            }
        )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "server": "stub", "heartbeat_s": 30, "resume": "7"})
        if n == 1:
            await ws.send_json(
                {"event_id": 8, "type": "completed", "request_id": "r8", "resume": "7,8"}
            )
            seen[-1]["closed"] = time.monotonic()
            await ws.close(code=4001, message=b"token expired")
        elif n == 2:
            await ws.send_json({"type": "more", "resume": "9"})
            seen[-1]["closed"] = time.monotonic()
            await ws.close(code=4002, message=b"more events: resume with last_event_id")
        else:
            async for _ in ws:
                pass
        return ws

    app = web.Application()
    app.router.add_post("/v1/devices", devices)
    app.router.add_post("/oauth/token", token)
    app.router.add_get("/v1/updates", updates)
    return app


def test_the_phone_renews_its_token_and_resumes_on_the_hubs_close_codes(tmp_path):
    seen: list[dict[str, Any]] = []

    async def flow() -> list[list[str | None]]:
        runner = web.AppRunner(stub_hub(seen))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                DRIVER,
                f"http://{host}:{port}",
                "30",
                cwd=ROOT,
                env={"PYTHONPATH": str(ROOT), "CWH_FLEET_DIR": str(tmp_path)},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()[-2000:]
            return json.loads(out.decode().strip().splitlines()[-1])
        finally:
            await runner.cleanup()

    connects = asyncio.run(flow())
    assert len(seen) == 3, seen
    first, second, third = seen
    # 4001: a new token for the next socket; 4002: the same token is still good.
    assert first["auth"] == "Bearer tok-1"
    assert second["auth"] == third["auth"] == "Bearer tok-2"
    # Both at once, not after a failure's backoff; and no connect counted as failed.
    assert second["at"] - first["closed"] < 1.0
    assert third["at"] - second["closed"] < 1.0
    assert connects == [["ok", None]] * 3
    # The first socket asked for no replay; each later one resumes where the hub said.
    assert first["last_event_id"] is None
    assert second["last_event_id"] == "7,8"
    assert third["last_event_id"] == "9"
