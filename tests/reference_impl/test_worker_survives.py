"""No job and no lost connection can stop a worker: hostile answers fail one job, with a reason,
and every claim loop of every worker goes on claiming."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from env.local import LocalEnvironment
from experiments.harness import scrape_sum
from tests.helpers import knobs, poll, port_of, query, toxic, wait_healthy
from tests.phone import Phone
from tests.reference_impl.test_flow import run, until_status

pytestmark = [pytest.mark.env, pytest.mark.fault]

FINAL = {"completed", "failed", "dead_lettered"}


def workers(status: dict) -> list[str]:
    return [c["component"] for c in status["components"] if c["kind"] == "worker"]


def loop_ticks(status: dict) -> dict[tuple[str, str], float]:
    """(worker, claim loop) -> ticks so far, for every claim loop of every worker."""
    out = {}
    for worker in workers(status):
        port = port_of(status, worker)
        for index in range(4):
            loop = f"claim{index}"
            out[(worker, loop)] = scrape_sum(port, "cw_loop_ticks_total", loop=loop)
    return out


def wait_all_loops_tick(status: dict, within_s: float = 15) -> None:
    before = loop_ticks(status)
    assert len(before) == 4 * len(workers(status)), before

    def all_ticked() -> bool | None:
        now = loop_ticks(status)
        return True if all(now[k] > before[k] for k in before) else None

    try:
        poll(all_ticked, within_s, "every claim loop of every worker ticks", interval_s=0.5)
    except AssertionError:
        now = loop_ticks(status)
        dead = sorted(k for k in before if now[k] <= before[k])
        raise AssertionError(f"claim loops that stopped ticking: {dead}") from None


def test_malformed_llm_answers_fail_the_job_with_a_reason_and_no_loop_dies(
    local_env: LocalEnvironment,
):
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]

    async def flow() -> list[dict]:
        async with Phone(status) as phone:
            await phone.register()
            with knobs(status, "llm", malformed_rate=1.0):
                ids = [
                    (await phone.submit(key=uuid.uuid4().hex))[1]["request_id"] for _ in range(6)
                ]
                done = [await until_status(phone, rid, FINAL, 90) for rid in ids]
            # And the workers still work once the LLM is sane again.
            _, accepted = await phone.submit()
            done.append(await until_status(phone, accepted["request_id"], FINAL, 30))
            return done

    done = run(flow())
    assert [d["status"] for d in done[:-1]] == ["dead_lettered"] * 6, done
    assert done[-1]["status"] == "completed", done[-1]
    errors = query(
        primary,
        "SELECT error FROM requests WHERE request_id = ANY(%s::uuid[])",
        ([d["request_id"] for d in done[:-1]],),
    )
    assert all("malformed" in e for (e,) in errors), errors
    wait_all_loops_tick(status)


def test_a_request_that_cannot_be_decrypted_fails_with_a_reason_and_no_loop_dies(
    local_env: LocalEnvironment,
):
    status = wait_healthy(local_env)
    primary = status["urls"]["members"][status["primary"]]

    async def device() -> str:
        async with Phone(status) as phone:
            await phone.register()
            return phone.device["device_id"]

    device_id = run(device())
    # Ciphertext that no key opens: what a wrong or rotated-away field key looks like.
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for rid in ids:
        query(
            primary,
            "INSERT INTO requests (device_id, request_id, idempotency_key, body_hash, provider,"
            " document_enc, instruction_enc, status, correlation_id)"
            " VALUES (%s, %s, %s, '\\x00', 'sharepoint', %s, %s, 'queued', 'test')",
            (device_id, rid, rid, b"\x01" * 40, b"\x02" * 40),
        )
        query(
            primary,
            "INSERT INTO jobs (device_id, request_id, correlation_id, max_attempts)"
            " VALUES (%s, %s, 'test', 5)",
            (device_id, rid),
        )

    def final() -> list | None:
        rows = query(
            primary,
            "SELECT status, error FROM requests WHERE request_id = ANY(%s::uuid[])",
            (ids,),
        )
        return rows if all(s in FINAL for s, _ in rows) else None

    rows = poll(final, 60, "undecryptable requests reach a final state")
    assert all(s == "failed" for s, _ in rows), rows
    assert all("decrypt" in e for _, e in rows), rows
    wait_all_loops_tick(status)


def test_a_provider_answering_garbage_fails_over_to_the_other(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    malformed_before = scrape_sum(
        port_of(status, "gateway"), "cw_storage_calls_total", provider="sharepoint"
    )

    async def flow() -> list[dict]:
        async with Phone(status) as phone:
            await phone.register()
            with knobs(status, "sharepoint", malformed_rate=1.0):
                # Documents no fleet asks for, so the gateway's cache cannot answer.
                ids = [
                    (await phone.submit(document=f"doc-{n:03d}.txt"))[1]["request_id"]
                    for n in (51, 52, 53)
                ]
                return [await until_status(phone, rid, FINAL, 60) for rid in ids]

    done = run(flow())
    assert [d["status"] for d in done] == ["completed"] * 3, done
    # SharePoint really answered (garbage): the gateway called it and moved on.
    after = scrape_sum(port_of(status, "gateway"), "cw_storage_calls_total", provider="sharepoint")
    assert after >= malformed_before + 3
    wait_all_loops_tick(status)


def test_postgresql_connections_reset_mid_job_leave_every_loop_running(
    local_env: LocalEnvironment,
):
    """The fault proxy resets the services' PostgreSQL connections while jobs run: asyncpg
    raises whatever it raises (ConnectionResetError, InterfaceError, ...) inside claims,
    claim extensions and completions; every loop must survive it, and every request acknowledged
    completes once the connections are healthy again."""
    status = wait_healthy(local_env)

    async def flow() -> list[dict]:
        async with Phone(status) as phone:
            await phone.register()
            ids = []
            with knobs(status, "llm", latency_ms=1500):
                for _ in range(8):  # claimed, and mid-job, when the resets begin
                    ids.append((await phone.submit())[1]["request_id"])
                refused = 0
                with toxic(status, "postgres-write", "reset_peer", timeout=0):
                    # The fault's length is the point here (jobs finishing into it), not a
                    # wait for something: keep submitting through it for 5 s.
                    # Paced at 10 a second, under the per-phone rate limit (20/s): refused
                    # submits answer at once, and an unpaced loop is throttled (429) instead.
                    until = time.monotonic() + 5
                    while (now := time.monotonic()) < until:
                        code, body = await phone.submit()
                        assert code != 429, body
                        if code == 202:
                            ids.append(body["request_id"])
                        else:
                            refused += 1
                        await asyncio.sleep(max(0.0, now + 0.1 - time.monotonic()))
                # The fault really reached the services: the API could not write.
                assert refused > 0
            return [await until_status(phone, rid, FINAL, 120) for rid in ids]

    done = run(flow())
    assert all(d["status"] == "completed" for d in done), done
    wait_all_loops_tick(status)
