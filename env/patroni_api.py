"""Patroni's dynamic configuration through its REST API: read it, and change it on the first
member that answers (the change goes to the DCS, so every member applies it at its next loop).
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from env import configs
from env.failover_timing import FailoverTiming
from env.secrets import Secrets


class PatroniConfigError(RuntimeError):
    """No member answered, or every one refused; the message says what the last one said."""


async def dynamic_config(ports: list[int]) -> dict[str, Any]:
    """`GET /config` (open, like every read) from the first member that answers."""
    last = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for port in ports:
            try:
                async with http.get(f"http://127.0.0.1:{port}/config") as resp:
                    if resp.status == 200:
                        body = await resp.json()
                        if isinstance(body, dict):
                            return body
                    last = f"{resp.status} {await resp.text()}"
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                last = repr(exc)
    raise PatroniConfigError(f"no Patroni gave its configuration: {last}")


async def patch_config(ports: list[int], secrets: Secrets, change: dict[str, Any]) -> None:
    """PATCH the cluster's dynamic configuration through the first Patroni that answers."""
    # Basic auth by hand: aiohttp deprecates its BasicAuth helper.
    user = base64.b64encode(f"{configs.PATRONI_REST_USER}:{secrets.patroni_rest}".encode())
    headers = {"Authorization": f"Basic {user.decode()}"}
    last = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for port in ports:
            try:
                async with http.patch(
                    f"http://127.0.0.1:{port}/config", json=change, headers=headers
                ) as resp:
                    if resp.status == 200:
                        return
                    last = f"{resp.status} {await resp.text()}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = repr(exc)
    raise PatroniConfigError(f"Patroni refused the change {change}: {last}")


async def apply_timing(
    timing: FailoverTiming, ports: list[int], secrets: Secrets
) -> dict[str, int]:
    """Write the profile's Patroni timings into the DCS where the cluster runs with others (it
    keeps those it was created with, whatever a member's file says). Returns what changed."""
    current = await dynamic_config(ports)
    stale = {k: v for k, v in timing.patroni_dynamic.items() if current.get(k) != v}
    if stale:
        await patch_config(ports, secrets, stale)
    return stale
