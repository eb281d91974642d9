"""Planted faults can be armed only where the settings allow them, and plant exactly what was
armed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from reference_impl.errors import error_middleware
from reference_impl.observability import install
from reference_impl.planted import PlantedFaults
from reference_impl.settings import ServiceSettings


def with_client(enabled: bool, body: Callable[[TestClient], Awaitable[Any]]) -> Any:
    settings = ServiceSettings(
        role="llm", name="llm", port=1, state_dir=Path("/nonexistent"), planted_faults=enabled
    )

    async def go() -> Any:
        app = web.Application(middlewares=[error_middleware])
        install(app, settings)
        async with TestClient(TestServer(app)) as client:
            return await body(client)

    return asyncio.run(go())


def test_refused_unless_the_environment_enables_them():
    async def body(client: TestClient) -> tuple[int, int, dict]:
        get = await client.get("/admin/planted")
        post = await client.post("/admin/planted", json={"lose_acks": 3})
        return get.status, post.status, await post.json()

    get_status, post_status, reason = with_client(False, body)
    assert (get_status, post_status) == (403, 403)
    assert "CW_PLANTED_FAULTS" in reason["detail"]


def test_arming_adds_and_bad_values_are_422_with_the_field():
    async def body(client: TestClient) -> tuple[dict, int, dict]:
        await client.post("/admin/planted", json={"lose_acks": 2})
        armed = await (await client.post("/admin/planted", json={"lose_acks": 1})).json()
        bad = await client.post("/admin/planted", json={"lose_acks": -1})
        return armed, bad.status, await bad.json()

    armed, bad_status, reason = with_client(True, body)
    assert armed["armed"]["lose_acks"] == 3
    assert bad_status == 422
    assert reason["detail"]["field"] == "lose_acks"


def test_take_plants_exactly_the_armed_count_and_records_what():
    planted = PlantedFaults(enabled=True)
    planted.update({"duplicate_keys": 2})
    taken = [planted.take("duplicate_keys", f"k{i}") for i in range(5)]
    assert taken == [True, True, False, False, False]
    assert planted.planted["duplicate_keys"] == ["k0", "k1"]
    assert not PlantedFaults(enabled=False).take("duplicate_keys", "k")


def test_a_wedged_loop_does_not_pass_its_wedge_point_until_unwedged():
    planted = PlantedFaults(enabled=True, wedge_loop="claim")

    async def go() -> tuple[bool, bool]:
        task = asyncio.create_task(planted.wedge_point("claim0"))
        done, _ = await asyncio.wait([task], timeout=1.2)
        wedged = not done
        planted.update({"reset": True})
        await asyncio.wait_for(task, 2)
        return wedged, task.done()

    assert asyncio.run(go()) == (True, True)


def test_disarm_stops_planting_and_keeps_the_record():
    planted = PlantedFaults(enabled=True)
    planted.update({"lose_acks": 3})
    assert planted.take("lose_acks", "r1")
    planted.update({"disarm": True})
    assert not planted.take("lose_acks", "r2")
    assert planted.planted["lose_acks"] == ["r1"]
    assert planted.armed["lose_acks"] == 0
