"""The public API the phone speaks (see `/openapi.json`).

Requests are stored encrypted in PostgreSQL, queued in the same transaction, and answered 202.
Reads go to a replica and fall back to the primary when the replica has not seen the request yet
(read-your-writes). Redis caches only what never changes again (requests in a final state, and
responses) and counts the rate limit; when Redis is down the API still answers, uncached and
unlimited.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from reference_impl import contract, observability
from reference_impl.auth import (
    Claims,
    InvalidToken,
    TokenIssuer,
    bearer,
    key_status,
    new_client_credentials,
    same_secret,
    secret_matches,
)
from reference_impl.control_plane import guarded
from reference_impl.crypto import FieldCipher
from reference_impl.errors import JSON_ERRORS, ApiError, error_middleware
from reference_impl.openapi import OPENAPI
from reference_impl.planted import PLANTED
from reference_impl.schema import ensure_schema, settled
from reference_impl.settings import ServiceSettings
from reference_impl.stores import (
    CacheCluster,
    create_pool,
    create_redis,
    redis_or_none,
    warm_redis,
)

log = logging.getLogger("cw.api")

SETTINGS = web.AppKey("settings", ServiceSettings)
WRITE_POOL = web.AppKey("write_pool", asyncpg.Pool)
READ_POOL = web.AppKey("read_pool", asyncpg.Pool)
REDIS = web.AppKey("redis", CacheCluster)
ISSUER = web.AppKey("issuer", TokenIssuer)
CIPHER = web.AppKey("cipher", FieldCipher)
SUBMITS = web.AppKey("submits", Counter)

PROVIDERS = ("sharepoint", "gdrive")
FINAL = ("completed", "failed", "dead_lettered")
REQUEST_TTL_S = 300  # the seed's "Request: 5 min"
RESPONSE_TTL_S = 1800  # the seed's "Response: 30 min"
#: /v1/sync's cursor stops before events younger than this: event ids come from a sequence, and
#: a transaction that took id 10 may commit after one that took 11. Events past the cursor are
#: still returned (phones de-duplicate by id); the cursor just never skips an uncommitted id.
SYNC_SETTLE_S = 2.0
SYNC_PAGE = 200
MAX_BODY_BYTES = 64 * 1024


# ---- helpers -------------------------------------------------------------------------------


def _served(resp: web.StreamResponse, request: web.Request) -> web.StreamResponse:
    resp.headers["X-Served-By"] = request.app[SETTINGS].name
    return resp


def json_reply(request: web.Request, body: Any, status: int = 200) -> web.StreamResponse:
    return _served(web.json_response(body, status=status), request)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except JSON_ERRORS:
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "body must be a JSON object")
    try:  # JSON may escape a lone surrogate, which no UTF-8 column or cipher can take
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ApiError(400, "body holds a lone surrogate (not valid Unicode)") from None
    return body


def text_field(body: dict[str, Any], name: str, max_len: int) -> str:
    """A string of 1 to `max_len` characters without NUL, as `/openapi.json` says."""
    value = body.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= max_len or "\x00" in value:
        problem = f"required, a string of 1 to {max_len} characters, no NUL"
        raise ApiError(422, {"field": name, "problem": problem})
    return value


def document_field(body: dict[str, Any]) -> str:
    """The document's name: a plain file name (`contract.DOCUMENT_RULE`), never a path."""
    value = body.get("document")
    if not contract.is_document_name(value):
        raise ApiError(422, {"field": "document", "problem": contract.DOCUMENT_RULE})
    assert isinstance(value, str)
    return value


def authenticate(request: web.Request) -> Claims:
    try:
        return request.app[ISSUER].verify(bearer(request.headers.get("Authorization")))
    except InvalidToken as exc:
        raise ApiError(
            401, str(exc), headers={"WWW-Authenticate": 'Bearer realm="cloudwatcher"'}
        ) from None


async def rate_limit(request: web.Request, device_id: uuid.UUID, cost: int = 1) -> None:
    """A fixed one-second window per device, a call counting `cost` requests (at most the
    limit, so any call fits an empty window); fails open when Redis is down."""
    settings = request.app[SETTINGS]
    cost = max(1, min(cost, settings.rate_limit_per_s))
    redis = request.app[REDIS]
    window = int(time.time())
    key = f"rl:{{{device_id}}}:{window}"

    async def count() -> int:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.incrby(key, cost)
            pipe.expire(key, 2)
            n, _ = await pipe.execute()
        return int(n)

    n = await redis_or_none(redis, "rate limit", count)
    if n is not None and n > settings.rate_limit_per_s:
        raise ApiError(
            429,
            f"more than {settings.rate_limit_per_s} requests per second",
            headers={"Retry-After": "1"},
        )


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def cached_view(cipher: FieldCipher, key: str, sealed: str | bytes) -> dict[str, Any] | None:
    """The request view cached under `key`, or None (a miss) when it does not open: a value
    from before caching was sealed, or one tampered with, is read from PostgreSQL instead."""
    try:
        view: dict[str, Any] = json.loads(cipher.unseal(sealed, key))
    except ValueError as exc:
        log.warning("request cache: %s unreadable (%s): reading from PostgreSQL", key, exc)
        return None
    return view


def request_view(row: asyncpg.Record, response: str | None) -> dict[str, Any]:
    return {
        "request_id": str(row["request_id"]),
        "status": row["status"],
        "provider": row["provider"],
        "response": response,
        "error": row["error"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


async def planted_duplicate_key(request: web.Request, device_id: uuid.UUID, key: str) -> str:
    """The planted fault `duplicate_keys` (`reference_impl/planted.py`, test environments only):
    when it is armed and `key` already has a request, this submit is stored under a key of its
    own, so the phone's key gets a second request (once per key). Otherwise `key` itself."""
    planted = request.app[PLANTED]
    if planted.armed.get("duplicate_keys", 0) <= 0 or key in planted.planted["duplicate_keys"]:
        return key
    exists = await request.app[WRITE_POOL].fetchval(
        "SELECT 1 FROM requests WHERE device_id = $1 AND idempotency_key = $2", device_id, key
    )
    if exists and planted.take("duplicate_keys", key):
        return f"{key}#planted-duplicate"
    return key


# ---- handlers ------------------------------------------------------------------------------


async def register_device(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if settings.registration_secret and not same_secret(
        request.headers.get("X-Registration-Secret", ""), settings.registration_secret
    ):
        raise ApiError(403, "a valid X-Registration-Secret header is required to register")
    body = await read_json_object(request)
    platform = body.get("platform")
    if platform not in ("ios", "android"):
        raise ApiError(422, {"field": "platform", "problem": "one of ios, android"})
    name = text_field(body, "name", contract.DEVICE_NAME_MAX_LENGTH)
    device_id = uuid.uuid4()
    client_id, secret, secret_hash = new_client_credentials()
    await request.app[WRITE_POOL].execute(
        "INSERT INTO devices (device_id, platform, name, client_id, secret_hash)"
        " VALUES ($1, $2, $3, $4, $5)",
        device_id,
        platform,
        name,
        client_id,
        secret_hash,
    )
    log.info("registered device %s (%s)", device_id, platform)
    return json_reply(
        request,
        {"device_id": str(device_id), "client_id": client_id, "client_secret": secret},
        status=201,
    )


async def token(request: web.Request) -> web.StreamResponse:
    if request.content_type != "application/x-www-form-urlencoded":
        raise ApiError(415, "expected application/x-www-form-urlencoded")
    try:
        form = await request.post()
    except (UnicodeDecodeError, ValueError):
        raise ApiError(
            400, "the form body is not valid UTF-8 url-encoding", code="invalid_request"
        ) from None
    if form.get("grant_type") != "client_credentials":
        raise ApiError(400, "grant_type must be client_credentials", code="unsupported_grant_type")
    client_id, secret = form.get("client_id"), form.get("client_secret")
    if not isinstance(client_id, str) or not isinstance(secret, str) or not client_id or not secret:
        raise ApiError(400, "client_id and client_secret are required", code="invalid_request")
    # As /openapi.json says; a NUL would reach PostgreSQL, which refuses it in text (a 500).
    for value in (client_id, secret):
        if len(value) > contract.CREDENTIAL_MAX_LENGTH or "\x00" in value:
            raise ApiError(
                400,
                f"client_id and client_secret: at most {contract.CREDENTIAL_MAX_LENGTH} "
                "characters, no NUL",
                code="invalid_request",
            )
    query = "SELECT device_id, secret_hash FROM devices WHERE client_id = $1"
    row = await request.app[READ_POOL].fetchrow(query, client_id)
    if row is None:  # registered a moment ago, not replicated yet
        row = await request.app[WRITE_POOL].fetchrow(query, client_id)
    if row is None or not secret_matches(secret, bytes(row["secret_hash"])):
        raise ApiError(401, "unknown client or wrong secret", code="invalid_client")
    access, ttl = request.app[ISSUER].issue(row["device_id"], client_id)
    return json_reply(request, {"access_token": access, "token_type": "Bearer", "expires_in": ttl})


async def jwks(request: web.Request) -> web.StreamResponse:
    return json_reply(request, request.app[ISSUER].jwks())


async def openapi(request: web.Request) -> web.StreamResponse:
    return json_reply(request, OPENAPI)


async def submit(request: web.Request) -> web.StreamResponse:
    claims = authenticate(request)
    await rate_limit(request, claims.device_id)
    key = request.headers.get("Idempotency-Key", "")
    if not contract.is_idempotency_key(key):
        rule = contract.IDEMPOTENCY_KEY_RULE
        raise ApiError(400, f"an Idempotency-Key header ({rule}) is required")
    body = await read_json_object(request)
    provider = body.get("provider")
    if provider not in PROVIDERS:
        raise ApiError(422, {"field": "provider", "problem": "one of sharepoint, gdrive"})
    document = document_field(body)
    instruction = text_field(body, "instruction", contract.INSTRUCTION_MAX_LENGTH)
    body_hash = hashlib.sha256(
        json.dumps([provider, document, instruction], separators=(",", ":")).encode()
    ).digest()
    cipher = request.app[CIPHER]
    request_id = uuid.uuid4()
    if request.app[PLANTED].take("lose_acks", str(request_id)):  # planted: acknowledged, not kept
        return json_reply(request, {"request_id": str(request_id), "status": "queued"}, 202)
    key = await planted_duplicate_key(request, claims.device_id, key)
    cid = observability.correlation_id.get()
    ctx = f"{claims.device_id}/{request_id}"
    settings = request.app[SETTINGS]
    async with request.app[WRITE_POOL].acquire() as conn:
        # One statement, so one transaction and one round trip (two with pgBouncer's unnamed
        # statements) instead of BEGIN, two INSERTs and COMMIT: the submit path's largest cost
        # after TLS was its round trips through pgBouncer (README "Benchmarks", bench-api).
        inserted = await conn.fetchval(
            "WITH r AS ("
            " INSERT INTO requests (device_id, request_id, idempotency_key, body_hash, provider,"
            " document_enc, instruction_enc, status, correlation_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8)"
            " ON CONFLICT (device_id, idempotency_key) DO NOTHING RETURNING request_id),"
            " j AS (INSERT INTO jobs (device_id, request_id, correlation_id, max_attempts)"
            " SELECT $1, request_id, $8, $9 FROM r RETURNING request_id)"
            " SELECT request_id FROM j",
            claims.device_id,
            request_id,
            key,
            body_hash,
            provider,
            cipher.encrypt(document, ctx + "/document"),
            cipher.encrypt(instruction, ctx + "/instruction"),
            cid,
            settings.max_attempts,
        )
        if inserted is not None:
            request.app[SUBMITS].labels("created").inc()
            log.info("accepted request %s", request_id)
            return json_reply(request, {"request_id": str(request_id), "status": "queued"}, 202)
        existing = await conn.fetchrow(
            "SELECT request_id, body_hash, status FROM requests"
            " WHERE device_id = $1 AND idempotency_key = $2",
            claims.device_id,
            key,
        )
    if existing is None:
        # The conflicting row was seen by the INSERT but not by this second statement, which
        # pgBouncer may send to another server: a primary promoted meanwhile that never got
        # the row. The outcome is unknown: the phone retries under its key.
        raise ApiError(
            503,
            "the request's state is unknown, retry",
            code="unavailable",
            headers={"Retry-After": "1"},
        )
    if bytes(existing["body_hash"]) != body_hash:
        request.app[SUBMITS].labels("conflict").inc()
        raise ApiError(409, "this Idempotency-Key was used with a different body")
    request.app[SUBMITS].labels("replayed").inc()
    return json_reply(
        request, {"request_id": str(existing["request_id"]), "status": existing["status"]}, 202
    )


async def get_request(request: web.Request) -> web.StreamResponse:
    claims = authenticate(request)
    await rate_limit(request, claims.device_id)
    try:
        request_id = uuid.UUID(request.match_info["request_id"])
    except ValueError:
        raise ApiError(404, "no such request") from None
    redis = request.app[REDIS]
    cache_key = f"req:{request_id}"
    cached = await redis_or_none(redis, "request cache", lambda: redis.get(cache_key))
    view = cached_view(request.app[CIPHER], cache_key, cached) if cached else None
    if view is not None:
        if view.pop("device_id") != str(claims.device_id):
            raise ApiError(404, "no such request")
        return json_reply(request, view)
    query = (
        "SELECT request_id, status, provider, response_enc, error, created_at, updated_at"
        " FROM requests WHERE device_id = $1 AND request_id = $2"
    )
    row = await request.app[READ_POOL].fetchrow(query, claims.device_id, request_id)
    if row is None:
        # Read-your-writes: the replica may not have the request the primary just accepted.
        row = await request.app[WRITE_POOL].fetchrow(query, claims.device_id, request_id)
    if row is None:
        raise ApiError(404, "no such request")
    response = None
    if row["response_enc"] is not None:
        response = request.app[CIPHER].decrypt(
            bytes(row["response_enc"]), f"{claims.device_id}/{request_id}/response"
        )
    view = request_view(row, response)
    if row["status"] in FINAL:
        # Final states never change again: safe to cache.
        # Sealed: the view holds the response, which Redis must never see in the clear.
        payload = request.app[CIPHER].seal(
            json.dumps({**view, "device_id": str(claims.device_id)}), cache_key
        )
        await redis_or_none(
            redis,
            "request cache",
            lambda: redis.set(cache_key, payload, ex=REQUEST_TTL_S),
        )
    return json_reply(request, view)


#: Ids of a bulk status read that count as one request against the device's rate limit.
STATUS_IDS_PER_CALL = 25


def request_ids_field(body: dict[str, Any]) -> list[uuid.UUID]:
    """`request_ids`: 1 to `contract.STATUS_BATCH_MAX` request ids, duplicates read once."""
    ids = body.get("request_ids")
    problem = f"required, a list of 1 to {contract.STATUS_BATCH_MAX} request ids (UUIDs)"
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= contract.STATUS_BATCH_MAX
        or not all(contract.is_uuid(i) for i in ids)
    ):
        raise ApiError(422, {"field": "request_ids", "problem": problem})
    return list(dict.fromkeys(uuid.UUID(i) for i in ids))


async def request_statuses(request: web.Request) -> web.StreamResponse:
    """Many requests' statuses of this device in one call (one query on a replica, one on the
    primary for the ids the replica lacks): the harness's read-back
    after a run (a 30-minute soak acknowledges 26,000 requests, which one GET each could not
    read back within its settle) and a phone catching up after a long time offline. Statuses
    only: no response to decrypt. Another device's ids are `missing`, as its GET is a 404."""
    claims = authenticate(request)
    wanted = request_ids_field(await read_json_object(request))
    # Charged by the ids it reads: at 20 calls a second one device could otherwise have 10,000
    # ids a second looked up, the ones the replica lacks on the primary too.
    await rate_limit(request, claims.device_id, cost=-(-len(wanted) // STATUS_IDS_PER_CALL))
    query = (
        "SELECT request_id, status, updated_at FROM requests"
        " WHERE device_id = $1 AND request_id = ANY($2::uuid[])"
    )
    rows = await request.app[READ_POOL].fetch(query, claims.device_id, wanted)
    found = {r["request_id"]: r for r in rows}
    absent = [i for i in wanted if i not in found]
    if absent:  # read-your-writes: the replica may not have what the primary just accepted
        rows = await request.app[WRITE_POOL].fetch(query, claims.device_id, absent)
        found.update((r["request_id"], r) for r in rows)
    return json_reply(
        request,
        {
            "requests": [
                {
                    "request_id": str(i),
                    "status": found[i]["status"],
                    "updated_at": iso(found[i]["updated_at"]),
                }
                for i in wanted
                if i in found
            ],
            "missing": [str(i) for i in wanted if i not in found],
        },
    )


async def sync(request: web.Request) -> web.StreamResponse:
    claims = authenticate(request)
    await rate_limit(request, claims.device_id)
    raw = request.query.get("since", "0")
    if not contract.is_cursor(raw):
        raise ApiError(400, "since must be a cursor returned by /v1/sync (a non-negative integer)")
    since = int(raw)
    rows = await request.app[WRITE_POOL].fetch(
        "SELECT event_id, request_id, type, payload, created_at,"
        f" {settled('$3')} AS settled"
        " FROM events WHERE device_id = $1 AND event_id > $2 ORDER BY event_id LIMIT $4",
        claims.device_id,
        since,
        SYNC_SETTLE_S,
        SYNC_PAGE,
    )
    cursor = since
    for row in rows:
        if not row["settled"]:
            break
        cursor = row["event_id"]
    events = [
        {
            "event_id": r["event_id"],
            "type": r["type"],
            "request_id": str(r["request_id"]),
            "created_at": iso(r["created_at"]),
            **json.loads(r["payload"]),
        }
        for r in rows
    ]
    return json_reply(
        request, {"events": events, "next_cursor": str(cursor), "more": len(rows) == SYNC_PAGE}
    )


# ---- the app -------------------------------------------------------------------------------


#: Connections each pool opens before the replica is ready. A replica added by a scale-out
#: joins a saturated API and gets its share of the requests at once; with one connection it
#: opened the rest under that load, the opening (TLS, SCRAM, through the fault proxy) outlasted
#: the 2 s acquire deadline, and reads answered 503 (the autoscaling test saw 9 of them).
WARM_CONNECTIONS = 4


async def _stores(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[WRITE_POOL] = await create_pool(
        settings.pg_write_url,
        min_size=WARM_CONNECTIONS,
        max_size=20,
        ca_file=settings.tls_ca_file,
    )
    app[READ_POOL] = await create_pool(
        settings.pg_read_url,
        min_size=WARM_CONNECTIONS,
        max_size=20,
        ca_file=settings.tls_ca_file,
    )
    await ensure_schema(app[WRITE_POOL])
    app[REDIS] = create_redis(settings)
    await warm_redis(app[REDIS])
    # No live database query in readiness: every replica shares the database, so a stalled
    # write path would take them all out of the load balancer at once (reads, which go to the
    # replicas, would then fail too, and in-flight requests be cut). A replica that has its
    # stores is ready; one whose database is down answers 503 itself, with Retry-After.
    yield
    await app[REDIS].aclose()
    await app[READ_POOL].close()
    await app[WRITE_POOL].close()


def create_app(settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    metrics = observability.install(app, settings)
    metrics.declare("redis_request_ttl", REQUEST_TTL_S)
    metrics.declare("redis_response_ttl", RESPONSE_TTL_S)
    app[SUBMITS] = Counter(
        "cw_submits_total", "Submits by outcome", ["outcome"], registry=metrics.registry
    )
    app[ISSUER] = TokenIssuer(settings.jwt_key_path, settings.token_ttl_s)
    app[CIPHER] = FieldCipher(settings.field_key_path)
    app.cleanup_ctx.append(_stores)
    app.router.add_post("/v1/devices", register_device)
    app.router.add_post("/oauth/token", token)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/admin/keys", guarded(key_status(app[ISSUER])))
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/v1/requests", submit)
    app.router.add_post("/v1/request-statuses", request_statuses)
    app.router.add_get("/v1/requests/{request_id}", get_request)
    app.router.add_get("/v1/sync", sync)
    return app
