"""Scaling a running environment: replicas join the load balancer once ready and leave it
drained, under a fleet that sees no failure; the disruption budget stops a removal; bad requests
get a JSON reason; and the autoscaler, switched on, scales the workers on a backlog."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from env import probes
from env.layout import Layout
from env.local import LocalEnvironment
from experiments.harness import scrape_sum
from tests.helpers import (
    finish_fleet,
    fleet_in_background,
    knobs,
    poll,
    served_after,
    wait_healthy,
)
from tests.phone import Phone

pytestmark = pytest.mark.env


def api_sessions(layout: Layout) -> dict[str, int]:
    """HAProxy's total sessions per API server (and the backend's)."""
    rows = asyncio.run(probes.haproxy_stat(layout))
    return {r["svname"]: int(r["stot"] or 0) for r in rows if r["pxname"] == "api"}


def routed(layout: Layout, backend: str) -> set[str]:
    return set(probes.haproxy_servers_up(asyncio.run(probes.haproxy_stat(layout)), backend))


def test_api_scales_out_and_in_under_a_fleet_without_a_failed_request(
    local_env: LocalEnvironment, tmp_path: Path
):
    status = wait_healthy(local_env)
    layout = Layout(Path(status["run_dir"]))
    started = api_sessions(layout)["BACKEND"]
    try:
        with fleet_in_background(status, tmp_path, users=10, duration_s=70) as running:
            poll(lambda: api_sessions(layout)["BACKEND"] > started + 50, 60, "the fleet under way")
            out = local_env.scale("api", 5)
            assert (out["before"], out["after"], out["added"]) == (3, 5, ["api4", "api5"]), out
            # Routed to once the call returns, and serving the fleet.
            assert {"api4", "api5"} <= routed(layout, "api")
            poll(
                lambda: min(api_sessions(layout)[n] for n in ("api4", "api5")) > 5,
                30,
                "the new replicas serving requests",
            )
            targets = json.loads((layout.prometheus_targets / "api.json").read_text())
            assert len(targets[0]["targets"]) == 5
            pids = {c["name"]: c["pid"] for c in local_env.supervisor_status()["components"]}
            out = local_env.scale("api", 3)
            assert (out["after"], out["removed"], out["refused"]) == (3, ["api5", "api4"], ""), out
            assert not routed(layout, "api") & {"api4", "api5"}
            assert not psutil.pid_exists(pids["api4"])
            assert not psutil.pid_exists(pids["api5"])
            names = {c["name"] for c in local_env.supervisor_status()["components"]}
            assert not names & {"api4", "api5"}
            # Phones served on three replicas again, then the fleet ends (70 s is its bound).
            finish_fleet(tmp_path, "scaled in and serving", served_after(time.time() + 10))
    finally:
        local_env.scale("api", 3)  # whatever happened above
    code, _, summary = running.result()
    assert code == 0, summary
    ops = summary["operations"]
    # Zero downtime: nothing failed and nothing was left unknown, through both changes.
    for kind in ("submit", "read", "sync"):
        assert ops[kind]["ok"] > 0, (kind, ops[kind])
        assert ops[kind].get("fail", 0) == 0, (kind, ops[kind])
        assert ops[kind].get("info", 0) == 0, (kind, ops[kind])
    assert summary["reconciliation"]["valid"], summary["reconciliation"]
    wait_healthy(local_env)


def test_the_disruption_budget_stops_a_removal(local_env: LocalEnvironment):
    wait_healthy(local_env)
    hubs = local_env.scale("hub", 1)  # two hubs, a budget of two: none may go
    assert (hubs["after"], hubs["removed"]) == (2, [])
    assert "disruption budget: hub keeps 2 available (2 are)" in hubs["refused"]
    workers = local_env.scale("worker", 1)  # three workers, a budget of two: one may go
    assert (workers["after"], workers["removed"]) == (2, ["worker3"])
    assert "disruption budget" in workers["refused"]
    again = local_env.scale("worker", 3)
    assert (again["after"], again["added"]) == (3, ["worker3"])
    wait_healthy(local_env)


@pytest.mark.parametrize(
    ("workload", "replicas", "detail"),
    [
        ("api", 0, "api: 0 replicas asked, it has 10 slots"),
        ("api", 11, "api: 11 replicas asked, it has 10 slots"),
        ("pg", 2, "pg is not a scalable workload"),
        ("api", "three", '"replicas" must be an integer'),
    ],
)
def test_a_bad_scale_request_gets_a_json_reason(local_env, workload, replicas, detail):
    wait_healthy(local_env)
    with pytest.raises(RuntimeError) as info:
        local_env.scale(workload, replicas)
    found = re.search(r": (\d{3}) (\{.*\})$", str(info.value))
    assert found, info.value
    assert found[1] in ("400", "404")
    assert json.loads(found[2])["detail"] == detail


def test_the_autoscaler_adds_workers_for_a_backlog(local_env: LocalEnvironment):
    """A slow LLM and a burst of submits: the queue depth passes 8 per worker for longer than
    the 30 s scale-up window, and the workers' HPA adds replicas (doubling per sync at most)."""
    status = wait_healthy(local_env)

    async def burst() -> int:
        async def one_phone() -> int:
            async with Phone(status) as phone:
                await phone.register()
                accepted = 0
                for _ in range(40):  # paced under the per-phone rate limit
                    tick = time.monotonic()
                    code, _ = await phone.submit()
                    accepted += code == 202
                    await asyncio.sleep(max(0.0, tick + 0.1 - time.monotonic()))
                return accepted

        return sum(await asyncio.gather(*(one_phone() for _ in range(4))))

    def workers() -> int:
        view = local_env.workloads()
        return len(next(w for w in view["workloads"] if w["name"] == "worker")["replicas"])

    def queue_depth() -> float:
        return scrape_sum(local_env.component("worker1")["ports"]["http"], "cw_queue_depth")

    assert workers() == 3
    with knobs(status, "llm", latency_ms=5000, latency_dist="fixed"):
        local_env.autoscale(True)
        try:
            assert asyncio.run(burst()) == 160

            def scaled() -> dict[str, Any] | None:
                hpa = local_env.workloads()["autoscaler"]["worker"]
                done = hpa["last_scale"]
                return hpa if done and done["after"] > 3 else None

            hpa = poll(scaled, 120, "workers added by the HPA (and ready)", 1.0)
            assert workers() >= hpa["last_scale"]["after"]
            # The policy: at most +100 % or +4 per 15 s from 3, whichever adds more.
            assert hpa["last_scale"]["after"] <= 7, hpa
        finally:
            local_env.autoscale(False)
    # The backlog drains (the LLM is fast again) before the next test.
    poll(lambda: queue_depth() == 0, 180, "the backlog drained", 1.0)
    local_env.scale("worker", 3)
    wait_healthy(local_env)


def test_a_rolling_update_of_the_api_under_a_fleet_fails_nothing(
    local_env: LocalEnvironment, tmp_path: Path
):
    """The seed's zero-downtime rolling update: every API replica replaced, one by one, while
    phones submit, read and sync; no request fails, every submit exactly once."""
    status = wait_healthy(local_env)
    layout = Layout(Path(status["run_dir"]))
    before = {c["name"]: c["pid"] for c in local_env.supervisor_status()["components"]}
    started = api_sessions(layout)["BACKEND"]
    with fleet_in_background(status, tmp_path, users=10, duration_s=90) as running:
        poll(lambda: api_sessions(layout)["BACKEND"] > started + 50, 60, "the fleet under way")
        out = local_env.rollout("api")
        # Phones served by the new replicas, then the fleet ends (90 s is its bound).
        finish_fleet(tmp_path, "rolled out and serving", served_after(time.time() + 10))
    assert out["refused"] == "", out
    assert out["removed"] == out["added"] == ["api1", "api2", "api3"], out
    assert out["after"] == 3
    # The same names (as a StatefulSet's), new processes, all of them routed to.
    now = {c["name"]: c["pid"] for c in local_env.supervisor_status()["components"]}
    api_now = {n: p for n, p in now.items() if n.startswith("api")}
    assert set(api_now) == {"api1", "api2", "api3"}
    assert all(api_now[n] != before[n] for n in api_now)
    assert routed(layout, "api") == set(api_now)
    code, _, summary = running.result()
    assert code == 0, summary
    ops = summary["operations"]
    for kind in ("submit", "read", "sync"):
        assert ops[kind]["ok"] > 0, (kind, ops[kind])
        assert ops[kind].get("fail", 0) == 0, (kind, ops[kind])
        assert ops[kind].get("info", 0) == 0, (kind, ops[kind])
    rec = summary["reconciliation"]
    assert (rec["lost"], rec["duplicated"]) == (0, 0), rec
    assert rec["valid"], rec
    wait_healthy(local_env)
