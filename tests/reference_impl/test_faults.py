"""The reference implementation under failure: every fault is shown to have happened."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from env.local import LocalEnvironment
from env.process import pid_alive
from experiments.harness import scrape_sum
from tests.helpers import knobs, poll, port_of, query, wait_healthy
from tests.phone import Phone, next_event
from tests.reference_impl.test_flow import run, until_status

pytestmark = [pytest.mark.env, pytest.mark.fault]


def component(status: dict, name: str) -> dict:
    return next(c for c in status["components"] if c["component"] == name)


def metric(env_status: dict, service: str, name: str, /, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, from a service's /metrics."""
    return scrape_sum(port_of(env_status, service), name, **labels)


def claimant(primary: str, request_id: str) -> tuple[str, int]:
    """(worker, attempt) of the claim on a request's job, once a worker has claimed it."""
    rows = poll(
        lambda: query(
            primary,
            "SELECT claimed_by, attempts FROM jobs"
            " WHERE request_id = %s AND claimed_by IS NOT NULL",
            (request_id,),
        ),
        10,
        "job claimed",
    )
    return rows[0][0], rows[0][1]


def kill(env: LocalEnvironment, name: str, hold_s: float = 120) -> int:
    """SIGKILL a service and keep it down until released; returns the dead pid."""
    pid = env.component(name)["pid"]
    env.hold(name, hold_s)
    os.kill(pid, signal.SIGKILL)
    poll(lambda: not pid_alive(pid), 5, f"{name} ({pid}) dead")
    return pid


def test_worker_killed_mid_job_leaves_it_to_another_and_it_completes_once(
    local_env: LocalEnvironment,
):
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            with knobs(status, "llm", latency_ms=4000, latency_dist="fixed"):
                _, accepted = await phone.submit()
                rid = accepted["request_id"]
                victim, _ = claimant(primary, rid)
                kill(local_env, victim)
                try:
                    done = await until_status(phone, rid, {"completed", "dead_lettered"}, 60)
                finally:
                    local_env.release(victim)
            assert done["status"] == "completed"
            rows = query(primary, "SELECT type FROM events WHERE request_id = %s", (rid,))
            assert rows == [("completed",)], "completed exactly once"

    run(flow())
    wait_healthy(local_env)


def test_storage_provider_outage_fails_over_to_the_other(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    network_errors = metric(
        status, "gateway", "cw_storage_calls_total", provider="sharepoint", outcome="network"
    )

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            with knobs(status, "sharepoint", outage=True):
                # Documents no fleet asks for (they use the first 50), so the gateway's cache
                # cannot answer, whatever ran before (a chaos fleet did, in this session).
                ids = [
                    (await phone.submit(document=f"doc-{n:03d}.txt"))[1]["request_id"]
                    for n in (55, 56, 57)
                ]
                for rid in ids:
                    done = await until_status(
                        phone, rid, {"completed", "dead_lettered", "failed"}, 30
                    )
                    assert done["status"] == "completed", done

    run(flow())
    # The outage really happened: the gateway met network errors at SharePoint.
    assert (
        metric(
            status, "gateway", "cw_storage_calls_total", provider="sharepoint", outcome="network"
        )
        >= network_errors + 3
    )


def test_llm_429s_are_retried_and_then_dead_lettered(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            with knobs(status, "llm", rate_429=0.5, retry_after_s=0.1):
                _, flaky = await phone.submit(document="doc-010.txt")
                assert (
                    await until_status(
                        phone, flaky["request_id"], {"completed", "dead_lettered"}, 60
                    )
                )["status"] == "completed", "retries ride out a partial 429 storm"
            with knobs(status, "llm", rate_429=1.0, retry_after_s=0.1):
                _, doomed = await phone.submit(document="doc-011.txt")
                done = await until_status(
                    phone, doomed["request_id"], {"completed", "dead_lettered"}, 90
                )
            assert done["status"] == "dead_lettered"
            rows = query(
                primary,
                "SELECT attempts FROM dead_letters WHERE request_id = %s",
                (doomed["request_id"],),
            )
            assert rows == [(5,)], rows

    run(flow())
    assert metric(status, "llm", "cw_llm_stub_calls_total", status="429") > 0


def test_scheduler_leader_killed_the_other_takes_over_and_fencing_holds(
    local_env: LocalEnvironment,
    record_property,
):
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]
    leader = next(c["component"] for c in status["components"] if c["role"] == "scheduler (leader)")
    (old_token,) = query(primary, "SELECT token FROM leases WHERE name = 'scheduler'")[0]
    killed_at = time.monotonic()
    kill(local_env, leader)
    try:
        new = poll(
            lambda: query(
                primary,
                "SELECT holder, token FROM leases WHERE name ="
                " 'scheduler' AND holder <> %s AND expires_at > now()",
                (leader,),
            ),
            15,
            "another scheduler leads",
        )
        took_over_s = time.monotonic() - killed_at
        record_property("scheduler_takeover_s", round(took_over_s, 2))
        _, token = new[0]
        assert token > old_token, "a takeover must raise the fencing token"
        assert took_over_s < 5 + 2, "lease TTL (5 s) plus one tick and a margin"
        poll(
            lambda: query(primary, "SELECT 1 FROM periodic_runs WHERE token = %s", (token,)),
            5,
            "the new leader runs jobs",
        )
    finally:
        local_env.release(leader)
    # No run twice: each heartbeat run belongs to exactly one holder and token, and tokens
    # only grow with time (a deposed leader never committed after its successor).
    runs = query(
        primary,
        "SELECT holder, token FROM periodic_runs"
        " WHERE job = 'replication_heartbeat' ORDER BY run_id",
    )
    tokens = [t for _, t in runs]
    assert tokens == sorted(tokens)
    assert all(len({h for h, t2 in runs if t2 == t}) == 1 for t in set(tokens))
    wait_healthy(local_env)


def test_hub_killed_phone_reconnects_elsewhere_and_misses_nothing(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            ws = await phone.updates()
            hub = (await ws.receive_json(timeout=5))["server"]
            _, first = await phone.submit()
            seen = await next_event(ws, 20)
            assert seen["request_id"] == first["request_id"]
            kill(local_env, hub)
            try:
                # The socket breaks with its hub.
                msg = await ws.receive(timeout=10)
                assert msg.type.name in ("CLOSE", "CLOSED", "ERROR"), msg
                # Offline: a request goes in while the phone has no socket.
                _, missed = await phone.submit(document="doc-003.txt")
                await until_status(phone, missed["request_id"], {"completed"}, 30)
                # Reconnect (HAProxy redispatches: the cookie's hub is down) and resume.
                deadline = time.monotonic() + 20
                while True:
                    try:
                        ws = await phone.updates(last_event_id=seen["event_id"])
                        hello = await ws.receive_json(timeout=5)
                        break
                    except Exception:
                        assert time.monotonic() < deadline, "no hub took the phone back"
                        await asyncio.sleep(0.5)
                assert hello["server"] != hub
                resumed = await next_event(ws, 10)
                assert resumed["request_id"] == missed["request_id"]
                await ws.close()
            finally:
                local_env.release(hub)

    run(flow())
    wait_healthy(local_env)


def test_killed_api_replica_is_restarted_like_a_pod_and_rejoins_haproxy(
    local_env: LocalEnvironment,
):
    status = wait_healthy(local_env)
    before = local_env.component("api1")
    os.kill(before["pid"], signal.SIGKILL)
    poll(lambda: not pid_alive(before["pid"]), 5, "api1 dead")

    async def flow() -> None:
        # The other replicas keep serving while api1 is down.
        async with Phone(status) as phone:
            await phone.register()
            for _ in range(5):
                code, _ = await phone.submit()
                assert code == 202

    run(flow())
    after = poll(
        lambda: (
            c if (c := local_env.component("api1"))["pid"] not in (None, before["pid"]) else None
        ),
        15,
        "api1 restarted by the supervisor",
    )
    assert after["restarts"] == before["restarts"] + 1
    final = wait_healthy(local_env)
    assert component(final, "api1")["in_load_balancer"]


def test_rate_limit_answers_429_with_retry_after(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> list[tuple[int, str | None]]:
        async with Phone(status) as phone:
            await phone.register()
            url = f"{phone.base}/v1/sync"

            async def one() -> tuple[int, str | None]:
                async with phone.session.get(url, headers=phone.auth) as r:
                    return r.status, r.headers.get("Retry-After")

            return list(await asyncio.gather(*(one() for _ in range(60))))

    answers = run(flow())
    limited = [a for a in answers if a[0] == 429]
    assert limited, "60 calls in well under a second must exceed 20 per second"
    assert all(retry == "1" for _, retry in limited)
    assert all(code in (200, 429) for code, _ in answers)


def test_worker_drains_its_job_on_sigterm(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            with knobs(status, "llm", latency_ms=3000, latency_dist="fixed"):
                _, accepted = await phone.submit()
                rid = accepted["request_id"]
                worker, attempts = claimant(primary, rid)
                pid = local_env.component(worker)["pid"]
                local_env.hold(worker, 120)
                try:
                    os.kill(pid, signal.SIGTERM)
                    done = await until_status(phone, rid, {"completed", "dead_lettered"}, 30)
                    # It finished the job it had, on its first claim, then exited.
                    assert done["status"] == "completed"
                    poll(lambda: not pid_alive(pid), 30, f"{worker} exited after draining")
                finally:
                    local_env.release(worker)
            assert attempts == 1
            assert query(primary, "SELECT count(*) FROM events WHERE request_id = %s", (rid,)) == [
                (1,)
            ]

    run(flow())
    wait_healthy(local_env)


def test_hub_shutdown_closes_sockets_with_going_away(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            ws = await phone.updates()
            hub = (await ws.receive_json(timeout=5))["server"]
            pid = local_env.component(hub)["pid"]
            local_env.hold(hub, 60)
            try:
                os.kill(pid, signal.SIGTERM)
                msg = await ws.receive(timeout=15)
                assert msg.type.name == "CLOSE", msg
                assert msg.data == 1001, "going away: reconnect elsewhere"
                poll(lambda: not pid_alive(pid), 30, f"{hub} exited")
            finally:
                local_env.release(hub)

    run(flow())
    wait_healthy(local_env)
