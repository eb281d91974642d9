"""The request lifecycle end to end, through HAProxy over TLS, on the real environment."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from env.local import LocalEnvironment
from reference_impl import keyset
from tests.helpers import poll, query, wait_healthy
from tests.phone import Phone, next_event

pytestmark = pytest.mark.env


def run(coro):
    return asyncio.run(coro)


async def until_status(phone: Phone, request_id: str, wanted: set[str], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await phone.get(request_id)
        if status == 429:  # throttled, as a phone polling hard would be: back off and go on
            assert time.monotonic() < deadline, body
            await asyncio.sleep(1.0)
            continue
        assert status == 200, body
        if body["status"] in wanted:
            return body
        assert time.monotonic() < deadline, f"still {body['status']} after {timeout_s} s"
        await asyncio.sleep(0.1)


def test_submit_is_notified_on_the_websocket_and_reads_back_completed(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            ws = await phone.updates()
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello"
            assert hello["heartbeat_s"] == 30
            code, accepted = await phone.submit()
            assert code == 202, accepted
            assert accepted["status"] == "queued"
            event = await next_event(ws, timeout_s=20)
            assert event["request_id"] == accepted["request_id"]
            assert event["type"] == "completed"
            code, body = await phone.get(accepted["request_id"])
            assert code == 200
            assert body["status"] == "completed"
            assert body["response"].startswith("[stub ")
            # The hub connection is sticky: HAProxy set its cookie.
            assert any(c.key == "CWHUB" for c in phone.session.cookie_jar)
            await ws.close()

    run(flow())


def test_offline_phone_catches_up_by_sync_and_by_last_event_id(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with Phone(status, platform="android") as phone:
            await phone.register()
            ids = []
            for _ in range(3):  # submitted while no socket is open
                code, body = await phone.submit()
                assert code == 202
                ids.append(body["request_id"])
            for rid in ids:
                await until_status(phone, rid, {"completed"}, 30)
            # Background sync: every event, and a cursor that moves on once they settle.
            synced = await phone.sync("0")
            assert {e["request_id"] for e in synced["events"]} == set(ids)
            await asyncio.sleep(2.1)  # the cursor holds back events younger than 2 s (by design)
            settled = await phone.sync("0")
            assert int(settled["next_cursor"]) == max(e["event_id"] for e in settled["events"])
            assert (await phone.sync(settled["next_cursor"]))["events"] == []
            # Resume on the socket: everything after the given id is replayed.
            first = min(e["event_id"] for e in settled["events"])
            ws = await phone.updates(last_event_id=first)
            replayed = [await next_event(ws, 5) for _ in range(2)]
            assert all(e["replayed"] for e in replayed)
            assert {e["event_id"] for e in replayed} == {
                e["event_id"] for e in settled["events"] if e["event_id"] > first
            }
            await ws.close()

    run(flow())


def test_idempotent_resubmission_creates_one_request_and_one_job(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    key = uuid.uuid4().hex

    async def flow() -> tuple[str, str]:
        async with Phone(status) as phone:
            await phone.register()
            first = await phone.submit(key=key)
            again = await phone.submit(key=key)
            assert first[0] == again[0] == 202
            assert first[1]["request_id"] == again[1]["request_id"]
            conflict = await phone.submit(key=key, document="doc-002.txt")
            assert conflict[0] == 409
            assert conflict[1]["error"] == "conflict"
            await until_status(phone, first[1]["request_id"], {"completed"}, 30)
            return phone.device["device_id"], first[1]["request_id"]

    device_id, request_id = run(flow())
    primary = status["urls"]["members"][status["primary"]]
    assert query(
        primary,
        "SELECT count(*) FROM requests WHERE device_id = %s AND idempotency_key = %s",
        (device_id, key),
    ) == [(1,)]
    assert query(primary, "SELECT count(*) FROM events WHERE request_id = %s", (request_id,)) == [
        (1,)
    ], "exactly one completion"


def test_another_devices_request_is_404_and_bad_tokens_are_401(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    key_path = Path(status["run_dir"]) / "services" / keyset.KEYSET_FILE

    async def flow() -> None:
        async with Phone(status) as a, Phone(status) as b:
            await a.register()
            await b.register()
            _, accepted = await a.submit()
            code, body = await b.get(accepted["request_id"])
            assert code == 404
            assert body["error"] == "not_found"
            real = keyset.load(key_path).signing
            now = int(time.time())
            claims = {
                "iss": "cloudwatcher-local",
                "aud": "cloudwatcher-api",
                "sub": a.device["device_id"],
                "iat": now - 100,
            }
            kid = {"kid": real.kid}
            expired = jwt.encode(
                {**claims, "exp": now - 60}, real.private, algorithm="RS256", headers=kid
            )
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            # Forged under the real key's id, and under an id of its own.
            forged = jwt.encode({**claims, "exp": now + 600}, other, algorithm="RS256", headers=kid)
            stranger = jwt.encode(
                {**claims, "exp": now + 600}, other, algorithm="RS256", headers={"kid": "x"}
            )
            for token, why in (
                (expired, "expired"),
                (forged, "invalid"),
                (stranger, "unknown key"),
                ("", "missing"),
            ):
                a.token = token
                code, body = await a.get(accepted["request_id"])
                assert code == 401, (why, body)
                assert body["error"] == "unauthorized"

    run(flow())


def test_statuses_are_read_in_bulk_and_only_the_devices_own(local_env: LocalEnvironment):
    """The bulk read answers what one GET per request would: the device's own requests with
    their status, another device's and unknown ids as missing (a 404 each), duplicates once;
    what is not a list of request ids is a 422 with the reason, nothing read."""
    status = wait_healthy(local_env)

    async def flow() -> None:
        async with Phone(status) as a, Phone(status) as b:
            await a.register()
            await b.register()
            mine = []
            for n in range(3):
                code, accepted = await a.submit(document=f"doc-{n:03}.txt")
                assert code == 202, accepted
                mine.append(accepted["request_id"])
            _, theirs = await b.submit()
            # Submitted a moment ago: on the primary, perhaps not yet on the replica.
            stranger = str(uuid.uuid4())
            ids = [*mine, theirs["request_id"], stranger, mine[0]]
            code, body = await a.statuses({"request_ids": ids})
            assert code == 200, body
            assert [r["request_id"] for r in body["requests"]] == mine
            assert {r["status"] for r in body["requests"]} <= {"queued", "processing", "completed"}
            assert sorted(body["missing"]) == sorted([theirs["request_id"], stranger])
            # It completes: the bulk read says so too (polled: each read may reach another
            # replica, which may lag the one a GET saw).
            await until_status(a, mine[2], {"completed"}, 30)
            deadline = time.monotonic() + 30
            while True:
                code, body = await a.statuses({"request_ids": [mine[2].upper()]})
                assert code == 200, body
                (row,) = body["requests"]
                assert row["request_id"] == mine[2]  # upper-case hex in, the canonical form out
                if row["status"] == "completed":
                    break
                assert time.monotonic() < deadline, row
                await asyncio.sleep(0.2)
            # Charged by its ids against the device's limit (20/s): eight calls at once of 500
            # ids each, 20 requests' worth apiece, pass one per second; of one id, all pass.
            many = {"request_ids": [str(uuid.uuid4()) for _ in range(500)]}
            codes = [c for c, _ in await asyncio.gather(*(a.statuses(many) for _ in range(8)))]
            assert codes.count(429) >= 4, codes  # at most one per window, and at most 3 windows
            assert set(codes) <= {200, 429}, codes
            one = {"request_ids": [mine[0]]}
            deadline = time.monotonic() + 10
            while True:  # once the charged window is over, eight calls at once all pass
                codes = [c for c, _ in await asyncio.gather(*(a.statuses(one) for _ in range(8)))]
                if codes == [200] * 8:
                    break
                assert time.monotonic() < deadline, codes
            for wrong in (
                {},
                {"request_ids": []},
                {"request_ids": mine[0]},
                {"request_ids": [mine[0], 7]},
                {"request_ids": [mine[0], "urn:uuid:" + mine[1]]},
                {"request_ids": [str(uuid.uuid4()) for _ in range(501)]},
            ):
                code, body = await a.statuses(wrong)
                assert code == 422, (wrong, body)
                assert body["detail"]["field"] == "request_ids"

    run(flow())


def test_openapi_is_served_and_describes_the_api(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> dict:
        async with Phone(status) as phone, phone.session.get(f"{phone.base}/openapi.json") as r:
            assert r.status == 200
            return await r.json()

    doc = run(flow())
    assert doc["openapi"].startswith("3.")
    for path in (
        "/v1/devices",
        "/oauth/token",
        "/v1/requests",
        "/v1/requests/{request_id}",
        "/v1/sync",
        "/v1/updates",
    ):
        assert path in doc["paths"]
    # Internal routes live on each replica's own port, never behind the public frontend.
    assert [p for p in doc["paths"] if p.startswith(("/health", "/metrics", "/admin"))] == []


def test_scheduler_writes_the_heartbeat_and_takes_a_backup(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    urls = status["urls"]
    primary = urls["members"][status["primary"]]
    (beat,) = query(primary, "SELECT beat FROM replication_heartbeat WHERE id = 1")[0]
    poll(
        lambda: query(primary, "SELECT 1 FROM replication_heartbeat WHERE beat >= %s", (beat + 2,)),
        5,
        "the heartbeat advances every second",
    )
    # Replicas see it less than a second old: the lag as applications see it.
    for name, url in urls["members"].items():
        if name == status["primary"]:
            continue
        (age,) = query(
            url,
            "SELECT EXTRACT(EPOCH FROM clock_timestamp() - written_at)::float8"
            " FROM replication_heartbeat WHERE id = 1",
        )[0]
        assert age < 1.5, f"{name}: heartbeat {age:.2f} s old"  # 1 s beat + < 0.5 s lag
    runs = poll(
        lambda: query(
            primary,
            "SELECT detail FROM periodic_runs WHERE job = 'backup' ORDER BY run_id LIMIT 1",
        ),
        120,
        "a backup recorded",
    )
    # The first one is full (there is none to take a differential against; later ones, taken
    # within a day of it, are differential), and it is in the repository, not only in the log.
    assert runs[0][0]["type"] == "full"
    fulls = [b for b in local_env.backups() if b["type"] == "full" and not b["error"]]
    assert fulls, local_env.backups()
    assert fulls[0]["bytes"] > 10_000_000  # a whole cluster, not an empty stanza


def test_a_request_is_one_trace_and_one_correlation_id_from_api_to_worker(
    local_env: LocalEnvironment,
):
    status = wait_healthy(local_env)
    cid = uuid.uuid4().hex

    async def flow() -> None:
        async with Phone(status) as phone:
            await phone.register()
            _, accepted = await phone.submit(headers={"X-Correlation-Id": cid})
            await until_status(phone, accepted["request_id"], {"completed"}, 30)

    run(flow())
    run_dir = Path(status["run_dir"])

    def spans_of(prefix: str) -> list[dict]:
        found = []
        for path in (run_dir / "traces").glob(f"{prefix}*.jsonl"):
            for line in path.read_text().splitlines():
                span = json.loads(line)
                if span["context"]["trace_id"] == f"0x{cid}":
                    found.append(span)
        return found

    # Spans are exported in batches (every 5 s).
    api_spans = poll(lambda: spans_of("api"), 20, "the API's span of the submit")
    worker_spans = poll(lambda: spans_of("worker"), 20, "the worker's span of the job")
    assert api_spans[0]["name"] == "POST /v1/requests"
    assert any(s["name"] == "process_job" for s in worker_spans)
    logged = [
        json.loads(line)
        for path in (run_dir / "logs").glob("*.log")
        if path.name.startswith(("api", "worker"))
        for line in path.read_text().splitlines()
        if line.startswith("{") and cid in line
    ]
    assert {entry["service"] for entry in logged} == {"api", "worker"}


def test_oversized_body_is_413_json(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> tuple[int, dict]:
        async with Phone(status) as phone:
            await phone.register()
            return await phone.submit(instruction="x" * 70_000)

    code, body = run(flow())
    assert code == 413
    assert body["error"] == "payload_too_large"


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [("\x00", "x"), ("cw_x", "\x00"), ("c" * 201, "x"), ("cw_x", "s" * 201)],
)
def test_a_token_call_with_an_impossible_credential_is_400_json(
    local_env: LocalEnvironment, client_id: str, secret: str
):
    """A NUL used to reach PostgreSQL, which refuses it in text: a 500 for a bad form field."""
    status = wait_healthy(local_env)

    async def flow() -> tuple[int, dict]:
        async with Phone(status) as phone:
            form = {"grant_type": "client_credentials", "client_id": client_id,
                    "client_secret": secret}  # fmt: skip
            async with phone.session.post(f"{phone.base}/oauth/token", data=form) as r:
                return r.status, await r.json()

    code, body = run(flow())
    assert code == 400, body
    assert body["error"] == "invalid_request"
    assert "no NUL" in body["detail"]
