"""`/v1/sync`'s cursor never passes an event that can still commit below it.

Event ids come from a sequence inside concurrent transactions, so they commit out of order. The
outside review found two ways past the old rule ("settled" = created more than 2 s ago, with
`created_at` the transaction's start): a transaction that began long before taking its id, and
(after that was fixed) a transaction that holds its id longer than the settle window before it
commits (a lock, a slow synchronous standby). Both are driven here by hand on the primary.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

from env.local import LocalEnvironment
from tests.helpers import wait_healthy
from tests.phone import Phone

pytestmark = pytest.mark.env

INSERT = (
    "INSERT INTO events (device_id, request_id, type, payload)"
    " VALUES (%s, %s, 'completed', '{\"status\": \"completed\"}') RETURNING event_id"
)
#: Longer than the API's settle window (2 s): the time is the fault itself, not a wait for it.
PAST_SETTLE_S = 2.5


async def sync(phone: Phone, since: str) -> dict[str, Any]:
    async with phone.session.get(
        f"{phone.base}/v1/sync", params={"since": since}, headers=phone.auth
    ) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


def run_case(status: dict[str, Any], early_start: bool) -> tuple[int, list[int]]:
    """Event `n` by a transaction B that commits late; `n + 1` by A, committed first. Returns
    n and every event id a phone syncing by cursor saw, before and after B's commit."""
    url = status["urls"]["write"]

    async def flow() -> tuple[int, list[int]]:
        async with Phone(status) as phone:
            await phone.register()
            device = phone.device["device_id"]
            with psycopg.connect(url) as a, psycopg.connect(url) as b:
                if early_start:
                    a.execute("SELECT txid_current()")  # A began (and holds an id) long ago
                    time.sleep(PAST_SETTLE_S)
                (n,) = b.execute(INSERT, (device, uuid.uuid4())).fetchone()  # type: ignore[misc]
                if not early_start:
                    time.sleep(PAST_SETTLE_S)  # B holds its id past the settle window
                (m,) = a.execute(INSERT, (device, uuid.uuid4())).fetchone()  # type: ignore[misc]
                assert m > n
                a.commit()
                if not early_start:
                    time.sleep(PAST_SETTLE_S)  # A's event is old enough by the clock alone
                first = await sync(phone, "0")
                b.commit()
            seen = [e["event_id"] for e in first["events"]]
            deadline = time.monotonic() + 30
            cursor = first["next_cursor"]
            while n not in seen or m not in seen:
                assert time.monotonic() < deadline, (n, m, seen, cursor)
                page = await sync(phone, cursor)
                seen += [e["event_id"] for e in page["events"] if e["event_id"] not in seen]
                cursor = page["next_cursor"]
                await asyncio.sleep(0.5)
            assert int(cursor) <= m
            return n, seen

    return asyncio.run(flow())


def test_a_transaction_that_began_long_before_its_insert_does_not_hide_a_smaller_id(
    local_env: LocalEnvironment,
):
    n, seen = run_case(wait_healthy(local_env), early_start=True)
    assert n in seen


def test_an_id_held_past_the_settle_window_is_still_delivered(local_env: LocalEnvironment):
    n, seen = run_case(wait_healthy(local_env), early_start=False)
    assert n in seen
