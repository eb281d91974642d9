"""The reference system when a dependency is gone or exhausted: it keeps answering, within
deadlines, and what cannot work any more is restarted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest
import redis.exceptions
import requests

from env import probes
from env.layout import Layout
from env.local import LocalEnvironment
from env.probes import redis_call
from env.process import pid_alive
from tests.helpers import (
    fleet,
    poll,
    port_of,
    query,
    redis_credentials,
    toxic,
    wait_healthy,
)
from tests.phone import Phone
from tests.reference_impl.test_flow import run, until_status

pytestmark = [pytest.mark.env, pytest.mark.fault]


def test_with_every_redis_node_down_the_api_answers_and_jobs_complete(
    local_env: LocalEnvironment, tmp_path: Path
):
    """The README promises an API that works uncached and unlimited without Redis. All six
    nodes are held down under a small fleet: every submit, read and sync must still be answered
    (no 5xx), and the workers must still complete the jobs."""
    status = wait_healthy(local_env)
    nodes = [c["component"] for c in status["components"] if c["kind"] == "redis"]
    assert len(nodes) == 6, nodes
    ports = local_env.settings.ports
    pids = {n: local_env.component(n)["pid"] for n in nodes}
    try:
        for name, pid in pids.items():
            local_env.hold(name, 300)
            os.kill(pid, signal.SIGKILL)
        poll(lambda: not any(pid_alive(p) for p in pids.values()), 10, "every Redis node dead")
        creds = redis_credentials(status)

        def none_answers() -> bool | None:
            for n in range(6):
                try:
                    asyncio.run(redis_call(ports.redis(n), "PING", creds=creds))
                    return None
                except (OSError, redis.exceptions.RedisError):
                    continue
            return True

        poll(none_answers, 10, "no Redis node answers")
        code, _, summary = fleet(status, tmp_path, users=6, duration_s=25)
        ops = summary["operations"]
        for kind in ("submit", "read", "sync"):
            assert ops.get(kind, {}).get("fail", 0) == 0, (kind, ops)
            # A 5xx or no answer is `info`, not `fail`: none of those either.
            assert ops.get(kind, {}).get("info", 0) == 0, (kind, ops)
        assert ops["submit"]["ok"] > 10, ops
        rec = summary["reconciliation"]
        assert rec["lost"] == 0, rec
        # The workers kept working: every acknowledged request completed, Redis or not.
        assert rec["completed"] == rec["acknowledged"], rec
        # Redis really stayed down for the whole run.
        assert all(not pid_alive(p) for p in pids.values())
        assert code == 0 or rec["valid"], summary
    finally:
        for name in nodes:
            local_env.release(name)
    wait_healthy(local_env, timeout_s=120)


def test_an_exhausted_database_pool_answers_503_with_retry_after_instead_of_waiting(
    local_env: LocalEnvironment,
):
    """Every database wait has a deadline: with PostgreSQL slowed down (a latency toxic on the
    write path) and more concurrent submits than the API replica's pool holds, the ones that
    cannot get a connection soon answer 503 with Retry-After, and none waits without bound."""
    status = wait_healthy(local_env)
    api = f"http://127.0.0.1:{port_of(status, 'api1')}"

    async def flow() -> list[tuple[int, str | None, float]]:
        # Several devices, each under its rate limit (20/s): the pool is the only limit here.
        auths = []
        for _ in range(6):
            async with Phone(status) as phone:
                await phone.register()
                auths.append(phone.auth)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:

            async def one(n: int) -> tuple[int, str | None, float]:
                started = time.monotonic()
                async with s.post(
                    f"{api}/v1/requests",
                    headers={**auths[n % 6], "Idempotency-Key": f"pool-{n}-{time.time_ns()}"},
                    json={"provider": "gdrive", "document": "doc-002.txt", "instruction": "x"},
                ) as r:
                    await r.read()
                    return r.status, r.headers.get("Retry-After"), time.monotonic() - started

            with toxic(status, "postgres-write", "latency", latency=1500, jitter=0):
                return await asyncio.gather(*(one(n) for n in range(60)))

    results = run(flow())
    codes = sorted({c for c, _, _ in results})
    assert set(codes) <= {202, 503}, codes
    refused = [(c, ra, t) for c, ra, t in results if c == 503]
    assert refused, "no submit was refused: the pool was never exhausted"
    assert all(ra is not None for _, ra, _ in refused), refused
    # Refused within the acquire deadline (plus this machine's noise), not after the queue.
    assert max(t for _, _, t in refused) < 8, refused


def test_a_wedged_loop_fails_liveness_and_the_supervisor_restarts_the_service(
    local_env: LocalEnvironment,
):
    """A worker whose claim loops stop making progress (while its HTTP server still answers)
    fails `/health/live`; the supervisor, as a Kubernetes liveness probe would, restarts it."""
    wait_healthy(local_env)
    victim = "worker3"
    before = local_env.component(victim)
    port = before["ports"]["http"]
    r = requests.post(
        f"http://127.0.0.1:{port}/admin/planted", json={"wedge_loop": "claim"}, timeout=5
    )
    assert r.status_code == 200, r.text

    def not_live() -> dict | None:
        try:
            resp = requests.get(f"http://127.0.0.1:{port}/health/live", timeout=2)
        except requests.RequestException:
            return None
        return resp.json() if resp.status_code == 503 else None

    # The fault took: the process answers, but says its claim loops are stale.
    stale = poll(not_live, 60, f"{victim} reporting stale loops", interval_s=1)
    assert any(k.startswith("claim") for k in stale["stale_loops_s"]), stale
    after = poll(
        lambda: (
            c if (c := local_env.component(victim))["pid"] not in (None, before["pid"]) else None
        ),
        60,
        f"{victim} restarted after failing liveness",
        interval_s=1,
    )
    assert after["restarts"] > before["restarts"]
    assert "liveness" in (after.get("last_restart_reason") or ""), after
    # What `cwh env status` shows (the README says so; the outside review found it did not).
    row = next(c for c in wait_healthy(local_env)["components"] if c["component"] == victim)
    assert "liveness" in row["last_restart_reason"], row


def test_connections_dropped_mid_transaction_answer_503_never_500(local_env: LocalEnvironment):
    """The server side of the API's connections dies under its transactions (here its backends
    are terminated; killing HAProxy did it in the kill-lb experiment): pgBouncer closes the
    client connections, and asyncpg raises InterfaceError from the transaction's exit, which is
    not a PostgresError. A dependency that is gone is a 503 with Retry-After (the outcome of
    that submit is unknown, and the phone retries it under its idempotency key), never a 500."""
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]
    ports = [port_of(status, f"api{i}") for i in (1, 2, 3)]
    terminate = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE usename = 'cloudwatcher' AND pid <> pg_backend_pid()"
    )

    def in_transaction() -> int | None:
        sql = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE usename = 'cloudwatcher' AND xact_start IS NOT NULL"
        )
        return query(primary, sql)[0][0] or None

    async def flow() -> tuple[list[tuple[int, str | None]], int]:
        auths = []
        for _ in range(3):
            async with Phone(status) as phone:
                await phone.register()
                auths.append(phone.auth)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:

            async def one(n: int) -> tuple[int, str | None]:
                async with s.post(
                    f"http://127.0.0.1:{ports[n % 3]}/v1/requests",
                    headers={**auths[n % 3], "Idempotency-Key": f"term-{n}-{time.time_ns()}"},
                    json={"provider": "gdrive", "document": "doc-003.txt", "instruction": "x"},
                ) as r:
                    await r.read()
                    return r.status, r.headers.get("Retry-After")

            answers, terminated = [], 0
            # Transactions stretched by 100 ms a round trip, so terminations land inside them;
            # bounded: 5 rounds of 30 concurrent submits.
            with toxic(status, "postgres-write", "latency", latency=100, jitter=0):
                for round_ in range(5):
                    batch = asyncio.gather(*(one(30 * round_ + n) for n in range(30)))
                    await asyncio.to_thread(
                        poll, in_transaction, 10, "transactions under way", 0.02
                    )
                    terminated += (await asyncio.to_thread(query, primary, terminate))[0][0]
                    answers += await batch
        return answers, terminated

    answers, terminated = run(flow())
    assert terminated > 0, "no backend was terminated"
    codes = [c for c, _ in answers]
    assert 500 not in codes, sorted(codes)
    assert 503 in codes, "the terminations never reached a submit"
    assert all(ra is not None for c, ra in answers if c == 503), answers


async def answers_ping(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether the hub still answers this socket's text ping (a cut socket cannot)."""
    try:
        await ws.send_str("ping")
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return False  # closed, or an error: the socket is gone
            if msg.data == "pong":
                return True
    except (ConnectionError, TimeoutError):
        return False


def test_a_paused_write_path_leaves_reads_answered_and_replicas_in_rotation(
    local_env: LocalEnvironment,
):
    """pgBouncer paused for 10 s (the write path stalls; the read path, HAProxy to the
    replicas, does not). When readiness was a live query through the write path, HAProxy took
    every API replica out of rotation and cut what they had in flight: reads that did not need
    the write path answered 503 for the whole stall and after. Readiness now says whether the
    process serves, not whether a shared dependency answers this second; and a phone's socket
    on a hub outlives the stall (hubs marked down had their sockets cut)."""
    status = wait_healthy(local_env)
    secrets = json.loads(Path(status["secrets_file"]).read_text())
    _, _, tls = status["urls"]["pgbouncer"].partition("?")  # its TLS options, when it has any
    admin = (
        f"postgresql://postgres:{secrets['pg_superuser']}@127.0.0.1:"
        f"{local_env.settings.ports.pgbouncer}/pgbouncer?{tls}"
    )

    async def flow() -> tuple[list[int], bool]:
        async with Phone(status) as phone:
            await phone.register()
            _, accepted = await phone.submit()
            rid = accepted["request_id"]
            await until_status(phone, rid, {"completed"}, 30)
            ws = await phone.updates()  # a phone's socket, held through the stall
            # Connected means greeted: the hub reads the device's latest events before its
            # hello, and a pause in between closes the socket with 1013 (retry later), by
            # design, which is not what this test is about.
            hello = await ws.receive_json(timeout=10)
            assert hello["type"] == "hello", hello
            codes = []
            with psycopg.connect(admin, autocommit=True) as pgb:
                pgb.execute("PAUSE cloudwatcher")
                try:
                    # Reads through the frontend for the stall's length, bounded at 10 s: the
                    # load balancer checks every 5 s and needs 2 failures to mark one down.
                    until = time.monotonic() + 10
                    while time.monotonic() < until:
                        codes.append((await phone.get(rid))[0])
                finally:
                    pgb.execute("RESUME cloudwatcher")
            return codes, await answers_ping(ws)

    codes, socket_alive = run(flow())
    assert socket_alive, "the stall cut the phone's WebSocket"
    # 429: this phone reads faster than its own rate limit allows; never a 503.
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) > 5, codes
    rows = asyncio.run(probes.haproxy_stat(Layout(local_env.settings.run_dir)))
    assert len(probes.haproxy_servers_up(rows, "api")) == local_env.settings.api_replicas
