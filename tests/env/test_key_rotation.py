"""Rotating the token signing key under a fleet of phones holding tokens of the old key: no
request fails, new tokens carry the new key's id, and once the old key is retired its tokens are
refused by every API and hub replica."""

from __future__ import annotations

import asyncio
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import jwt
import pytest
import requests

from env.rotation import keyset_path, retire_old_keys, rotate_keys
from slo.ledger import read_jsonl
from tests.helpers import finish_fleet, fleet, poll, served_after, wait_healthy
from tests.phone import Phone

pytestmark = pytest.mark.env


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def acknowledged(reports: Path) -> int:
    return sum(
        op.kind == "submit" and op.outcome == "ok"
        for path in reports.glob("*/fleet/ledger-*.jsonl")
        for op in read_jsonl(path)
    )


async def answers(phone: Phone, times: int) -> list[int]:
    """`times` reads with the phone's token: round robin, so every API replica answers some."""
    codes = []
    for _ in range(times):
        async with phone.session.get(f"{phone.base}/v1/sync", headers=phone.auth) as r:
            codes.append(r.status)
    return codes


def test_rotation_fails_no_request_and_the_retired_key_is_refused(local_env, tmp_path):
    status = wait_healthy(local_env)
    settings = local_env.settings
    jwks_url = status["urls"]["https"] + "/.well-known/jwks.json"

    def jwks() -> set[str]:
        got = requests.get(jwks_url, verify=status["tls_certificate"], timeout=10).json()
        return {k["kid"] for k in got["keys"]}

    phones: list[Phone] = []

    async def holder() -> Phone:
        phone = Phone(status)
        phones.append(await phone.__aenter__())
        return await phone.register()

    loop = asyncio.new_event_loop()
    try:
        old_phone = loop.run_until_complete(holder())
        old_kid = kid(old_phone.token)
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(fleet, status, tmp_path, users=6, duration_s=40)
            # The rotation must hit phones in use, holding tokens of the old key.
            poll(
                lambda: acknowledged(tmp_path) >= 10 or None,
                settings.timeout(60),  # Locust's start is slow on a busy machine
                "10 submits acknowledged",
            )
            rotated = rotate_keys(settings)
            assert rotated["retiring"] == [old_kid]
            # By default the old key lives one token lifetime (and the clock leeway) longer.
            assert rotated["retire_after_s"] == 905
            assert jwks() == {old_kid, rotated["kid"]}
            fresh = loop.run_until_complete(holder())
            assert kid(fresh.token) == rotated["kid"]
            assert set(loop.run_until_complete(answers(old_phone, 6))) == {200}
            # Phones served 10 s past the rotation, then the fleet ends (40 s is its bound).
            finish_fleet(tmp_path, "rotated, and serving", served_after(time.time() + 10))
            code, _, summary = run.result(timeout=300)
        assert code == 0, summary
        failed = {k: v["fail"] for k, v in summary["operations"].items() if v["fail"]}
        assert failed == {}, "requests failed during the rotation"
        assert summary["reconciliation"]["lost"] == 0
        mode = stat.S_IMODE(keyset_path(settings).stat().st_mode)
        assert mode == 0o600

        # Retired (a compromised key, say): its tokens are refused everywhere, at once.
        retire_old_keys(settings)
        assert jwks() == {rotated["kid"]}
        assert set(loop.run_until_complete(answers(old_phone, 6))) == {401}
        assert set(loop.run_until_complete(answers(fresh, 6))) == {200}

        async def hub_refuses() -> int:
            try:
                await old_phone.updates()
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
            return 101

        assert loop.run_until_complete(hub_refuses()) == 401
    finally:
        for phone in phones:
            loop.run_until_complete(phone.__aexit__(None, None, None))
        loop.close()
