"""Notification hub: WebSockets of phones, fed from Redis pub/sub, resumable from the event log.

A connection registers its queue before it replays the events after `last_event_id` from
PostgreSQL, so nothing published during the replay is lost; events already sent are skipped by
id. Under load the sender drains its queue in one batch message. On shutdown every socket is
closed with 1001 (going away) so phones reconnect through HAProxy to another hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import redis.exceptions
from aiohttp import WSCloseCode, web
from prometheus_client import Counter, Gauge, Histogram

from reference_impl import contract, observability
from reference_impl.auth import InvalidToken, TokenIssuer, bearer, key_status
from reference_impl.control_plane import guarded
from reference_impl.errors import ApiError, error_middleware
from reference_impl.schema import ensure_schema
from reference_impl.settings import ServiceSettings
from reference_impl.stores import NOTIFY_CHANNEL, create_pool, single_node_pubsub

log = logging.getLogger("cw.hub")

SETTINGS = web.AppKey("settings", ServiceSettings)
ISSUER = web.AppKey("issuer", TokenIssuer)
POOL = web.AppKey("pool", asyncpg.Pool)
CONNS = web.AppKey("conns", defaultdict)
METRIC = web.AppKey("metric", dict)

REPLAY_LIMIT = 1000
QUEUE_LIMIT = 1000
BATCH_AT = 2  # more than one message waiting: send them as one batch


class Connection:
    def __init__(self, device_id: uuid.UUID, ws: web.WebSocketResponse) -> None:
        self.device_id = device_id
        self.ws = ws
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self.last_sent = 0
        #: Events up to this id predate the connection: a catch-up after a pub/sub outage
        #: starts above it (the phone did not ask for them).
        self.floor = 0
        self.ponged = asyncio.Event()
        self.last_beat = time.monotonic()  # the last heartbeat ping, or the connection


async def heartbeat(conn: Connection, every_s: float, intervals: Histogram) -> None:
    """Ping the phone every `every_s` and record the interval between the pings really sent,
    the first counted from the connection (what the websocket-heartbeat SLO reads: a stalled
    hub or a longer setting shows there); close the socket when a ping's pong has not come back
    within half the interval, as aiohttp's own heartbeat would (a dead peer).

    The first ping comes at a random point of the first interval: the sockets of a reconnect
    storm are not pinged in lockstep ever after, and a run shorter than the interval still
    sees heartbeats."""
    first = random.uniform(0, every_s)
    while not conn.ws.closed:
        await asyncio.sleep(max(0.0, conn.last_beat + first - time.monotonic()))
        first = every_s
        if conn.ws.closed:
            return
        now = time.monotonic()
        intervals.observe(now - conn.last_beat)
        conn.last_beat = now
        conn.ponged.clear()
        try:
            await conn.ws.ping()
            await asyncio.wait_for(conn.ponged.wait(), every_s / 2)
        except TimeoutError:
            await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"no pong")
            return
        except (ConnectionError, RuntimeError):  # the connection went meanwhile
            return


async def updates(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    try:
        token = request.query.get("access_token") or bearer(request.headers.get("Authorization"))
        claims = app[ISSUER].verify(token)
    except InvalidToken as exc:
        raise ApiError(401, str(exc)) from None
    raw_last = request.query.get("last_event_id", "")
    if raw_last and not contract.is_cursor(raw_last):
        raise ApiError(400, "last_event_id must be a non-negative integer")
    # No aiohttp heartbeat: ours (`heartbeat` below) measures the pings it really sends.
    ws = web.WebSocketResponse(autoping=False, max_msg_size=64 * 1024)
    await ws.prepare(request)
    conn = Connection(claims.device_id, ws)
    beat = asyncio.create_task(heartbeat(conn, settings.heartbeat_s, app[METRIC]["heartbeat"]))
    conns: defaultdict[uuid.UUID, set[Connection]] = app[CONNS]
    conns[claims.device_id].add(conn)  # before the replay: nothing published meanwhile is lost
    metrics = app[METRIC]
    metrics["connections"].inc()
    metrics["connects"].inc()
    try:
        await ws.send_json(
            {"type": "hello", "server": settings.name, "heartbeat_s": settings.heartbeat_s}
        )
        if raw_last:
            rows = await app[POOL].fetch(
                "SELECT event_id, request_id, type, payload FROM events"
                " WHERE device_id = $1 AND event_id > $2 ORDER BY event_id LIMIT $3",
                claims.device_id,
                int(raw_last),
                REPLAY_LIMIT,
            )
            conn.last_sent = int(raw_last)
            for r in rows:
                await ws.send_json(
                    {
                        "event_id": r["event_id"],
                        "type": r["type"],
                        "request_id": str(r["request_id"]),
                        "replayed": True,
                        **json.loads(r["payload"]),
                    }
                )
                conn.last_sent = r["event_id"]
                metrics["sent"].inc()
        else:
            conn.floor = await app[POOL].fetchval(
                "SELECT COALESCE(max(event_id), 0) FROM events WHERE device_id = $1",
                claims.device_id,
            )
        sender = asyncio.create_task(send_loop(conn, metrics))
        try:
            async for msg in ws:  # phones may send pings or acks; we only need to read them
                if msg.type == web.WSMsgType.TEXT and msg.data == "ping":
                    await ws.send_str("pong")
                elif msg.type == web.WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == web.WSMsgType.PONG:
                    conn.ponged.set()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        # A socket that outlived a due ping without getting it (the ping loop gone, or slow)
        # counts as the late heartbeat it was.
        if (overdue := time.monotonic() - conn.last_beat) > settings.heartbeat_s + 1:
            app[METRIC]["heartbeat"].observe(overdue)
        conns[claims.device_id].discard(conn)
        if not conns[claims.device_id]:
            conns.pop(claims.device_id, None)
        metrics["connections"].dec()
    return ws


async def send_loop(conn: Connection, metrics: dict[str, Any]) -> None:
    while True:
        first = await conn.queue.get()
        batch = [first]
        while not conn.queue.empty() and len(batch) < 100:
            batch.append(conn.queue.get_nowait())
        fresh = [e for e in batch if e["event_id"] > conn.last_sent]
        if not fresh:
            continue
        if len(fresh) >= BATCH_AT:
            await conn.ws.send_json({"type": "batch", "events": fresh})
        else:
            await conn.ws.send_json(fresh[0])
        conn.last_sent = max(e["event_id"] for e in fresh)
        metrics["sent"].inc(len(fresh))


async def listen(app: web.Application) -> None:
    """Deliver published events to the connections of their device; reconnect on failure."""
    conns: defaultdict[uuid.UUID, set[Connection]] = app[CONNS]
    failed: tuple[str, int] | None = None
    while True:
        try:
            client, pubsub = await single_node_pubsub(app[SETTINGS], avoid=failed)
        except ConnectionError as exc:
            log.warning("pub/sub unavailable: %s", exc)
            observability.tick(app, "pubsub")
            await asyncio.sleep(1)
            continue
        node = client.connection_pool.connection_kwargs
        try:
            await pubsub.subscribe(NOTIFY_CHANNEL)
            if failed is not None:
                # Events published while no node was listening: from the log, not lost.
                await catch_up(app)
            failed = None
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                observability.tick(app, "pubsub")
                if msg is None:
                    continue
                event = json.loads(msg["data"])
                device = uuid.UUID(event.pop("device_id"))
                for conn in list(conns.get(device, ())):
                    try:
                        conn.queue.put_nowait(event)
                    except asyncio.QueueFull:
                        # A phone that cannot keep up resumes from the event log instead.
                        await conn.ws.close(
                            code=WSCloseCode.TRY_AGAIN_LATER,
                            message=b"too slow, resume with last_event_id",
                        )
        except (OSError, ConnectionError, TimeoutError, redis.exceptions.RedisError) as exc:
            log.warning("pub/sub connection to %s:%s lost: %r", node["host"], node["port"], exc)
            failed = (node["host"], node["port"])
        except Exception:
            log.exception("pub/sub listener failed")
            failed = (node["host"], node["port"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()
        await asyncio.sleep(0.2)


async def catch_up(app: web.Application) -> int:
    """Queue, for every connected phone, the events logged after the last one it was sent
    (the sender skips any it already has). Returns how many were queued."""
    queued = 0
    for device, device_conns in list(app[CONNS].items()):
        for conn in list(device_conns):
            rows = await app[POOL].fetch(
                "SELECT event_id, request_id, type, payload FROM events"
                " WHERE device_id = $1 AND event_id > $2 ORDER BY event_id LIMIT $3",
                device,
                max(conn.last_sent, conn.floor),
                REPLAY_LIMIT,
            )
            for r in rows:
                with contextlib.suppress(asyncio.QueueFull):
                    conn.queue.put_nowait(
                        {
                            "event_id": r["event_id"],
                            "type": r["type"],
                            "request_id": str(r["request_id"]),
                            **json.loads(r["payload"]),
                        }
                    )
                    queued += 1
    log.info("pub/sub back: %d missed event(s) queued from the log", queued)
    return queued


async def _run(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = await create_pool(app[SETTINGS].pg_write_url, max_size=10)
    await ensure_schema(app[POOL])

    async def pg() -> bool:
        return bool(await app[POOL].fetchval("SELECT 1", timeout=2) == 1)

    app[observability.READY_CHECKS_KEY]["postgres"] = pg
    listener = asyncio.create_task(listen(app))
    yield
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    await app[POOL].close()


async def _going_away(app: web.Application) -> None:
    """On shutdown, tell every phone to reconnect elsewhere."""
    for conns in list(app[CONNS].values()):
        for conn in list(conns):
            await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"hub shutting down")


def create_app(settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    metrics = observability.install(app, settings)
    metrics.declare("websocket_heartbeat", settings.heartbeat_s)
    app[ISSUER] = TokenIssuer(settings.jwt_key_path, settings.token_ttl_s)
    app[CONNS] = defaultdict(set)
    app[METRIC] = {
        "connections": Gauge("cw_ws_connections", "Open WebSockets", registry=metrics.registry),
        "connects": Counter(
            "cw_ws_connects_total", "WebSocket connections accepted", registry=metrics.registry
        ),
        "sent": Counter(
            "cw_notifications_sent_total", "Events sent to phones", registry=metrics.registry
        ),
        "heartbeat": Histogram(
            "cw_ws_heartbeat_interval_seconds",
            "Interval between the heartbeat pings a socket was really sent",
            buckets=(1, 5, 10, 15, 20, 25, 29, 30, 31, 32, 35, 45, 60, 90, 120),
            registry=metrics.registry,
        ),
    }
    app.cleanup_ctx.append(_run)
    app.on_shutdown.append(_going_away)
    app.router.add_get("/v1/updates", updates)
    app.router.add_get("/admin/keys", guarded(key_status(app[ISSUER])))
    return app
