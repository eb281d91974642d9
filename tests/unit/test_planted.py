"""Planted faults can be armed only where the settings allow them, and plant exactly what was
armed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from reference_impl.errors import ApiError, error_middleware
from reference_impl.observability import install
from reference_impl.planted import LEAK_CAP_MB, PlantedFaults
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


def rss_mb() -> float:
    """This process's resident memory (MB), as the kernel counts it for a memory limit."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_planted_leak_grows_at_its_rate_up_to_its_cap_and_reset_frees_it():
    planted = PlantedFaults(enabled=True)
    assert planted.leak_step(1.0) == 0  # not armed: nothing held
    planted.update({"leak_mb_per_s": 64})
    before = rss_mb()
    assert planted.leak_step(1.0) == 64
    # Resident, not merely reserved: the pages were written.
    assert rss_mb() - before >= 60
    assert planted._hoard[0][:2] == b"\xa5\xa5"
    assert "_hoard" not in planted.view()
    assert planted.view()["leaked_mb"] == 64
    planted.leaked_mb = LEAK_CAP_MB - 1  # near the cap: only what is left under it
    assert planted.leak_step(1.0) == 1
    assert planted.leak_step(1.0) == 0
    held = rss_mb()
    planted.update({"reset": True})
    assert (planted.leak_mb_per_s, planted.leaked_mb, planted._hoard) == (0, 0, [])
    assert held - rss_mb() >= 60  # given back to the system, not kept by the allocator
    assert PlantedFaults(enabled=False, leak_mb_per_s=8).leak_step(1.0) == 0


def test_disarm_stops_the_leak_and_keeps_what_it_holds_and_reset_takes_no_other_field():
    planted = PlantedFaults(enabled=True)
    planted.update({"leak_mb_per_s": 8})
    assert planted.leak_step(1.0) == 8
    planted.update({"disarm": True})
    assert planted.leak_step(1.0) == 0
    assert planted.leaked_mb == 8
    with pytest.raises(ApiError) as refused:
        planted.update({"reset": True, "leak_mb_per_s": 9})
    assert refused.value.status == 422
    assert planted.leaked_mb == 8  # nothing of a refused body was applied


def test_a_leak_rate_out_of_bounds_is_422_and_a_served_leak_grows():
    async def body(client: TestClient) -> tuple[int, dict, dict]:
        bad = await client.post("/admin/planted", json={"leak_mb_per_s": 100_000})
        await client.post("/admin/planted", json={"leak_mb_per_s": 20})

        async def grown() -> dict:
            while (view := await (await client.get("/admin/planted")).json())["leaked_mb"] < 2:
                await asyncio.sleep(0.05)
            return view

        return bad.status, await bad.json(), await asyncio.wait_for(grown(), 5)

    status, reason, view = with_client(True, body)
    assert status == 422
    assert reason["detail"]["field"] == "leak_mb_per_s"
    assert view["leak_mb_per_s"] == 20
    assert 2 <= view["leaked_mb"] <= LEAK_CAP_MB


def test_a_planting_given_back_is_off_the_record_and_armed_again() -> None:
    planted = PlantedFaults(enabled=True)
    planted.update({"swallow_notifications": 1})
    epoch = planted.epoch
    assert planted.take("swallow_notifications", "r1")
    assert not planted.take("swallow_notifications", "r2")  # armed once only
    planted.give_back("swallow_notifications", "r1", epoch)
    assert planted.planted["swallow_notifications"] == []
    assert planted.armed["swallow_notifications"] == 1
    assert planted.take("swallow_notifications", "r2")
    assert planted.planted["swallow_notifications"] == ["r2"]


def test_a_give_back_after_a_disarm_or_a_reset_arms_nothing() -> None:
    """A completion in flight across a disarm comes off the record but must not arm the fault
    again; one in flight across a reset finds the record cleared and touches nothing."""
    planted = PlantedFaults(enabled=True)
    planted.update({"swallow_notifications": 2})
    epoch = planted.epoch
    assert planted.take("swallow_notifications", "r1")
    assert planted.take("swallow_notifications", "r2")
    planted.update({"disarm": True})
    planted.give_back("swallow_notifications", "r1", epoch)
    assert planted.planted["swallow_notifications"] == ["r2"]
    assert planted.armed["swallow_notifications"] == 0
    planted.update({"reset": True})
    planted.give_back("swallow_notifications", "r2", epoch)
    assert planted.planted["swallow_notifications"] == []
    assert planted.armed["swallow_notifications"] == 0


def test_a_give_back_from_before_a_reset_leaves_a_later_take_of_the_same_id() -> None:
    """Attempt 1 of a request takes the fault; a reset and a new arming follow; attempt 2 of the
    same request takes it and really plants it. Attempt 1's give-back must not erase that."""
    planted = PlantedFaults(enabled=True)
    planted.update({"swallow_notifications": 1})
    first = planted.epoch
    assert planted.take("swallow_notifications", "r1")
    planted.update({"reset": True})
    planted.update({"swallow_notifications": 1})
    assert planted.take("swallow_notifications", "r1")
    planted.give_back("swallow_notifications", "r1", first)
    assert planted.planted["swallow_notifications"] == ["r1"]
    assert planted.armed["swallow_notifications"] == 0
