"""The read-back after a run against an API that fails in every way a real one can: what it
could not answer is unknown (left out), only a 404 for the request's own device is lost, and
unknowns are retried while the settle deadline lasts. An in-process aiohttp server on an
ephemeral port stands for the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from cwh.fleet import READ_BACK_BATCH, FleetOptions, Tokens, catch_up, settle
from cwh.fleet import identities as fleet_identities
from reference_impl.contract import STATUS_BATCH_MAX

#: request id -> what the fake API answers for it, in turn (the last answer repeats).
SCRIPT = {
    "r-done": ["completed"],
    "r-gone": [404],
    "r-500": [500],
    "r-busy": [429],  # rate limited to the end
    "r-slow": ["hang"],  # no answer before the client's timeout
    "r-cut": ["cut"],  # connection closed without an answer
    "r-flaky": [503, "completed"],  # unknown at first, answered on a later pass
    "r-queued": ["queued", "completed"],  # pending, then final
    "r-notoken": ["completed"],  # its device's token call fails: unknown
    "r-tokenflaky": ["completed"],  # its device's first token call fails, the next works
    "r-tokenlimited": ["completed"],  # its device's token calls are rate limited at first
    "r-null": ["null"],  # a 200 whose JSON is not an object: no answer, never a crash
}
DEVICE_OF = {rid: "dev-main" for rid in SCRIPT}
DEVICE_OF["r-notoken"] = "dev-notoken"
DEVICE_OF["r-tokenflaky"] = "dev-tokenflaky"
DEVICE_OF["r-tokenlimited"] = "dev-tokenlimited"


def fake_api(calls: Counter[str]) -> web.Application:
    async def token(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client = str(form["client_id"])
        calls[f"token:{client}"] += 1
        if client == "dev-notoken":
            return web.json_response({"error": "unavailable"}, status=503)
        if client == "dev-tokenlimited" and calls[f"token:{client}"] <= 2:
            return web.json_response({"error": "x"}, status=429, headers={"Retry-After": "0.1"})
        if client == "dev-tokenflaky" and calls[f"token:{client}"] == 1:
            assert request.transport is not None
            request.transport.close()  # no answer at all: the client sees an exception
            raise asyncio.CancelledError
        return web.json_response({"access_token": f"tok-{client}", "expires_in": 900})

    async def get_request(request: web.Request) -> web.StreamResponse:
        rid = request.match_info["rid"]
        device = request.headers["Authorization"].removeprefix("Bearer tok-")
        answers = SCRIPT[rid]
        answer = answers[min(calls[rid], len(answers) - 1)]
        calls[rid] += 1
        if device != DEVICE_OF[rid]:
            return web.json_response({"error": "not_found"}, status=404)
        if answer == "hang":
            await asyncio.sleep(30)
        if answer == "cut":
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        if answer == 429:
            return web.json_response({"error": "x"}, status=429, headers={"Retry-After": "0.2"})
        if isinstance(answer, int):
            return web.json_response({"error": "x"}, status=answer)
        if answer == "null":
            return web.json_response(None)
        return web.json_response({"request_id": rid, "status": answer})

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_get("/v1/requests/{rid}", get_request)
    return app


def identities(folder: Path) -> None:
    """As the fleet's collector writes them (scenarios/shipping.py)."""
    rows = [[device, device, "s"] for device in sorted(set(DEVICE_OF.values()))]
    (folder / "identities-host_1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[FleetOptions]:
    """`app` on an ephemeral loopback port, for as long as the block runs: the fleet's options
    pointing at it."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield FleetOptions(target=f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


def device_identities(folder: Path, devices: list[str]) -> None:
    """Each device's identity (its id as client id), as the fleet's collector writes them."""
    rows = [[d, d, "s"] for d in devices]
    (folder / "identities-host_1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


async def read_back_against_fake(tmp_path: Path, timeout_s: float) -> tuple[dict, Counter, float]:
    calls: Counter[str] = Counter()
    runner = web.AppRunner(fake_api(calls), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    identities(tmp_path)
    acked = {rid: {"device_id": DEVICE_OF[rid]} for rid in SCRIPT}
    # One acknowledged request whose device left no identity: unknown, not a crash.
    acked["r-orphan"] = {"device_id": "dev-unknown"}
    opts = FleetOptions(target=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    try:
        statuses = await settle(opts, tmp_path, acked, timeout_s=timeout_s, request_timeout_s=1)
        took = time.monotonic() - started
    finally:
        await runner.cleanup()
    return statuses, calls, took


def test_what_the_api_could_not_answer_is_left_out_and_retried_until_the_deadline(tmp_path):
    statuses, calls, took = asyncio.run(read_back_against_fake(tmp_path, timeout_s=15))
    # Known: final statuses, and None only for the 404 of its own device.
    assert statuses["r-done"] == "completed"
    assert statuses["r-gone"] is None
    # Unknown for a while, then answered on a later pass within the deadline.
    assert statuses["r-flaky"] == "completed"
    assert statuses["r-queued"] == "completed"
    assert statuses["r-tokenflaky"] == "completed"
    assert statuses["r-tokenlimited"] == "completed"  # the token's 429s were honoured
    # Never answered: left out (unknown), whatever the failure.
    unknown = {"r-500", "r-busy", "r-slow", "r-cut", "r-notoken", "r-orphan", "r-null"}
    assert unknown.isdisjoint(statuses), statuses
    assert set(statuses) == set(SCRIPT) - unknown
    # Retried while the deadline lasted, and no longer: a final answer is not asked again.
    assert calls["r-500"] >= 2
    assert calls["token:dev-notoken"] >= 2
    assert calls["r-done"] == 1
    assert calls["token:dev-main"] == 1  # one token per device, kept across passes
    assert took < 15 + 1, took  # bounded by the deadline, whatever hangs


def test_the_catch_up_reads_each_device_log_whole_and_leaves_out_what_it_cannot_read(tmp_path):
    """A completed request no phone heard of: its event is in the device's log (paged), or it
    is not (never notified), or the log cannot be read (unknown)."""
    logs = {"dev-main": [["r-a"], ["r-b", "r-c"]], "dev-notoken": [["r-x"]]}

    async def sync(request: web.Request) -> web.StreamResponse:
        device = request.headers["Authorization"].removeprefix("Bearer tok-")
        if device == "dev-tokenflaky":
            return web.json_response({"error": "unavailable"}, status=503)
        page = int(request.query["since"])
        pages = logs.get(device, [[]])
        events = [{"event_id": page + 1, "request_id": rid} for rid in pages[page]]
        more = page + 1 < len(pages)
        return web.json_response({"events": events, "next_cursor": str(page + 1), "more": more})

    async def go() -> dict[str, bool]:
        app = fake_api(Counter())
        app.router.add_get("/v1/sync", sync)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        identities(tmp_path)
        opts = FleetOptions(target=f"http://127.0.0.1:{runner.addresses[0][1]}")
        unheard = {
            "r-b": "dev-main",  # on the log's second page
            "r-z": "dev-main",  # not on the log: never notified
            "r-x": "dev-notoken",  # no token for its device: unknown
            "r-y": "dev-tokenflaky",  # the log answers 503: unknown
        }
        try:
            tokens = Tokens(opts.target, fleet_identities(tmp_path))
            return await catch_up(opts, tokens, unheard, timeout_s=5)
        finally:
            await runner.cleanup()

    assert asyncio.run(go()) == {"r-b": True, "r-z": False}


def test_the_devices_are_read_back_side_by_side(tmp_path):
    """Each device's requests are read one after the other (its rate limit is per device), the
    devices side by side: a read-back that ran devices in small waves left a soak's requests
    unknown at the settle deadline. 48 devices, three requests each, a slow API: they overlap."""
    in_flight: dict[str, int] = Counter()
    peak = {"requests": 0, "per_device": 0}

    async def token(request: web.Request) -> web.StreamResponse:
        client = str((await request.post())["client_id"])
        return web.json_response({"access_token": f"tok-{client}", "expires_in": 900})

    async def get_request(request: web.Request) -> web.StreamResponse:
        device = request.headers["Authorization"].removeprefix("Bearer tok-")
        in_flight[device] += 1
        peak["requests"] = max(peak["requests"], sum(in_flight.values()))
        peak["per_device"] = max(peak["per_device"], in_flight[device])
        try:
            await asyncio.sleep(0.2)
        finally:
            in_flight[device] -= 1
        return web.json_response({"request_id": request.match_info["rid"], "status": "completed"})

    async def run() -> dict[str, str | None]:
        app = web.Application()
        app.router.add_post("/oauth/token", token)
        app.router.add_get("/v1/requests/{rid}", get_request)
        devices = [f"dev-{i}" for i in range(48)]
        device_identities(tmp_path, devices)
        acked = {f"{d}-r{n}": {"device_id": d} for d in devices for n in range(3)}
        async with served(app) as opts:
            return await settle(opts, tmp_path, acked, timeout_s=60, request_timeout_s=5)

    statuses = asyncio.run(run())
    assert len(statuses) == 48 * 3
    assert set(statuses.values()) == {"completed"}
    assert peak["per_device"] == 1  # one at a time per device
    assert peak["requests"] > 32, peak  # the devices overlapped, beyond the old waves of 16


def test_the_api_reads_statuses_in_bulk_and_a_failed_batch_is_asked_again(tmp_path):
    """1,200 requests of one device and 3 of another in a handful of bulk calls, none over the
    API's limit, no GET; a batch answered 503 is unknown and asked again on the next pass; an
    id the API does not have is lost (None); a refused token is asked anew."""
    calls: Counter[str] = Counter()
    sizes: list[int] = []
    big = [f"big-{n}" for n in range(1200)]
    acked = {rid: {"device_id": "dev-big"} for rid in big}
    acked.update({f"small-{n}": {"device_id": "dev-small"} for n in range(3)})

    async def token(request: web.Request) -> web.StreamResponse:
        client = str((await request.post())["client_id"])
        calls[f"token:{client}"] += 1
        return web.json_response({"access_token": f"tok-{client}-{calls[f'token:{client}']}"})

    async def statuses(request: web.Request) -> web.StreamResponse:
        auth = request.headers["Authorization"].removeprefix("Bearer tok-")
        device, _, nth = auth.rpartition("-")
        calls[f"bulk:{device}"] += 1
        if device == "dev-small" and nth == "1":  # the first token has expired
            return web.json_response({"error": "unauthorized"}, status=401)
        ids = (await request.json())["request_ids"]
        sizes.append(len(ids))
        if device == "dev-big" and calls["bulk:dev-big"] == 2:  # one batch fails once
            return web.json_response({"error": "unavailable"}, status=503)
        gone = {"big-7", "small-2"}
        # big-9 is queued on the first answer, completed on a later pass
        pending = {"big-9"} if calls["bulk:dev-big"] == 1 else set()
        rows = [
            {"request_id": i, "status": "queued" if i in pending else "completed"}
            for i in ids
            if i not in gone
        ]
        return web.json_response({"requests": rows, "missing": [i for i in ids if i in gone]})

    async def get_request(request: web.Request) -> web.StreamResponse:
        calls["get"] += 1
        return web.json_response({"error": "not expected"}, status=500)

    async def run() -> dict[str, str | None]:
        app = web.Application()
        app.router.add_post("/oauth/token", token)
        app.router.add_post("/v1/request-statuses", statuses)
        app.router.add_get("/v1/requests/{rid}", get_request)
        device_identities(tmp_path, ["dev-big", "dev-small"])
        async with served(app) as opts:
            return await settle(opts, tmp_path, acked, timeout_s=30, request_timeout_s=5)

    got = asyncio.run(run())
    assert set(got) == set(acked)  # nothing unknown at the end
    assert got["big-7"] is None
    assert got["small-2"] is None
    assert got["big-9"] == "completed"
    assert got["big-1199"] == "completed"
    assert sum(v == "completed" for v in got.values()) == 1200 - 1 + 3 - 1
    assert calls["get"] == 0
    assert max(sizes) <= READ_BACK_BATCH == STATUS_BATCH_MAX
    # Pass 1: three batches (one failed); pass 2: the failed batch and the pending one.
    assert calls["bulk:dev-big"] == 5, calls
    assert calls["token:dev-small"] == 2  # the refused token was asked anew


def test_ids_are_matched_as_uuids_and_a_refused_batch_is_read_one_by_one(tmp_path):
    """The API answers ids in its canonical form (lower case), whatever the ledger holds; an
    API that refuses a batch this large (422) is read one GET at a time, for that pass."""
    upper = str(uuid.UUID(int=1)).upper()
    others = [str(uuid.UUID(int=n)) for n in range(2, 4)]
    gets: list[str] = []

    async def token(request: web.Request) -> web.StreamResponse:
        return web.json_response({"access_token": "tok"})

    async def statuses(request: web.Request) -> web.StreamResponse:
        ids = (await request.json())["request_ids"]
        if len(ids) > 1:
            return web.json_response({"error": "too many"}, status=422)
        rows = [{"request_id": i.lower(), "status": "completed"} for i in ids]
        return web.json_response({"requests": rows, "missing": []})

    async def get_request(request: web.Request) -> web.StreamResponse:
        gets.append(request.match_info["rid"])
        return web.json_response({"request_id": request.match_info["rid"], "status": "failed"})

    async def run(acked: dict[str, dict[str, str]]) -> dict[str, str | None]:
        app = web.Application()
        app.router.add_post("/oauth/token", token)
        app.router.add_post("/v1/request-statuses", statuses)
        app.router.add_get("/v1/requests/{rid}", get_request)
        device_identities(tmp_path, ["d"])
        async with served(app) as opts:
            return await settle(opts, tmp_path, acked, timeout_s=10, request_timeout_s=5)

    assert asyncio.run(run({upper: {"device_id": "d"}})) == {upper: "completed"}
    assert gets == []
    got = asyncio.run(run({rid: {"device_id": "d"} for rid in others}))
    assert got == dict.fromkeys(others, "failed")  # what the GETs said
    assert sorted(gets) == others
