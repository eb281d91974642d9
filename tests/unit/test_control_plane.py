"""The local control planes refuse what a browser could send them cross-site, and still serve the
harness: the supervisor's admin API, the fault proxy's API, the services' fault knobs and their
planted faults.

In-process (aiohttp's test server on 127.0.0.1); the live processes are checked in
`tests/env/test_hardening.py`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from env.admin import admin_app
from env.faultproxy import FaultProxy
from env.settings import EnvSettings
from env.supervisor import Component, Supervisor
from reference_impl.errors import error_middleware
from reference_impl.knobs import KNOBS, install_knobs
from reference_impl.planted import install_planted

BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


@dataclass
class Plane:
    """One control plane: its app, a state-changing call the harness makes, and whether that
    call took effect."""

    app: web.Application
    method: str
    path: str
    body: dict[str, Any] | list[Any] | None
    changed: Callable[[], bool]


def supervisor_plane(tmp_path: Path) -> Plane:
    sup = Supervisor(EnvSettings(base_port=18000, run_dir=tmp_path / "run"))
    sup.components["etcd"] = Component(
        name="etcd", kind="etcd", argv=["etcd"], ports={}, log_path=tmp_path / "etcd.log"
    )
    return Plane(
        admin_app(sup),
        "POST",
        "/components/etcd/hold",
        {"seconds": 30},
        lambda: sup.components["etcd"].held_until > 0,
    )


def fault_proxy_plane(_: Path) -> Plane:
    proxy = FaultProxy()
    return Plane(
        proxy.app(),
        "POST",
        "/proxies",
        {"name": "p", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9", "enabled": False},
        lambda: "p" in proxy.proxies,
    )


def knobs_plane(_: Path) -> Plane:
    app = web.Application(middlewares=[error_middleware])  # as every service has it
    install_knobs(app, b"{}")
    return Plane(app, "POST", "/admin/knobs", {"latency_ms": 5}, lambda: app[KNOBS].latency_ms == 5)


def planted_plane(_: Path) -> Plane:
    app = web.Application(middlewares=[error_middleware])
    planted = install_planted(app, enabled=True)
    return Plane(
        app, "POST", "/admin/planted", {"lose_acks": 2}, lambda: planted.armed["lose_acks"] == 2
    )


PLANES = {
    "supervisor": supervisor_plane,
    "faultproxy": fault_proxy_plane,
    "knobs": knobs_plane,
    "planted": planted_plane,
}

#: Requests a web page could make a browser send to 127.0.0.1, each with what gives it away.
BROWSER_LIKE = {
    "cross-site fetch": {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    "browser user agent": {"User-Agent": BROWSER_UA},
    "origin only": {"Origin": "null"},
    "sec-fetch-site only": {"Sec-Fetch-Site": "same-site"},
    "dns rebinding": {"Host": "evil.example:18000"},
}


async def _call(
    plane: Plane, headers: dict[str, str], data: bytes | None = None
) -> tuple[int, Any]:
    async with TestClient(TestServer(plane.app)) as client:
        if data is None and plane.body is not None:
            data = json.dumps(plane.body).encode()
            headers = {"Content-Type": "application/json", **headers}
        resp = await client.request(plane.method, plane.path, headers=headers, data=data)
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


@pytest.mark.parametrize("plane_name", PLANES)
@pytest.mark.parametrize("kind", BROWSER_LIKE)
def test_browser_like_requests_are_refused(tmp_path: Path, plane_name: str, kind: str) -> None:
    plane = PLANES[plane_name](tmp_path)
    status, body = asyncio.run(_call(plane, BROWSER_LIKE[kind]))
    assert status == 403, body
    assert isinstance(body, dict)
    assert body["error"] == "forbidden"
    assert body["detail"], "the refusal says why"
    assert not plane.changed()


@pytest.mark.parametrize("plane_name", PLANES)
def test_a_form_post_is_refused(tmp_path: Path, plane_name: str) -> None:
    """A cross-site form can POST text/plain (a JSON-looking body) without a CORS preflight."""
    plane = PLANES[plane_name](tmp_path)
    form = json.dumps(plane.body).encode()
    status, body = asyncio.run(_call(plane, {"Content-Type": "text/plain"}, data=form))
    assert status == 415, body
    assert body["error"] == "unsupported_media_type"
    assert not plane.changed()


@pytest.mark.parametrize("plane_name", PLANES)
def test_harness_like_requests_work(tmp_path: Path, plane_name: str) -> None:
    plane = PLANES[plane_name](tmp_path)
    status, body = asyncio.run(_call(plane, {"Sec-Fetch-Site": "none"}))
    assert status in (200, 201), body
    assert plane.changed()


def test_a_browser_may_not_read_the_supervisors_status(tmp_path: Path) -> None:
    """Not even a GET: a rebound DNS name would let the page read the answer."""
    harness, browser = supervisor_plane(tmp_path), supervisor_plane(tmp_path)
    for plane in (harness, browser):
        plane.method, plane.path, plane.body = "GET", "/status", None
    status, _ = asyncio.run(_call(harness, {}))
    assert status == 200
    status, body = asyncio.run(_call(browser, {"User-Agent": BROWSER_UA}))
    assert status == 403, body


#: What a JSON body may hold that no parser should turn into a 500: nesting past the parser's
#: recursion limit (found by the outside review on the public API), and the wrong types.
BAD_BODIES = {
    "nested past the parser's limit": b"[" * 60000,
    "not JSON": b"{nope",
    "not an object": b"[30]",
}


@pytest.mark.parametrize("plane_name", PLANES)
@pytest.mark.parametrize("kind", BAD_BODIES)
def test_a_bad_body_gets_a_4xx_with_a_json_reason(
    tmp_path: Path, plane_name: str, kind: str
) -> None:
    plane = PLANES[plane_name](tmp_path)
    headers = {"Content-Type": "application/json"}
    status, body = asyncio.run(_call(plane, headers, data=BAD_BODIES[kind]))
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict)
    assert body.get("detail") or body.get("error")  # the fault proxy speaks Toxiproxy's form
    assert not plane.changed()


@pytest.mark.parametrize("value", ["soon", None, -1, 7200, True])
def test_a_hold_of_a_bad_length_is_refused(tmp_path: Path, value: object) -> None:
    plane = supervisor_plane(tmp_path)
    plane = Plane(plane.app, "POST", plane.path, {"seconds": value}, plane.changed)
    status, body = asyncio.run(_call(plane, {}))
    assert status == 400, body
    assert not plane.changed()


def test_a_deeply_nested_submit_is_a_400_not_a_500() -> None:
    """The public API's body reader, in-process (the outside review sent 60 KB of `[` through
    HAProxy with a valid token and got 500)."""
    from reference_impl.api import read_json_object

    async def handler(request: web.Request) -> web.Response:
        await read_json_object(request)
        return web.json_response({})

    async def go() -> tuple[int, Any]:
        app = web.Application(middlewares=[error_middleware])
        app.router.add_post("/v1/requests", handler)
        async with TestClient(TestServer(app)) as client:
            resp = await client.post(
                "/v1/requests", data=b"[" * 60000, headers={"Content-Type": "application/json"}
            )
            return resp.status, await resp.json()

    status, body = asyncio.run(go())
    assert status == 400, body
    assert body["detail"] == "body is not valid JSON"
