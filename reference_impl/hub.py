"""Notification hub: WebSockets of phones, fed from Redis pub/sub, resumable from the event log.

The protocol a phone speaks (the README says the same):

- `GET /v1/updates` with `Authorization: Bearer <token>`. A token in the URL (`?access_token=`)
  is refused with 400: URLs end up in logs and proxies.
- `last_event_id` (optional) is the `resume` value of the last message the phone received,
  opaque to it: `<cursor>[,<step>...]`, "I have every event up to the cursor, and these above it"
  (each id as its step from the one before, in base 36). A bare event id N still works
  ("everything up to N"). Without it, only events that commit from now on are sent.
- Messages: `{"type": "hello", "server", "heartbeat_s", "resume"}`, then events
  (`{"event_id", "type", "request_id", "status", "resume"}`, `"replayed": true` when they come
  from the log) or `{"type": "batch", "events": [...], "resume"}` under load.
- Close codes: 1001 the hub is going away (reconnect, maybe elsewhere); 4001 "token expired",
  sent at the token's `exp` plus the verification leeway (renew the token, reconnect);
  4002 "resume": more events than one connect replays (`REPLAY_PAGES` pages, the last message
  then being `{"type": "more", "resume"}`), or than a catch-up queues, or the phone fell behind;
  reconnect at once with `last_event_id=<resume>`; 1013 the event log is unavailable (retry
  later); 1011 an internal error (resume).

Exactly once. Event ids come from a sequence inside concurrent transactions, so they commit, and
are published, out of order: "drop every id at or below the last one sent" skips an event
forever. Each socket keeps a `Delivery`: a cursor below which the phone has everything, and the
ids delivered above it. The cursor moves past an id only once no smaller id can still arrive:
for an id heard on pub/sub, `SETTLE_S` after it was heard *and* after a pong proved that
everything published by then was heard (or caught up from the log); for a row read from the log,
when it is older than `SETTLE_S` (as `/v1/sync` does). Both rest on one assumption: a
transaction commits, and its event is published, within `SETTLE_S` of taking its id. An event
that arrives later than that is still sent on a live socket (delivered ids are remembered for
`Delivery.HORIZON_S`); only a resume in between could miss it, and background sync has it.

Nothing one phone does can stall the others: the pub/sub path only queues (a full queue closes
that socket, in the background), every close has a deadline after which the connection is cut,
and the going-away closes at shutdown run in parallel. No task dies silently: the listener
survives any failure of an iteration (logged, started over, a catch-up from the log after every
new subscription); a sender that fails closes its socket so the phone resumes; were the listener
to end anyway, the process stops (`observability.supervise`), for the supervisor to restart it.
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
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
import redis.exceptions
from aiohttp import WSCloseCode, web
from prometheus_client import Counter, Gauge, Histogram

from reference_impl import contract, observability
from reference_impl.auth import LEEWAY_S, InvalidToken, TokenIssuer, bearer, key_status
from reference_impl.control_plane import guarded
from reference_impl.errors import ApiError, error_middleware
from reference_impl.schema import ensure_schema, settled
from reference_impl.settings import ServiceSettings
from reference_impl.stores import (
    MEMBERSHIP_EVERY_S,
    NOTIFY_CHANNEL,
    cluster_field,
    cluster_state,
    create_pool,
    single_node_pubsub,
)

log = logging.getLogger("cw.hub")

REPLAY_LIMIT = 1000  # events per page of a replay, and per catch-up
REPLAY_PAGES = 10  # pages one connect replays; more: "more", then 4002 (the phone resumes)
FRESH_ROWS = 100  # a socket without last_event_id: its device's latest events predate it
QUEUE_LIMIT = 1000
BATCH_AT = 2  # more than one message waiting: send them as one batch
BATCH_MAX = 100
#: How long a transaction may hold an event id before committing, plus its publish's way to us.
SETTLE_S = 5.0
#: Ids above the cursor a `resume` value lists at most (more are sent again, never skipped),
#: and its length (`contract.RESUME_PATTERN` says the same to clients).
TOKEN_MAX_IDS = contract.RESUME_MAX_IDS
TOKEN_MAX_CHARS = contract.RESUME_MAX_LENGTH
#: How long the database pool may take to close gracefully at shutdown before it is cut.
POOL_CLOSE_S = 2.0
CLOSE_DEADLINE_S = 2.0  # a peer that has not taken our close frame and answered by then is cut
TOKEN_LEEWAY_S = LEEWAY_S  # what TokenIssuer.verify allows past `exp`
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_RESUME = 4002
PING_EVERY_S = 1.0
#: How late a cut shows: a node is flagged after the cluster's node timeout (2 s,
#: `env.configs.REDIS_NODE_TIMEOUT_MS`) and read within MEMBERSHIP_EVERY_S; until then a pong
#: may come from our side of a cut while a worker publishes to the other.
PROOF_LAG_S = 2.0 + 2 * MEMBERSHIP_EVERY_S
PONG_TIMEOUT_S = 10.0
DB_TIMEOUT_S = 10.0
CATCH_UP_CHUNK = 1000  # devices per catch-up query

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = _DIGITS[d] + out
        if n == 0:
            return out


class Delivery:
    """What one socket has delivered to its phone, and the `resume` value that says so. Pure:
    the caller passes the monotonic time and what pub/sub has proven (`heard_until`)."""

    #: Bound on the ids remembered on each side of the cursor.
    MAX_TRACKED = 1000
    #: Ids at or below the cursor stay remembered this long, so a late duplicate is not resent.
    HORIZON_S = 60.0

    def __init__(self, cursor: int, have: Iterable[int] = (), now: float = 0.0) -> None:
        self.cursor = cursor
        self._floor = cursor  # every id at or below it counts as delivered
        self._above = {i: now for i in have if i > cursor}  # delivered above the cursor: when
        self._below: dict[int, float] = {}  # delivered at or below the cursor, recently

    @classmethod
    def from_token(cls, raw: str, now: float) -> Delivery:
        """From a `resume` value (or a bare event id); ValueError when malformed."""
        if not contract.is_resume(raw):
            raise ValueError(f"not a resume value: {raw[:40]!r}")
        first, *deltas = raw.split(",")
        have, last = [], int(first)
        for delta in deltas:
            last += int(delta, 36)
            have.append(last)
        return cls(int(first), have, now)

    @classmethod
    def fresh(cls, recent: Iterable[tuple[int, bool]], now: float, complete: bool) -> Delivery:
        """For a phone that asked for no replay: its device's latest events `(id, settled)`
        predate the socket. `complete` says they are all the device has."""
        rows = sorted(recent)
        settled = [i for i, ok in rows if ok]
        # Nothing settled among them: the cursor goes below them, to 0 if they are all.
        fallback = 0 if complete or not rows else rows[0][0] - 1
        cursor = max(settled, default=fallback)
        return cls(cursor, (i for i, _ in rows), now)

    def offer(self, event_id: int, now: float, settled: bool = False) -> bool:
        """True when the phone does not have `event_id` yet: send it (it is recorded as sent).
        `settled`: a row of the log, read in id order from at most the cursor, old enough that
        no smaller id can still commit: the cursor moves to it."""
        new = not (event_id <= self._floor or event_id in self._above or event_id in self._below)
        if new:
            (self._above if event_id > self.cursor else self._below)[event_id] = now
        if settled and event_id > self.cursor:
            self._advance(event_id)
        return new

    def settle(self, heard_until: float, now: float, advance: bool = True) -> None:
        """Move the cursor over what was heard `SETTLE_S` before pub/sub proved it heard
        everything (`heard_until`), unless `advance` is False (an event heard is still queued
        for the socket, not offered yet: the cursor must not pass it); forget what is older
        than the horizon, and bound what is tracked, either way."""
        ready = [i for i, t in self._above.items() if t <= heard_until - SETTLE_S]
        if ready and advance:
            self._advance(max(ready))
        if len(self._above) > self.MAX_TRACKED:  # a flood: give up the oldest (resume may skip)
            self._advance(sorted(self._above)[-self.MAX_TRACKED - 1])
        old = [i for i, t in self._below.items() if t < now - self.HORIZON_S]
        if len(self._below) - len(old) > self.MAX_TRACKED:
            old = sorted(self._below)[: len(self._below) - self.MAX_TRACKED]
        for i in old:
            del self._below[i]
            self._floor = max(self._floor, i)

    def _advance(self, cursor: int) -> None:
        for i in [i for i in self._above if i <= cursor]:
            self._below[i] = self._above.pop(i)
        self.cursor = cursor

    def token(self) -> str:
        """The `resume` value: the cursor, then (some of) the ids delivered above it."""
        parts, size, last = [str(self.cursor)], 0, self.cursor
        for i in sorted(self._above)[:TOKEN_MAX_IDS]:
            part = _base36(i - last)
            size += len(part) + 1
            if size > TOKEN_MAX_CHARS - 20:
                break
            parts.append(part)
            last = i
        return ",".join(parts)

    def tracked(self) -> int:
        return len(self._above) + len(self._below)


# ---- the app's state -------------------------------------------------------------------------


@dataclass
class Listening:
    """What the pub/sub listener has proven: every event published before `heard_until`
    (monotonic) was heard, or read from the log by a catch-up."""

    heard_until: float = float("-inf")


Item = tuple[dict[str, Any], bool]  # an event, and whether it is a settled row of the log


class Connection:
    def __init__(
        self, device_id: uuid.UUID, ws: web.WebSocketResponse, request: web.Request
    ) -> None:
        self.device_id = device_id
        self.ws = ws
        self.transport = request.transport
        self.queue: asyncio.Queue[Item] = asyncio.Queue(QUEUE_LIMIT)
        self.delivery: Delivery | None = None  # set once the socket knows where it starts
        self.missed_catch_up = False  # a catch-up ran before `delivery` was set
        self.closing = False
        self.ponged = asyncio.Event()
        self.last_beat = time.monotonic()  # the last heartbeat ping, or the connection


SETTINGS = web.AppKey("settings", ServiceSettings)
ISSUER = web.AppKey("issuer", TokenIssuer)
POOL = web.AppKey("pool", asyncpg.Pool)
CONNS = web.AppKey("conns", defaultdict)
METRIC = web.AppKey("metric", dict)
HEARD = web.AppKey("heard", Listening)
TASKS = web.AppKey("tasks", set)

EVENTS_AFTER = (
    f"SELECT event_id, request_id, type, payload, {settled('$4')} AS settled"
    " FROM events WHERE device_id = $1 AND event_id > $2 ORDER BY event_id LIMIT $3"
)
#: The catch-up for many sockets in one query: each device's events after its lowest cursor.
CATCH_UP = (
    "SELECT c.device_id, e.event_id, e.request_id, e.type, e.payload,"
    f" {settled('$4', 'e')} AS settled"
    " FROM unnest($1::uuid[], $2::bigint[]) AS c(device_id, after)"
    " CROSS JOIN LATERAL (SELECT event_id, request_id, type, payload, created_at FROM events"
    "  WHERE device_id = c.device_id AND event_id > c.after ORDER BY event_id LIMIT $3) e"
    " ORDER BY c.device_id, e.event_id"
)
LATEST = (
    f"SELECT event_id, {settled('$3')} AS settled"
    " FROM events WHERE device_id = $1 ORDER BY event_id DESC LIMIT $2"
)


class LogUnavailable(Exception):
    """The event log (PostgreSQL) did not answer in time."""


async def query(app: web.Application, sql: str, *args: Any) -> list[asyncpg.Record]:
    """A read of the event log with a deadline, pool acquisition included."""
    try:
        async with asyncio.timeout(DB_TIMEOUT_S):
            rows: list[asyncpg.Record] = await app[POOL].fetch(sql, *args)
            return rows
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise LogUnavailable(repr(exc)) from exc


def _event(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "event_id": row["event_id"],
        "type": row["type"],
        "request_id": str(row["request_id"]),
        **json.loads(row["payload"]),
    }


def spawn(app: web.Application, coro: Coroutine[Any, Any, None], name: str) -> None:
    """A background task the app holds (not the garbage collector) and whose failure is
    logged when it happens."""
    tasks: set[asyncio.Task[None]] = app[TASKS]
    task = asyncio.create_task(coro, name=name)
    tasks.add(task)

    def reap(t: asyncio.Task[None]) -> None:
        tasks.discard(t)
        if not t.cancelled() and (exc := t.exception()) is not None:
            log.error("task %s failed", t.get_name(), exc_info=exc)

    task.add_done_callback(reap)


# ---- sockets -----------------------------------------------------------------------------------


def register(app: web.Application, conn: Connection) -> None:
    app[CONNS][conn.device_id].add(conn)


def unregister(app: web.Application, conn: Connection) -> None:
    conns: defaultdict[uuid.UUID, set[Connection]] = app[CONNS]
    conns[conn.device_id].discard(conn)
    if not conns[conn.device_id]:
        conns.pop(conn.device_id, None)


async def close(app: web.Application, conn: Connection, code: int, reason: str, why: str) -> None:
    """Close one socket within CLOSE_DEADLINE_S; a peer that has not taken the close frame and
    answered by then is cut off (its unsent data dropped)."""
    if conn.ws.closed:
        return
    conn.closing = True
    unregister(app, conn)
    app[METRIC]["closes"].labels(why).inc()
    try:
        async with asyncio.timeout(CLOSE_DEADLINE_S):
            await conn.ws.close(code=code, message=reason.encode())
    except TimeoutError:
        log.info("%s did not answer our close (%s) in time: cut off", conn.device_id, why)
    except Exception as exc:
        log.info("closing the socket of %s (%s): %r", conn.device_id, why, exc)
    transport = conn.transport
    if transport is None:
        return
    if transport.get_write_buffer_size():
        transport.abort()  # a peer that does not read: drop what is stuck, free the socket
    elif not transport.is_closing():
        transport.close()  # a FIN, not a reset: what was sent (our close frame) still arrives


def close_soon(app: web.Application, conn: Connection, code: int, reason: str, why: str) -> None:
    """Close in the background: never on the caller's path (the pub/sub listener's, a timer's)."""
    if conn.closing:
        return
    conn.closing = True
    unregister(app, conn)  # nothing more is queued for it
    spawn(app, close(app, conn, code, reason, why), f"close-{conn.device_id}")


async def heartbeat(app: web.Application, conn: Connection, every_s: float) -> None:
    """Ping the phone every `every_s` and record the interval between the pings really sent,
    the first counted from the connection (what the websocket-heartbeat SLO reads: a stalled
    hub or a longer setting shows there); close the socket when a ping's pong has not come back
    within half the interval, as aiohttp's own heartbeat would (a dead peer).

    The first ping comes at a random point of the first interval: the sockets of a reconnect
    storm are not pinged in lockstep ever after, and a run shorter than the interval still
    sees heartbeats."""
    intervals = app[METRIC]["heartbeat"]
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
        except TimeoutError:  # a dead peer: closed in the background, with a deadline
            close_soon(app, conn, WSCloseCode.GOING_AWAY, "no pong", "no_pong")
            return
        except (ConnectionError, RuntimeError):  # the connection went meanwhile
            return
        except Exception:  # never a socket left without its heartbeat: the phone reconnects
            log.exception("heartbeat of %s failed", conn.device_id)
            close_soon(app, conn, WSCloseCode.INTERNAL_ERROR, "internal error", "error")
            return


async def updates(request: web.Request) -> web.StreamResponse:
    app = request.app
    if "access_token" in request.query:
        raise ApiError(
            400,
            "a token in the URL is refused (URLs end up in logs and proxies):"
            " send it as 'Authorization: Bearer <token>'",
        )
    try:
        claims = app[ISSUER].verify(bearer(request.headers.get("Authorization")))
    except InvalidToken as exc:
        raise ApiError(
            401, str(exc), headers={"WWW-Authenticate": 'Bearer realm="cloudwatcher"'}
        ) from None
    raw = request.query.get("last_event_id", "")
    try:
        resumed = Delivery.from_token(raw, time.monotonic()) if raw else None
    except ValueError:
        raise ApiError(
            400, "last_event_id must be the `resume` value of the last message, or an event id"
        ) from None
    settings = app[SETTINGS]
    # No aiohttp heartbeat: ours (`heartbeat`) measures the pings it really sends.
    ws = web.WebSocketResponse(autoping=False, max_msg_size=64 * 1024, timeout=CLOSE_DEADLINE_S)
    await ws.prepare(request)
    conn = Connection(claims.device_id, ws, request)
    conn.delivery = resumed
    beat = asyncio.create_task(heartbeat(app, conn, settings.heartbeat_s), name="heartbeat")
    register(app, conn)  # before the replay: nothing published meanwhile is lost
    metrics = app[METRIC]
    metrics["connections"].inc()
    metrics["connects"].inc()
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, claims.expires_at + TOKEN_LEEWAY_S - time.time()),
        partial(close_soon, app, conn, CLOSE_TOKEN_EXPIRED, "token expired", "token_expired"),
    )
    sender: asyncio.Task[None] | None = None
    try:
        if await start(app, conn):
            sender = asyncio.create_task(send_loop(app, conn), name=f"send-{conn.device_id}")
            await read_phone(conn)
    finally:
        expiry.cancel()
        for task in (sender, beat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # each ends by itself on its failures: an error here is a bug
        # A socket that outlived a due ping without getting it (the ping loop gone, or slow)
        # counts as the late heartbeat it was.
        if (overdue := time.monotonic() - conn.last_beat) > settings.heartbeat_s + 1:
            metrics["heartbeat"].observe(overdue)
        unregister(app, conn)
        metrics["connections"].dec()
    return ws


async def read_phone(conn: Connection) -> None:
    """Until the socket ends: a phone sends text pings (answered), WebSocket pings, the pongs
    of our heartbeat, maybe acks; we only need to read them."""
    async for msg in conn.ws:
        if msg.type == web.WSMsgType.TEXT and msg.data == "ping":
            await conn.ws.send_str("pong")
        elif msg.type == web.WSMsgType.PING:
            await conn.ws.pong(msg.data)
        elif msg.type == web.WSMsgType.PONG:
            conn.ponged.set()


async def start(app: web.Application, conn: Connection) -> bool:
    """Hello, then the replay the phone asked for; False when the socket was closed instead
    (more than one replay, the log unavailable)."""
    try:
        if conn.delivery is None:
            rows = await query(app, LATEST, conn.device_id, FRESH_ROWS, SETTLE_S)
            recent = [(r["event_id"], r["settled"]) for r in rows]
            complete = len(rows) < FRESH_ROWS
            conn.delivery = Delivery.fresh(recent, time.monotonic(), complete)
            replay = conn.missed_catch_up
        else:
            replay = True
        settings = app[SETTINGS]
        await conn.ws.send_json(
            {
                "type": "hello",
                "server": settings.name,
                "heartbeat_s": settings.heartbeat_s,
                "resume": conn.delivery.token(),
            }
        )
        more = replay and await send_replay(app, conn)
    except LogUnavailable as exc:
        log.warning("no replay for %s: %s", conn.device_id, exc)
        await close(app, conn, WSCloseCode.TRY_AGAIN_LATER, "events unavailable, retry", "db")
        return False
    except ConnectionError:  # the phone left during its replay
        return False
    if more:  # the rows replayed may have moved the cursor: tell the phone, then let it resume
        with contextlib.suppress(ConnectionError):
            await conn.ws.send_json({"type": "more", "resume": conn.delivery.token()})
        await close(app, conn, CLOSE_RESUME, "more events: resume with last_event_id", "more")
        return False
    return True


async def send_replay(app: web.Application, conn: Connection) -> bool:
    """Send what the log holds after the phone's cursor that it lacks, page after page (each
    after the last id sent: whatever commits late below it meanwhile, the socket hears); True
    when more remain after REPLAY_PAGES pages."""
    delivery = conn.delivery
    assert delivery is not None
    after = delivery.cursor
    for page in range(REPLAY_PAGES):
        rows = await query(app, EVENTS_AFTER, conn.device_id, after, REPLAY_LIMIT, SETTLE_S)
        for r in rows:
            now = time.monotonic()
            # A settled row moves the cursor only on the first page: it starts at the cursor,
            # so every id below the row is in it. Later pages start higher.
            if delivery.offer(r["event_id"], now, r["settled"] and page == 0):
                delivery.settle(app[HEARD].heard_until, now, conn.queue.empty())  # see send_loop
                await conn.ws.send_json({**_event(r), "replayed": True, "resume": delivery.token()})
                app[METRIC]["sent"].inc()
        if len(rows) < REPLAY_LIMIT:
            return False
        after = rows[-1]["event_id"]
    return True


async def send_loop(app: web.Application, conn: Connection) -> None:
    """Drain the socket's queue, each event once. A failure closes the socket (the phone
    resumes from the log): never a sender dead behind a socket that looks alive."""
    delivery = conn.delivery
    assert delivery is not None
    try:
        while True:
            batch = [await conn.queue.get()]
            while not conn.queue.empty() and len(batch) < BATCH_MAX:
                batch.append(conn.queue.get_nowait())
            now = time.monotonic()
            fresh = [e for e, settled in batch if delivery.offer(e["event_id"], now, settled)]
            # The cursor moves over what was heard only with nothing heard still waiting here:
            # an event in the queue was heard but not offered, and the resume token would say
            # the phone has it (the property test found that, one run in a few hundred).
            delivery.settle(app[HEARD].heard_until, now, conn.queue.empty())
            if not fresh:
                continue
            resume = delivery.token()
            if len(fresh) >= BATCH_AT:
                await conn.ws.send_json({"type": "batch", "events": fresh, "resume": resume})
            else:
                await conn.ws.send_json({**fresh[0], "resume": resume})
            app[METRIC]["sent"].inc(len(fresh))
    except ConnectionError as exc:  # the socket went away under us
        log.info("socket of %s lost: %r", conn.device_id, exc)
        close_soon(app, conn, WSCloseCode.INTERNAL_ERROR, "lost", "lost")
    except Exception:
        log.exception("sender of %s failed", conn.device_id)
        close_soon(app, conn, WSCloseCode.INTERNAL_ERROR, "internal error, resume", "error")


# ---- pub/sub -----------------------------------------------------------------------------------


def dispatch(app: web.Application, data: str) -> None:
    """Queue a published event for the sockets of its device; never waits. A socket whose
    queue is full is closed in the background (its phone resumes from the log)."""
    try:
        event = json.loads(data)
        device = uuid.UUID(event.pop("device_id"))
        if type(event.get("event_id")) is not int:
            raise ValueError("event_id is not an integer")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("malformed notification dropped: %r", exc)
        return
    for conn in list(app[CONNS].get(device, ())):
        try:
            conn.queue.put_nowait((event, False))
        except asyncio.QueueFull:
            close_soon(app, conn, CLOSE_RESUME, "too slow, resume with last_event_id", "too_slow")


async def catch_up(app: web.Application, conns: list[Connection]) -> int:
    """Queue, for each socket, the logged events above its cursor (one query per
    CATCH_UP_CHUNK devices); a socket with more than its queue holds is closed so its phone
    resumes. Returns how many events were queued."""
    by_device: defaultdict[uuid.UUID, list[Connection]] = defaultdict(list)
    for conn in conns:
        if conn.delivery is None:
            conn.missed_catch_up = True  # its own start will replay
        elif not conn.closing:
            by_device[conn.device_id].append(conn)
    devices = list(by_device)
    queued = 0
    for i in range(0, len(devices), CATCH_UP_CHUNK):
        chunk = devices[i : i + CATCH_UP_CHUNK]
        afters = [min(c.delivery.cursor for c in by_device[d] if c.delivery) for d in chunk]
        rows = await query(app, CATCH_UP, chunk, afters, REPLAY_LIMIT, SETTLE_S)
        per_device: defaultdict[uuid.UUID, list[Item]] = defaultdict(list)
        for r in rows:
            per_device[r["device_id"]].append((_event(r), r["settled"]))
        for device, items in per_device.items():
            for conn in by_device[device]:
                queued += _queue_all(app, conn, items)
    return queued


def _queue_all(app: web.Application, conn: Connection, items: list[Item]) -> int:
    if conn.closing:
        return 0
    if len(items) >= REPLAY_LIMIT or len(items) > QUEUE_LIMIT - conn.queue.qsize():
        close_soon(app, conn, CLOSE_RESUME, "more events: resume with last_event_id", "more")
        return 0
    for item in items:
        conn.queue.put_nowait(item)
    return len(items)


def all_connections(app: web.Application) -> list[Connection]:
    return [c for conns in list(app[CONNS].values()) for c in list(conns)]


async def listen(app: web.Application) -> None:
    """Hear published events and hand them to their sockets. Never ends: any failure of an
    iteration is logged and the listener starts over (another node, then a catch-up)."""
    avoid: tuple[str, int] | None = None
    while True:
        try:
            avoid = await listen_once(app, avoid)
        except Exception:
            log.exception("pub/sub listener failed; starting over")
            avoid = None
        observability.tick(app, "pubsub")
        await asyncio.sleep(0.2)


async def listen_once(
    app: web.Application, avoid: tuple[str, int] | None
) -> tuple[str, int] | None:
    """One subscription, until it fails; returns the node that failed (tried last next)."""
    try:
        client, pubsub, member = await single_node_pubsub(app[SETTINGS], avoid=avoid)
    except ConnectionError as exc:
        log.warning("pub/sub unavailable: %s", exc)
        await asyncio.sleep(0.8)
        return None
    node = client.connection_pool.connection_kwargs
    try:
        await pubsub.subscribe(NOTIFY_CHANNEL)
        await hear(app, pubsub, Membership(client, member))
    except (OSError, ConnectionError, TimeoutError, redis.exceptions.RedisError) as exc:
        log.warning("pub/sub connection to %s:%s lost: %r", node["host"], node["port"], exc)
        return (node["host"], node["port"])
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await pubsub.aclose()
                await client.aclose()
    return None


class Membership:
    """The cluster as the node we listen on sees it, read every MEMBERSHIP_EVERY_S on a
    connection of its own (CLUSTER INFO and CLUSTER NODES).

    - A node cut off from the others hears nothing published elsewhere, yet answers our pings:
      `check` raises ConnectionError once it says `cluster_state:fail`, so the listener moves
      to a node that sees the cluster whole and catches up. A node taken because none saw it
      whole (`member` False) is left only after NON_MEMBER_S, to look again without churning
      while the whole cluster is down.
    - A pong proves we heard everything published before its ping only while every publisher
      reaches our side of the cluster. While a master that serves slots is failing (flagged
      `fail` or `fail?`) or just after a failover (the epoch moved), a worker may still be
      publishing to a master cut off from ours: the listener is `unsure` until SETTLE_S after
      the last such sign, and from its start until its first read. It then holds
      `heard_until` (no cursor moves past an id it may have missed) and catches up from the
      log every SETTLE_S, and once more when sure again (`catch_up_due`). The signs come late
      (a node is flagged after the cluster's node timeout, read a second later): a pong
      proves only what was published PROOF_LAG_S before its ping (`proven`).
    """

    NON_MEMBER_S = 10.0

    def __init__(self, client: Any, member: bool) -> None:
        self.client = client
        self.member = member
        self.since = time.monotonic()
        self.task: asyncio.Task[ClusterView] | None = None
        self.next_at = self.since + MEMBERSHIP_EVERY_S
        self.epoch: str | None = None
        # Unsure until the first read: nothing is known of the cluster yet.
        self.unsure_until = self.since + 2 * MEMBERSHIP_EVERY_S
        # The subscription's own catch-up covers its start: the next one SETTLE_S later.
        self.next_catch_up = self.since + SETTLE_S
        self.was_unsure = True

    def check(self, now: float) -> None:
        if self.task is not None and self.task.done():
            task, self.task = self.task, None
            # An error reading it says nothing of the cluster: the pinger watches the link.
            view = None if task.cancelled() or task.exception() else task.result()
            if view is not None:
                moved = self.epoch is not None and view.epoch != self.epoch
                self.epoch = view.epoch
                if view.failing or moved:
                    self.unsure_until = now + SETTLE_S
                if not view.whole and (self.member or now - self.since >= self.NON_MEMBER_S):
                    raise ConnectionError("the node left the cluster (cluster_state:fail)")
        if self.task is None and now >= self.next_at:
            self.next_at = now + MEMBERSHIP_EVERY_S
            self.task = asyncio.create_task(self._read())

    def unsure(self, now: float) -> bool:
        return now < self.unsure_until

    @staticmethod
    def proven(ping_sent_at: float) -> float:
        """What a pong to a ping sent at `ping_sent_at` proves was heard: what was published
        up to PROOF_LAG_S before it (a cut is seen that late)."""
        return ping_sent_at - PROOF_LAG_S

    def catch_up_due(self, now: float) -> bool:
        """Whether to catch up from the log now: every SETTLE_S while unsure, and once on
        becoming sure again (what was published to a node cut off from ours is in the log)."""
        unsure = self.unsure(now)
        ended, self.was_unsure = self.was_unsure and not unsure, unsure
        if unsure and now >= self.next_catch_up:
            self.next_catch_up = now + SETTLE_S
            return True
        if ended:
            self.next_catch_up = now + SETTLE_S
        return ended

    async def _read(self) -> ClusterView:
        async with asyncio.timeout(MEMBERSHIP_EVERY_S):
            info = await self.client.execute_command("CLUSTER INFO")
            nodes = await self.client.execute_command("CLUSTER NODES")
        return ClusterView.parse(info, nodes)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


@dataclass(frozen=True)
class ClusterView:
    """One node's view: whether it sees the cluster whole, its epoch, whether a master that
    serves slots is failing (`fail`, or `fail?`: not reached within the node timeout).
    Replicas and masters without slots do not count: workers publish to masters, and a
    replaced node stays listed as `fail` until it is forgotten."""

    whole: bool
    epoch: str
    failing: bool

    @classmethod
    def parse(cls, info: Any, nodes: Any) -> ClusterView:
        return cls(
            whole=cluster_state(info) == "ok",
            epoch=cluster_field(info, "cluster_current_epoch"),
            failing=any(
                "master" in flags and ("fail" in flags or "fail?" in flags) and slots
                for flags, slots in _nodes(nodes)
            ),
        )


def _nodes(nodes: Any) -> list[tuple[set[str], bool]]:
    """(flags, serves slots) of each node in CLUSTER NODES' answer: redis-py's parsed dict
    (address -> fields), or the raw text."""
    if isinstance(nodes, dict):
        return [
            (set(str(n.get("flags", "")).split(",")), bool(n.get("slots"))) for n in nodes.values()
        ]
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8:
            out.append((set(fields[2].split(",")), len(fields) > 8))
    return out


class Pinger:
    """One PING at a time on the subscription. Redis answers in order, so its pong proves that
    everything published to our node before the ping has reached us."""

    def __init__(self) -> None:
        self.sent = 0
        self.waiting: tuple[str, float] | None = None  # payload, monotonic time sent
        self.last = float("-inf")

    def due(self, now: float) -> str | None:
        """The payload of the ping to send now, if one is due; ConnectionError when the last
        one went unanswered too long (the subscription is dead without saying so)."""
        if self.waiting is not None:
            if now - self.waiting[1] > PONG_TIMEOUT_S:
                raise ConnectionError(f"no pong within {PONG_TIMEOUT_S} s")
            return None
        if now - self.last < PING_EVERY_S:
            return None
        self.sent += 1
        self.waiting, self.last = (f"hub-{self.sent}", now), now
        return self.waiting[0]

    def pong(self, response: Any) -> float | None:
        """When `response` is the pong we wait for: the time its ping was sent. Redis answers
        `["pong", payload]`; redis-py with decoded responses hands over the bare payload."""
        if isinstance(response, list | tuple) and len(response) == 2 and response[0] == "pong":
            response = response[1]
        if self.waiting is None or response != self.waiting[0]:
            return None
        sent_at, self.waiting = self.waiting[1], None
        return sent_at


async def hear(app: web.Application, pubsub: Any, membership: Membership | None = None) -> None:
    """The subscribed loop. A catch-up from the log runs beside it (what was published before we
    listened; retried until it succeeds); pongs move `heard_until` once it is done; the node's
    `membership` is watched beside the pings."""
    heard: Listening = app[HEARD]
    pinger = Pinger()
    catching_up: asyncio.Task[int] | None = None
    due, retry_at = True, 0.0
    rerun = False  # asked for while one ran: it may have read the log before what is missed
    try:
        while True:
            now = time.monotonic()
            if due and catching_up is None and now >= retry_at:
                catching_up = asyncio.create_task(catch_up(app, all_connections(app)))
            if catching_up is not None and catching_up.done():
                if (exc := catching_up.exception()) is None:
                    log.info("pub/sub: %d event(s) caught up", catching_up.result())
                    due, rerun = rerun, False
                else:  # the log unavailable: keep hearing, try again soon
                    log.warning("catch-up failed, retrying: %r", exc)
                    retry_at = now + 1.0
                catching_up = None
            if (payload := pinger.due(now)) is not None:
                await pubsub.ping(payload)
            if membership is not None:
                membership.check(now)
                if membership.catch_up_due(now):
                    due, rerun = True, catching_up is not None
            # get_message() would misread our pong: look at the raw response first.
            response = await pubsub.parse_response(block=False, timeout=PING_EVERY_S / 2)
            observability.tick(app, "pubsub")
            if response is None:
                continue
            if (sent_at := pinger.pong(response)) is not None:
                if due:
                    pass  # a catch-up under way: nothing is proven until it is done
                elif membership is None:
                    heard.heard_until = sent_at
                elif not membership.unsure(now):
                    heard.heard_until = max(heard.heard_until, membership.proven(sent_at))
            elif (msg := await pubsub.handle_message(response, True)) and msg["type"] == "message":
                dispatch(app, msg["data"])
    finally:  # the subscription is gone: its catch-up is moot (the next one starts over)
        if membership is not None:
            membership.close()
        if catching_up is not None and not catching_up.done():
            catching_up.cancel()
        elif catching_up and not catching_up.cancelled() and (exc := catching_up.exception()):
            log.warning("catch-up failed: %r", exc)


async def _run(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = await create_pool(
        app[SETTINGS].pg_write_url, max_size=10, ca_file=app[SETTINGS].tls_ca_file
    )
    await ensure_schema(app[POOL])
    # No live database query in readiness (as the API): a stalled shared write path would mark
    # every hub down at once and HAProxy would cut every phone's socket (a reconnect storm).
    # Should the listener end anyway, the hub is deaf: supervise stops the process.
    listener = observability.supervise(app, listen(app), "pubsub-listener")
    yield
    # Every step is bounded: a process told to stop must stop, whatever its peers do.
    began = time.monotonic()
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener  # its own close of the pub/sub connection is bounded
    tasks: set[asyncio.Task[None]] = app[TASKS]
    for task in list(tasks):  # closes still running: each has its own deadline
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stopped = time.monotonic()
    pool = app[POOL]
    try:
        # A graceful close waits for each connection's Terminate to be answered, with no
        # deadline of its own (through pgBouncer and HAProxy on a loaded machine, or a server
        # that went away): past this, the connections are cut.
        async with asyncio.timeout(POOL_CLOSE_S):
            await pool.close()
    except TimeoutError:
        log.warning("the database pool did not close in %.0f s: its connections cut", POOL_CLOSE_S)
        pool.terminate()
    took = time.monotonic() - began
    if took > 1:
        log.info(
            "cleanup took %.2f s (listener and tasks %.2f s, pool %.2f s)",
            took,
            stopped - began,
            time.monotonic() - stopped,
        )


async def _going_away(app: web.Application) -> None:
    """On shutdown, tell every phone to reconnect elsewhere: all at once, each with a deadline."""
    await asyncio.gather(
        *(
            close(app, c, WSCloseCode.GOING_AWAY, "hub shutting down", "going_away")
            for c in all_connections(app)
        )
    )


def create_app(settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    metrics = observability.install(app, settings)
    metrics.declare("websocket_heartbeat", settings.heartbeat_s)
    app[ISSUER] = TokenIssuer(settings.jwt_key_path, settings.token_ttl_s)
    app[CONNS] = defaultdict(set)
    app[HEARD] = Listening()
    app[TASKS] = set()
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
        "closes": Counter(
            "cw_ws_closes_total",
            "WebSockets the hub closed, by reason",
            ["reason"],
            registry=metrics.registry,
        ),
    }
    app.cleanup_ctx.append(_run)
    app.on_shutdown.append(_going_away)
    app.router.add_get("/v1/updates", updates)
    app.router.add_get("/admin/keys", guarded(key_status(app[ISSUER])))
    return app
