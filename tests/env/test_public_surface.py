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


async def _burst(
    status: dict[str, Any], path: str, count: int, pace_s: float = 0.0
) -> list[tuple[int, str, Any]]:
    """`count` POSTs to `path` (credentials that do not exist): all at once, or one every
    `pace_s` seconds; (status, Retry-After, JSON body) of each."""
    ctx = ssl.create_default_context(cafile=status["tls_certificate"])
    url = status["urls"]["https"] + path
    form = {"grant_type": "client_credentials", "client_id": "cw_nobody", "client_secret": "x"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=32)) as s:

        async def one(delay_s: float) -> tuple[int, str, Any]:
            await asyncio.sleep(delay_s)
            kwargs: dict[str, Any] = (
                {"data": form} if path == "/oauth/token" else {"json": {"platform": "ios"}}
            )
            async with s.post(url, **kwargs) as r:
                return r.status, r.headers.get("Retry-After", ""), await r.json()

        return await asyncio.gather(*(one(i * pace_s) for i in range(count)))


@pytest.mark.parametrize("path", ["/oauth/token", "/v1/devices"])
def test_registration_and_tokens_are_rate_limited_per_address(
    local_env: LocalEnvironment, path: str
):
    status = wait_healthy(local_env)
    limit = status["auth_rate_limit_per_s"]
    # Under the limit, at a steady pace: never refused (a fleet spawning below it passes).
    paced = asyncio.run(_burst(status, path, int(limit * 0.6) * 3, pace_s=1 / (limit * 0.6)))
    assert [c for c, _, _ in paced if c == 429] == []
    # Twice the limit at once: the excess is refused at the load balancer, with a reason.
    burst = asyncio.run(_burst(status, path, limit * 2))
    refused = [(r, b) for c, r, b in burst if c == 429]
    assert len(refused) >= limit // 2, [c for c, _, _ in burst]
    retry_after, body = refused[0]
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
