"""What the public frontend lets through: the public API only, registration only with the
environment's secret, and registration and tokens at a bounded rate per client address."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import requests

from env.local import LocalEnvironment
from tests.helpers import poll, port_of, wait_healthy

pytestmark = pytest.mark.env

INTERNAL = [
    "/metrics",
    "/health/live",
    "/health/ready",
    "/admin/knobs",
    "/admin/planted",
    # Spellings aiohttp would serve as /metrics, or that a prefix denylist would miss.
    "/%6detrics",
    "/v1/../metrics",
    "/v1/%2e%2e/health/live",
    "//metrics",
]


def raw_get(status: dict[str, Any], path: str) -> tuple[int, str, str]:
    """GET `path` through the public frontend exactly as written (no client normalization)."""
    url = urlsplit(status["urls"]["https"])
    ctx = ssl.create_default_context(cafile=status["tls_certificate"])
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode()
    finally:
        conn.close()


def test_health_metrics_and_admin_routes_are_not_public(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    for path in INTERNAL:
        code, ctype, body = raw_get(status, path)
        assert code == 404, (path, code, body)
        assert ctype.startswith("application/json"), (path, ctype)
    assert raw_get(status, "/openapi.json")[0] == 200
    # On a replica's own port they serve (HAProxy's checks, Prometheus and experiments use it),
    # but not to a request the load balancer forwarded, however the path is spelled.
    api = f"http://127.0.0.1:{port_of(status, 'api1')}"
    assert requests.get(api + "/metrics", timeout=5).status_code == 200
    assert requests.get(api + "/health/ready", timeout=5).status_code == 200
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    for path in ("/metrics", "/health/live", "/admin/planted"):
        assert requests.get(api + path, headers=forwarded, timeout=5).status_code == 404, path


def test_registration_requires_the_environments_secret(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    secret = status["registration_secret"]
    assert len(secret or "") >= 20
    secrets_file = Path(status["secrets_file"])
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert secret in secrets_file.read_text()
    url = status["urls"]["https"] + "/v1/devices"
    body = {"platform": "ios", "name": "secret-test"}

    def register(headers: dict[str, str]) -> requests.Response:
        return requests.post(
            url, json=body, headers=headers, verify=status["tls_certificate"], timeout=10
        )

    for headers in ({}, {"X-Registration-Secret": ""}, {"X-Registration-Secret": secret[:-1]}):
        resp = register(headers)
        assert resp.status_code == 403, (headers, resp.text)
        assert resp.json()["error"] == "forbidden"
    assert register({"X-Registration-Secret": secret}).status_code == 201


Reply = tuple[int, str, Any]


async def _post(s: aiohttp.ClientSession, status: dict[str, Any], path: str) -> Reply:
    """One POST to `path` with credentials that do not exist: (status, Retry-After, body)."""
    form = {"grant_type": "client_credentials", "client_id": "cw_nobody", "client_secret": "x"}
    kwargs: dict[str, Any] = (
        {"data": form} if path == "/oauth/token" else {"json": {"platform": "ios"}}
    )
    async with s.post(status["urls"]["https"] + path, **kwargs) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, r.headers.get("Retry-After", ""), body


def _session(status: dict[str, Any], connections: int = 32) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context(cafile=status["tls_certificate"])
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=connections))


async def _burst(status: dict[str, Any], path: str, count: int) -> list[Reply]:
    """`count` POSTs to `path`, all at once, each on its own connection (a slow backend must not
    spread them out: the load balancer counts them as they arrive)."""
    async with _session(status, connections=count) as s:
        return await asyncio.gather(*(_post(s, status, path) for _ in range(count)))


async def _paced(status: dict[str, Any], path: str, per_s: float, seconds: float) -> list[Reply]:
    """POSTs to `path`, one at a time and never two closer than 1/per_s apart (a client that
    falls behind does not catch up in a burst)."""
    replies = []
    async with _session(status) as s:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (sent := loop.time()) < end:
            replies.append(await _post(s, status, path))
            await asyncio.sleep(max(0.0, sent + 1 / per_s - loop.time()))
    return replies


@pytest.mark.parametrize("path", ["/oauth/token", "/v1/devices"])
def test_registration_and_tokens_are_rate_limited_per_address(
    local_env: LocalEnvironment, path: str
):
    status = wait_healthy(local_env)
    limit = status["auth_rate_limit_per_s"]
    # Under the limit, at a steady pace: never refused (a fleet spawning below it passes). At
    # 40 % of it, since HAProxy's one-second rate also weighs in the second before.
    paced = asyncio.run(_paced(status, path, limit * 0.4, seconds=3))
    assert len(paced) >= 10  # it did run for a while
    assert [c for c, _, _ in paced if c == 429] == []
    # Three times the limit at once: refused at the load balancer, with a reason. (How many
    # depends on how fast this busy machine gets them out; the paced phase shows the other side.)
    burst = asyncio.run(_burst(status, path, limit * 3))
    refused = [(r, b) for c, r, b in burst if c == 429]
    assert refused, [c for c, _, _ in burst]
    for retry_after, body in refused:
        assert retry_after == "1"
        assert body["error"] == "too_many_requests"
        assert path in body["detail"]
    # And after Retry-After the address may go on.
    poll(
        lambda: asyncio.run(_burst(status, path, 1))[0][0] != 429 or None,
        10,
        "requests accepted again after Retry-After",
        interval_s=1.0,
    )
