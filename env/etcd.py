"""etcd with authentication: Patroni's keys take writes only from those who hold the password.

etcd's JSON gateway on the client port accepts a body of any `Content-Type`, so without
authentication a web page could make a browser on this machine `POST /v3/kv/deleterange` (a
"simple" request, no CORS preflight) and wipe Patroni's leader and config keys. With
authentication on, every key-value call needs a token that only the password (`secrets.json`'s
`etcd_root`) obtains; `/health` stays open.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import requests

#: etcd's superuser; Patroni and the harness use it (one local cluster, one tenant).
ROOT_USER = "root"
NOT_ENABLED = "authentication is not enabled"


async def _call(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json=body) as resp:
        answer: dict[str, Any] = await resp.json(content_type=None)
        return answer


async def enable_auth(port: int, password: str) -> bool:
    """Turn authentication on (root user, root role) unless it is; True when this call did.

    Idempotent, also after a start that died between the steps.

    Raises:
        RuntimeError: etcd refused a step (its error in the message).
    """
    base = f"http://127.0.0.1:{port}/v3/auth"
    creds = {"name": ROOT_USER, "password": password}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        answer = await _call(http, f"{base}/authenticate", creds)
        if "token" in answer:
            return False
        if NOT_ENABLED not in str(answer.get("error", "")):
            raise RuntimeError(f"etcd authentication: {answer}")
        added = await _call(http, f"{base}/user/add", creds)
        if "error" in added and "already exists" not in added["error"]:
            raise RuntimeError(f"etcd user add: {added}")
        for step, body in (
            ("user/grant", {"user": ROOT_USER, "role": "root"}),
            ("enable", {}),
        ):
            answer = await _call(http, f"{base}/{step}", body)
            if "error" in answer:
                raise RuntimeError(f"etcd {step}: {answer}")
    return True


def token(port: int, password: str) -> str:
    """A token for etcd's gateway (`Authorization: <token>`), for the harness's own calls."""
    resp = requests.post(
        f"http://127.0.0.1:{port}/v3/auth/authenticate",
        json={"name": ROOT_USER, "password": password},
        timeout=5,
    )
    resp.raise_for_status()
    return str(resp.json()["token"])
