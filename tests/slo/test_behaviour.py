"""The SLOs of retention, periodic jobs, Redis TTLs and the WebSocket heartbeat read what the
system did (ages of the oldest rows, each job's last run, TTLs on real keys, pings really sent),
not the settings the services declare: they pass on a healthy environment, and fail when the
behaviour breaks while the settings stay what they were."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from env.local import LocalEnvironment
from experiments.harness import scrape_sum
from slo.sources import Window
from tests.helpers import gate, poll, port_of, query, wait_healthy
from tests.phone import Phone
from tests.reference_impl.test_flow import until_status
from tests.reference_impl.test_scheduler import fired, trigger

pytestmark = pytest.mark.env

BEHAVIOURAL = (
    "archive-after",
    "dead-letter-retention",
    "events-retention",
    "run-log-retention",
    "backup-freshness",
    "backup-retention",
    "periodic-jobs-succeed",
    "periodic-jobs-on-time",
    "redis-request-ttl:bounded",
    "redis-request-ttl:close",
    "redis-response-ttl:bounded",
    "redis-response-ttl:close",
    "redis-keys-expire",
    "websocket-heartbeat",
)


def scraped_since(status: dict[str, Any], t: float) -> bool:
    """Prometheus holds a scrape of every scheduler taken after `t` (epoch seconds)."""
    r = requests.get(
        f"{status['urls']['prometheus']}/api/v1/query",
        params={"query": 'min(timestamp(up{job="services",role="scheduler"}))'},
        timeout=5,
    )
    result = r.json()["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) > t


def leader(status: dict[str, Any]) -> str | None:
    """The scheduler that leads now, from its own metric."""
    for c in status["components"]:
        port = port_of(status, c["component"]) if c["kind"] == "scheduler" else None
        if port and scrape_sum(port, "cw_scheduler_leader") == 1:
            return str(c["component"])
    return None


async def sampled(status: dict[str, Any], prefixes: set[str], timeout_s: float) -> bool:
    """Whether the leading scheduler sampled keys of every prefix within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        holder = leader(status)
        if holder and all(
            scrape_sum(port_of(status, holder), "cw_redis_ttl_keys_sampled", prefix=p) > 0
            for p in prefixes
        ):
            return True
        await asyncio.sleep(0.5)
    return False


def hub_heartbeats(status: dict[str, Any]) -> float:
    hubs = [c["component"] for c in status["components"] if c["kind"] == "hub"]
    return sum(
        scrape_sum(port_of(status, h), "cw_ws_heartbeat_interval_seconds_count") for h in hubs
    )


def prometheus_heartbeats(status: dict[str, Any], since: float) -> float:
    """The heartbeats Prometheus counts from `since` (epoch seconds) to now: the query of the
    websocket-heartbeat SLO's total, over that window."""
    window = max(1, int(time.time() - since))  # as the gate rounds: inside the window
    try:
        r = requests.get(
            f"{status['urls']['prometheus']}/api/v1/query",
            params={"query": f"sum(increase(cw_ws_heartbeat_interval_seconds_count[{window}s]))"},
            timeout=5,
        )
        r.raise_for_status()
        result = r.json()["data"]["result"]
    except (requests.RequestException, ValueError, KeyError):
        return 0.0  # asked again by the caller's bounded poll
    return float(result[0]["value"][1]) if result else 0.0


def test_behavioural_slos_pass_on_a_healthy_environment(local_env: LocalEnvironment, tmp_path):
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]
    started = time.time()
    beats = hub_heartbeats(status)
    letter = uuid.uuid4()  # a dead letter a day old: the retention SLO measures its age
    query(
        primary,
        "INSERT INTO dead_letters (request_id, device_id, attempts, last_error, dead_at)"
        " VALUES (%s, %s, 5, 'test', now() - interval '1 day')",
        (letter, uuid.uuid4()),
    )

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            ws = await phone.updates()  # held open: the hub's heartbeat on it is measured

            async def read() -> None:  # reading is what answers the hub's pings
                while not ws.closed:
                    await ws.receive()

            reader = asyncio.create_task(read())
            # Completed requests: the response cached by the worker (resp:), the request by the
            # read that finds it final (req:). The cache is best effort (a write that misses
            # its deadline on a loaded machine is skipped): until the leader has sampled both.
            for _ in range(5):
                _, accepted = await phone.submit()
                await until_status(phone, accepted["request_id"], {"completed"}, 60)
                if await sampled(status, {"req", "resp"}, 15):
                    break
            else:
                pytest.fail("no req:/resp: key sampled after 5 completed requests")
            # Until Prometheus itself holds a heartbeat inside the window, as the SLO will ask
            # for it. The hubs' own counters are not enough: another socket's beat just after
            # the window opened moved them, the gate 11 s later found no increase between two
            # scrapes inside the window, and said "no events" (CI). This socket's first beat
            # comes heartbeat_s after it connected, well inside the window.
            deadline = time.monotonic() + 90
            while prometheus_heartbeats(status, started) <= 0:
                assert time.monotonic() < deadline, "no heartbeat in Prometheus within 90 s"
                await asyncio.sleep(1.0)
            assert hub_heartbeats(status) > beats
            assert not ws.closed, "the phone answered the pings: its socket stays"
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    try:
        asyncio.run(flow())
        now = time.time()
        poll(lambda: scraped_since(status, now + 6), 30, "the scheduler's next sample scraped")
        verdicts = gate(status, Window(started, time.time()), tmp_path, *BEHAVIOURAL)
    finally:
        query(primary, "DELETE FROM dead_letters WHERE request_id = %s", (letter,))
    bad = {n: verdicts[n]["reason"] for n in BEHAVIOURAL if verdicts[n]["status"] != "pass"}
    assert not bad, bad
    assert verdicts["exit_code"] == 0
    # What they measured is behaviour: a TTL seen on a key, not the 300 s setting itself.
    # Idle time counts whole seconds: the estimate of a 300 s TTL may exceed it by a second.
    assert 240 < verdicts["redis-request-ttl:close"]["measured"] <= 302
    assert 86400 < verdicts["dead-letter-retention"]["measured"] < 86400 + 600


def _until_measured_healthy(status: dict[str, Any], out: Path) -> None:
    """Restore what the next tests measure, not only the rows: until the leader has sampled
    again and the purge has run since, the 15-day-old letter and the failed purge stay in the
    gauges, and a gate run right after (a load run's) would fail on them."""
    cleared = time.time()

    def healthy() -> bool:
        end = time.time()
        if end - 12 < cleared:
            return False
        names = ("dead-letter-retention", "periodic-jobs-succeed")
        verdicts = gate(status, Window(end - 12, end), out / f"{end:.0f}", *names)
        return all(verdicts[n]["status"] == "pass" for n in names)

    poll(healthy, 120, "the retention and job SLOs measured healthy again", 2)


def test_a_job_failing_every_run_and_an_old_dead_letter_fail_their_slos(
    local_env: LocalEnvironment, tmp_path
):
    """The purge cannot remove a 15-day-old dead letter: it fails every run, and nothing but
    the behaviour changed (every service still declares a 14-day retention)."""
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]
    letter = uuid.uuid4()
    runs: list[dict[str, Any]] = []

    def verdict(name: str, window_s: float = 12) -> dict[str, Any] | None:
        """The verdict over the last `window_s` seconds when it is a failure."""
        out = tmp_path / f"{name}-{len(runs)}"
        end = time.time()
        runs.append(gate(status, Window(end - window_s, end), out, name))
        v = runs[-1][name]
        return v if v["status"] == "fail" else None

    try:
        with trigger(
            primary, "dead_letters", "DELETE", "RAISE EXCEPTION 'cwh test: purge refused';"
        ) as seq:
            # Only now: a purge between the insert and the trigger would remove it.
            query(
                primary,
                "INSERT INTO dead_letters (request_id, device_id, attempts, last_error, dead_at)"
                " VALUES (%s, %s, 5, 'test', now() - interval '15 days')",
                (letter, uuid.uuid4()),
            )
            poll(lambda: fired(primary, seq) >= 1, 60, "the purge to run into the refusal")
            try:
                dead = poll(lambda: verdict("dead-letter-retention"), 30, "the SLO to fail", 1)
                failing = poll(lambda: verdict("periodic-jobs-succeed"), 45, "the SLO to fail", 1)
            except TimeoutError:
                pytest.fail(f"still not failing: {runs[-1] if runs else None}")
            assert fired(primary, seq) >= 1
            end = time.time()
            every = gate(status, Window(end - 12, end), tmp_path / "all", *BEHAVIOURAL)
    finally:
        query(primary, "DELETE FROM dead_letters WHERE request_id = %s", (letter,))
        _until_measured_healthy(status, tmp_path / "after")
    assert dead["measured"] > 15 * 86400 - 60
    assert failing["measured"] == 0
    assert every["exit_code"] == 1
    others = {
        n: every[n]["reason"]
        for n in BEHAVIOURAL
        if n not in ("dead-letter-retention", "periodic-jobs-succeed")
        and every[n]["status"] == "fail"
    }
    assert not others, f"only the broken behaviour fails: {others}"
