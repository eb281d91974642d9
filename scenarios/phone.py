"""The simulated phone: a Locust user speaking CloudWatcher's public API over HTTPS and a
WebSocket, offline-first.

Every operation goes to Locust's request event (so its stats, CSV and web UI show it) and to the
operation ledger (for reconciliation). The WebSocket is `websocket-client` on sockets that gevent
has patched, read by a greenlet of the user's own. Imported only by the locustfile: Locust
monkey-patches the process it runs in.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import sqlite3
import time
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.monkey
import gevent.ssl
import websocket
from locust import FastHttpUser, events, task

from scenarios.arrivals import ArrivalSchedule, per_process_rate
from scenarios.backoff import Backoff
from scenarios.fleet_link import Link
from scenarios.latency import LatencyRecorder, latency_kind
from scenarios.sockets import (
    bind_http_client,
    close_idle_connections,
    connect_from,
    descriptors_per_phone,
    fds_needed,
    parse_sources,
    raise_fd_limit,
    rotation,
)
from slo.ledger import Operation, Outcome

#: Per process: every user of this worker records here; shipped every FLUSH_EVERY_S.
LEDGER: list[Operation] = []
LATENCY = LatencyRecorder()
#: The OS's lock, not gevent's patched one (a Python-level lock, ~1 % of a flat-out phone's CPU):
#: no greenlet switches while holding it (an append, a slice), so no greenlet ever waits on it.
_LOCK = gevent.monkey.get_original("_thread", "allocate_lock")()


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as `uuid.uuid4().hex` makes it, at a quarter
    of its cost (it builds a UUID object and its integer first): ids and idempotency keys are
    made for every operation."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # the version
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return b.hex()


FLEET_DIR = Path(os.environ.get("CWH_FLEET_DIR", "."))
CA_FILE = os.environ.get("CWH_CA_FILE") or None
REGISTRATION_SECRET = os.environ.get("CWH_REGISTRATION_SECRET", "")
DOCUMENTS = [f"doc-{i:03d}.txt" for i in range(50)]
#: At the end of the run, how long a phone waits for outstanding results. Locust's master gives
#: worker processes 3 s to finish before it interrupts them.
STOP_DRAIN_S = 2.0
#: New ledger entries are shipped to the master this often (scenarios/fleet_link.py), so a
#: worker killed mid-run loses at most this much of its records.
FLUSH_EVERY_S = 1.0
#: Think times between a phone's actions (the benchmark idles phones with a long mean).
THINK_MEAN_S = float(os.environ.get("CWH_THINK_MEAN_S", "2.0"))
THINK_CAP_S = float(os.environ.get("CWH_THINK_CAP_S", "10.0"))
#: How long the server keeps an idle HTTP connection (HAProxy's `timeout http-keep-alive`,
#: env/configs.py): a phone about to think longer closes its own (scenarios/sockets.py).
HTTP_KEEPALIVE_S = 10.0
#: Open arrivals: sessions per second over the whole fleet (0: the closed model), split over
#: CWH_WORKERS processes; a session not notified within SESSION_TIMEOUT_S counts as failed.
ARRIVAL_RATE = float(os.environ.get("CWH_ARRIVAL_RATE", "0"))
WORKERS = int(os.environ.get("CWH_WORKERS", "1"))
#: The fleet's size (what this process's descriptor limit is raised for, with WORKERS).
USERS = int(os.environ.get("CWH_USERS", "0") or 0)
#: Local addresses the phones' connections leave from, in turn (CWH_SOURCE_ADDRESSES, comma-
#: separated; none: the kernel's choice). One source address reaches one destination through
#: at most the ephemeral port range's 28,232 connections: scenarios/sockets.py.
SOURCES = parse_sources(os.environ.get("CWH_SOURCE_ADDRESSES", ""))
_next_source = rotation(SOURCES)
SESSION_TIMEOUT_S = 60.0
#: The hub's close codes (reference_impl/hub.py): the socket's token expired (renew it), and
#: "resume now" (more events than one replay held, or the phone fell behind).
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_RESUME = 4002


def think_time_s(mean_s: float = THINK_MEAN_S, cap_s: float = THINK_CAP_S) -> float:
    """Truncated exponential: mostly short pauses, a few long ones, never over the cap."""
    if mean_s <= 0:
        return 0.0  # the benchmark's flat-out phones
    while True:
        t = random.expovariate(1 / mean_s)
        if t <= cap_s:
            return t


class PhoneStore:
    """The phone's own SQLite: identities to reuse, and the outbox of requests made offline."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL without a sync: the outbox survives the phone app being killed (each commit is
        # written to the WAL, in the page cache, before the request goes out: what offline-first
        # needs); surviving power loss of the load generator does not matter, and an fsync per
        # queued request made the phone a fifth as fast as a plain Locust user. The file is this
        # process's alone, so it holds its lock for good (EXCLUSIVE: no lock calls and no
        # shared-memory index per commit), and the outbox is keyed by its key alone (WITHOUT
        # ROWID: one b-tree, not a table and an index). Together: 20 -> 8 us of CPU per request
        # queued and sent. The partial index finds a free identity without a scan of the used
        # ones (quadratic over a ramp of 10,000 phones).
        self.db.executescript(
            "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;"
            "CREATE TABLE IF NOT EXISTS identities (device_id TEXT PRIMARY KEY, platform TEXT,"
            " client_id TEXT, client_secret TEXT, in_use INTEGER DEFAULT 0);"
            "CREATE INDEX IF NOT EXISTS free_identities ON identities (platform)"
            " WHERE in_use = 0;"
            "CREATE TABLE IF NOT EXISTS outbox (key TEXT PRIMARY KEY, device_id TEXT,"
            " body TEXT, queued_at REAL) WITHOUT ROWID;"
            "UPDATE identities SET in_use = 0;"
        )

    def take_identity(self, platform: str) -> dict[str, str] | None:
        row = self.db.execute(
            "SELECT device_id, client_id, client_secret FROM identities"
            " WHERE platform = ? AND in_use = 0 LIMIT 1",
            (platform,),
        ).fetchone()
        if row is None:
            return None
        self.db.execute("UPDATE identities SET in_use = 1 WHERE device_id = ?", (row[0],))
        return {"device_id": row[0], "client_id": row[1], "client_secret": row[2]}

    def keep_identity(self, platform: str, ident: dict[str, str]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO identities VALUES (?, ?, ?, ?, 1)",
            (ident["device_id"], platform, ident["client_id"], ident["client_secret"]),
        )

    def queue(self, device_id: str, key: str, body: dict[str, str]) -> None:
        self.db.execute(
            "INSERT INTO outbox VALUES (?, ?, ?, ?)",
            (key, device_id, json.dumps(body), time.time()),
        )

    def outbox(self, device_id: str) -> list[tuple[str, dict[str, str]]]:
        rows = self.db.execute(
            "SELECT key, body FROM outbox WHERE device_id = ? ORDER BY queued_at", (device_id,)
        ).fetchall()
        return [(k, json.loads(b)) for k, b in rows]

    def sent(self, key: str) -> None:
        self.db.execute("DELETE FROM outbox WHERE key = ?", (key,))


_STORE: PhoneStore | None = None


def store() -> PhoneStore:
    global _STORE
    if _STORE is None:
        FLEET_DIR.mkdir(parents=True, exist_ok=True)
        _STORE = PhoneStore(FLEET_DIR / f"phones-{os.getpid()}.sqlite")
    return _STORE


#: Wall time this process's first ramp finished (Locust's first `spawning_complete`, fired on
#: the master and every worker). Latencies of operations invoked before it are kept apart, as
#: "<kind> (ramp-up)": while phones are still arriving, the load generator shares the machine with
#: their TLS handshakes and registrations, and a percentile over a short run would measure that
#: (seen: the first three submits of a 40 s run at 1.1 s client-side, 0.3 s in the API). The
#: objectives read the steady phase; the ramp-up's figures stay in the summary. Only for shapes
#: that arrive once and hold (`warms_up`): in a ramp, spike or diurnal run the changing load is
#: what is measured, and every latency counts.
_RAMPED_AT: float | None = None


def _mark_ramped(at: float) -> None:
    """Note the ramp's end, for this process and (shipped with its ledger) for whoever checks
    which operations went to the ramp-up histograms: each process hears the master at its own
    instant. Not an operation: a fleet that did nothing must still show no operations."""
    global _RAMPED_AT
    if _RAMPED_AT is not None:
        return
    _RAMPED_AT = at
    LINK.outbox.ramped = at


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    shape = environment.shape_class
    if shape is not None and not getattr(shape, "warms_up", False):
        _mark_ramped(0.0)  # the whole run is measured


@events.spawning_complete.add_listener
def _on_spawning_complete(**_: Any) -> None:
    _mark_ramped(time.time())


def record(
    env: Any, op: Operation, request_type: str, name: str, length: int = 0, measured: bool = True
) -> None:
    """One operation: to the ledger, the HDR histograms (when it has a duration worth
    measuring), and Locust's request event."""
    with _LOCK:
        LEDGER.append(op)
    if op.outcome == "ok" and measured:
        LATENCY.record(latency_kind(name, op.invoked_wall, _RAMPED_AT), op.latency_s)
    env.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=op.latency_s * 1000,
        response_length=length,
        context={"server": op.server},
        exception=None if op.outcome == "ok" else RuntimeError(op.error or op.outcome),
    )


#: A request that got no answer at all (status 0: the connection failed before a response,
#: typically a pooled keep-alive connection the load balancer closed just as it was reused) is
#: sent once more at once, on a new connection, as mobile HTTP stacks do (OkHttp's
#: retryOnConnectionFailure). Safe: reads change nothing and a submit carries its idempotency
#: key. One ledger entry per operation; a submit's detail says it was retried. A rolling-update
#: test saw one submit of 287 fail this way 67 s after the rollout, with nothing wrong anywhere.
TRANSPORT_RETRIES = 1


class PhoneUser(FastHttpUser):
    """A phone: identity, token, socket and the requests it can make. Its subclasses choose
    how it is driven (closed or open model) and the platform's differences."""

    abstract = True
    platform = "ios"
    backoff = Backoff("full", base_s=0.5, cap_s=30.0)
    #: How long the OS lets the app keep its socket in the background before it is cut.
    background_limit_s = 30.0
    #: Chance that a go_offline task really takes the phone offline (CWH_OFFLINE_CHANCE).
    offline_chance = float(os.environ.get("CWH_OFFLINE_CHANCE", "0.3"))
    #: Chance that an acknowledged submit is sent again at once, same key and body, as an app
    #: does when the answer did not reach it (CWH_RESUBMIT_CHANCE): idempotency under test.
    resubmit_chance = float(os.environ.get("CWH_RESUBMIT_CHANCE", "0.05"))
    insecure = False
    # Read when the HTTP client is built (in __init__): trust the target's certificate.
    ssl_context_factory = staticmethod(lambda: gevent.ssl.create_default_context(cafile=CA_FILE))

    def wait_time(self) -> float:  # type: ignore[override]
        think_s = think_time_s()
        if think_s > HTTP_KEEPALIVE_S:
            # The server closes an idle connection meanwhile: close it now and free its
            # descriptor, which the HTTP client would otherwise hold until the next request.
            close_idle_connections(self.client, str(self.host))
        return think_s

    # ---- set-up ----------------------------------------------------------------------------

    def on_start(self) -> None:
        self.rng = random.Random()
        self.offline = False
        # When the phone last came back online (monotonic): a result that waited for the phone
        # says nothing of the system's time to result.
        self.offline_until = -1.0
        self.acked: dict[str, float] = {}  # request id -> monotonic time of the acknowledgement
        # The same ids in a list, for read's random choice: a list of the dict's keys made on
        # every read grew with the phone's age (O(acknowledged) per read).
        self.acked_ids: list[str] = []
        self.notified: set[str] = set()
        # Sessions of the open model waiting for their result: request id -> its event.
        self.waiting: dict[str, gevent.event.Event] = {}
        self.cursor = "0"
        self.last_event_id = 0
        self.resume: str | None = None  # the hub's `resume` value: where the socket resumes
        self.token, self.token_expires = "", 0.0
        self.hub_cookie = ""
        self.ws: websocket.WebSocket | None = None
        # Every connection of this phone leaves from one source address (HTTP and socket).
        self.source = _next_source()
        if self.source is not None:
            bind_http_client(self.client, str(self.host), self.source)
        PHONES.add(self)
        start_background(self.environment)
        ident = store().take_identity(self.platform)
        if ident is None:
            ident = self.register()
        self.ident = ident
        # The read-back after the run logs in as this device: its identity goes to the master,
        # whether just registered or reused from the phone's store (a worker restarted with its
        # folder: a pod's volume).
        LINK.outbox.add_identity(ident["device_id"], ident["client_id"], ident["client_secret"])
        self.renew_token()
        self.ws_greenlet = gevent.spawn(self.ws_loop)
        SOCKETS.add(self.ws_greenlet)

    def on_stop(self) -> None:
        # Like an app resuming: wait a little for results still on their way, then sync once,
        # so "never notified" counts notifications that were really lost, not cut off.
        deadline = time.monotonic() + STOP_DRAIN_S
        while set(self.acked) - self.notified and time.monotonic() < deadline:
            gevent.sleep(0.25)
        self.offline = False
        self.sync()
        PHONES.discard(self)
        self.ws_greenlet.kill(block=False)  # quiesce() waits for it at the end
        if self.ws is not None:
            self.ws.close()

    def register(self) -> dict[str, str]:
        headers = {"X-Registration-Secret": REGISTRATION_SECRET} if REGISTRATION_SECRET else {}
        with self.client.post(
            "/v1/devices",
            json={"platform": self.platform, "name": "fleet"},
            headers=headers,
            name="register",
            catch_response=True,
        ) as r:
            if r.status_code != 201:
                r.failure(f"register: {r.status_code}")
                raise RuntimeError(f"cannot register: {r.status_code} {r.text}")
            ident = r.json()
        store().keep_identity(self.platform, ident)
        return ident

    def renew_token(self) -> None:
        with self.client.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.ident["client_id"],
                "client_secret": self.ident["client_secret"],
            },
            name="token",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"token: {r.status_code}")
                return
            body = r.json()
            self.token = body["access_token"]
            self.token_expires = time.monotonic() + body["expires_in"]

    def auth(self) -> dict[str, str]:
        if time.monotonic() > self.token_expires - 60:  # renew before it expires
            self.renew_token()
        return {"Authorization": f"Bearer {self.token}"}

    # ---- the socket ------------------------------------------------------------------------

    def ws_url(self) -> str:
        base = self.host.replace("https://", "wss://").replace("http://", "ws://")
        if self.resume is None:  # the first socket: what commits from now on
            return f"{base}/v1/updates"
        return f"{base}/v1/updates?last_event_id={self.resume}"

    def _connected(
        self,
        started: float,
        wall: float,
        outcome: Outcome,
        server: str | None,
        error: str | None = None,
    ) -> None:
        op = Operation(new_id(), "connect", started, time.monotonic(), wall, outcome, server, error)
        record(self.environment, op, "WS", "connect")

    def ws_connect(self) -> None:
        started, wall = time.monotonic(), time.time()
        headers = [f"Authorization: {self.auth()['Authorization']}"]
        if self.hub_cookie:
            headers.append(f"Cookie: {self.hub_cookie}")  # stick to our hub
        try:
            url = self.ws_url()
            ws = websocket.create_connection(
                url,
                header=headers,
                timeout=10,
                sslopt={"ca_certs": CA_FILE} if CA_FILE else {},
                socket=None if self.source is None else ws_socket(url, self.source, 10),
            )
            for name, value in (ws.getheaders() or {}).items():
                if name.lower() == "set-cookie" and value.startswith("CWHUB="):
                    self.hub_cookie = value.split(";", 1)[0]
            hello = json.loads(ws.recv())
            self.resume = hello.get("resume", self.resume)
            self.ws = ws
            self._connected(started, wall, "ok", hello.get("server"))
            # The first heartbeat is jittered so reconnecting phones do not beat in lockstep.
            self.heartbeat_s = float(hello.get("heartbeat_s", 30))
            self.next_beat = time.monotonic() + self.rng.uniform(0, self.heartbeat_s)
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            self._connected(started, wall, "fail", None, repr(exc)[:200])
            raise

    def ws_loop(self) -> None:
        attempt, delay = 0, self.backoff.base_s
        while True:
            if self.offline:
                gevent.sleep(0.5)
                continue
            code = None
            try:
                self.ws_connect()
                attempt, delay = 0, self.backoff.base_s
                code = self.ws_read()
            except (OSError, websocket.WebSocketException, ValueError):
                pass
            finally:
                if self.ws is not None:
                    self.ws.close()
                    self.ws = None
            if code in (CLOSE_TOKEN_EXPIRED, CLOSE_RESUME):
                # Not a failure: the hub asks for a new token, or for a resume. Reconnect now
                # (jittered a little, so a hub's worth of phones does not come back at once).
                if code == CLOSE_TOKEN_EXPIRED:
                    self.token_expires = 0.0  # ws_connect renews it
                gevent.sleep(self.rng.uniform(0, 0.2))
                continue
            attempt += 1
            delay = self.backoff.delay_s(attempt, delay, self.rng)
            gevent.sleep(delay)

    def ws_read(self) -> int | None:
        """Read until the socket ends; the hub's close code, when it sent one."""
        assert self.ws is not None
        while not self.offline:
            # Sleep until the next heartbeat is due: an idle phone wakes only for it (the storm
            # and going offline close the socket from outside, which ends the wait).
            self.ws.settimeout(max(0.05, self.next_beat - time.monotonic()))
            if time.monotonic() >= self.next_beat:
                self.ws.send("ping")
                self.next_beat = time.monotonic() + self.heartbeat_s
            try:
                opcode, data = self.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            raw = data.decode() if isinstance(data, bytes) else data
            if not raw:
                return None
            if raw == "pong":
                continue
            msg = json.loads(raw)
            self.resume = msg.get("resume", self.resume)
            events_ = msg["events"] if msg.get("type") == "batch" else [msg]
            for event in events_:
                if "event_id" in event:
                    self.on_event(event, "socket")
        return None

    def drop_socket(self) -> None:
        """Lose the connection abruptly, as a network does (no closing handshake). Called from
        another greenlet than the reader's: closing the socket ends the reader's wait."""
        if self.ws is not None:
            self.ws.shutdown()

    def on_event(self, event: dict[str, Any], via: str) -> None:
        self.last_event_id = max(self.last_event_id, int(event["event_id"]))
        rid = event.get("request_id", "")
        if rid in self.notified:
            return
        self.notified.add(rid)
        if (waiter := self.waiting.pop(rid, None)) is not None:
            waiter.set()
        now, wall = time.monotonic(), time.time()
        record(
            self.environment,
            Operation(
                f"{rid}:{event['event_id']}",
                "notification",
                now,
                now,
                wall,
                "ok",
                None,
                None,
                {"request_id": rid, "via": via, "event_id": event["event_id"]},
            ),
            "WS",
            f"notification ({via})",
            measured=False,
        )
        acked = self.acked.get(rid)
        if acked is not None:
            # Offline since its acknowledgement: the result waited for the phone, not the other
            # way round. Kept in the ledger, marked, but not a time to result of the system (a
            # phone without network for 15 s is not a 15 s time to result).
            waited = self.offline or self.offline_until > acked
            record(
                self.environment,
                Operation(
                    f"ttr:{rid}",
                    "time_to_result",
                    acked,
                    now,
                    wall - (now - acked),
                    "ok",
                    None,
                    None,
                    {"request_id": rid, "via": via, "phone_offline": waited},
                ),
                "TTR",
                "time to result (phone offline meanwhile)" if waited else "time to result",
                measured=not waited,
            )

    # ---- requests --------------------------------------------------------------------------

    def send_submit(
        self,
        key: str,
        body: dict[str, str],
        replayed: bool = False,
        intended_s: float | None = None,
        retried: bool = False,
    ) -> str | None:
        """Submit; the request id when acknowledged. `intended_s`: the session's intended start
        (open arrivals), recorded as well as the service time. `retried`: sent again with the
        key of a submit already acknowledged (the same request id must come back)."""
        name = "submit (replayed)" if replayed else "submit (retried)" if retried else "submit"
        started, wall = time.monotonic(), time.time()
        rid = None
        outcome: Outcome = "info"
        error, server = None, None
        # One ledger entry per attempt; the idempotency key (shared by a request's retries and
        # replays) is in the detail, where reconciliation looks for duplicates.
        detail: dict[str, Any] = {
            "device_id": self.ident["device_id"],
            "key": key,
            "replayed": replayed,
            "retried": retried,
        }
        for attempt in range(1 + TRANSPORT_RETRIES):
            with self.client.post(
                "/v1/requests",
                json=body,
                headers={**self.auth(), "Idempotency-Key": key},
                name=name,
                catch_response=True,
            ) as r:
                server = r.headers.get("X-Served-By") if r.headers else None
                if r.status_code == 202:
                    rid = r.json()["request_id"]
                    outcome = "ok"
                    detail["request_id"] = rid
                    if rid not in self.acked:
                        self.acked[rid] = time.monotonic()
                        self.acked_ids.append(rid)
                    r.success()
                elif 400 <= r.status_code < 500:
                    outcome, error = "fail", f"{r.status_code}"  # certainly not created
                    r.failure(error)
                else:
                    error = f"{r.status_code}"  # 5xx or no answer: it may or may not exist
                    r.failure(error)
            if r.status_code != 0 or attempt == TRANSPORT_RETRIES:
                break
            detail["transport_retries"] = attempt + 1  # the same key: at most one request
        # One clock read for the ledger and the histogram: read again after taking the lock,
        # the histogram would also count the wait for it (milliseconds under a busy fleet).
        completed = time.monotonic()
        with _LOCK:
            LEDGER.append(
                Operation(
                    new_id(),
                    "submit",
                    started,
                    completed,
                    wall,
                    outcome,
                    server,
                    error,
                    detail,
                )
            )
        if outcome == "ok":
            service_s = completed - started
            LATENCY.record(latency_kind("submit", wall, _RAMPED_AT), service_s)
            if intended_s is not None:
                # Classified by its intended start, as its session is.
                intended_wall = wall - (started - intended_s)
                LATENCY.record(
                    latency_kind("submit (from intended start)", intended_wall, _RAMPED_AT),
                    service_s,
                    intended_s,
                    started_s=started,
                )
            store().sent(key)
        elif outcome == "fail" and r.status_code != 429:
            store().sent(key)  # refused for good: do not replay
        return rid

    def submit(self) -> None:
        key = new_id()
        body = {
            "provider": self.rng.choice(["sharepoint", "gdrive"]),
            "document": self.rng.choice(DOCUMENTS),
            "instruction": "summarize",
        }
        store().queue(self.ident["device_id"], key, body)  # offline-first: outbox first
        if not self.offline:
            rid = self.send_submit(key, body)
            if rid is not None and self.rng.random() < self.resubmit_chance:
                self.send_submit(key, body, retried=True)

    def read(self) -> None:
        if self.offline or not self.acked:
            return
        rid = self.rng.choice(self.acked_ids)
        started, wall = time.monotonic(), time.time()
        for attempt in range(1 + TRANSPORT_RETRIES):
            with self.client.get(
                f"/v1/requests/{rid}", headers=self.auth(), name="read", catch_response=True
            ) as r:
                outcome: Outcome = "ok" if r.status_code == 200 else "fail"
                if outcome == "fail":
                    r.failure(str(r.status_code))
            if r.status_code != 0 or attempt == TRANSPORT_RETRIES:
                break
        # 404: the system says it never had it (lost in a restore): the app drops it, as a real
        # one would, rather than ask again forever. Reconciliation counts it.
        if r.status_code == 404 and self.acked.pop(rid, None) is not None:
            self.acked_ids.remove(rid)
        with _LOCK:
            LEDGER.append(
                Operation(
                    new_id(),
                    "read",
                    started,
                    time.monotonic(),
                    wall,
                    outcome,
                    None,
                    None if outcome == "ok" else str(r.status_code),
                    {"request_id": rid},
                )
            )

    def sync(self) -> None:
        if self.offline:
            return
        started, wall = time.monotonic(), time.time()
        with self.client.get(
            f"/v1/sync?since={self.cursor}", headers=self.auth(), name="sync", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(str(r.status_code))
                outcome: Outcome = "fail"
                body: dict[str, Any] = {}
            else:
                outcome, body = "ok", r.json()
        with _LOCK:
            LEDGER.append(Operation(new_id(), "sync", started, time.monotonic(), wall, outcome))
        for event in body.get("events", []):
            self.on_event(event, "sync")
        self.cursor = body.get("next_cursor", self.cursor)

    def go_offline(self) -> None:
        """Now and then the phone loses the network: socket gone, requests queue locally."""
        if self.rng.random() >= self.offline_chance:
            return
        self.offline = True
        self.drop_socket()
        gevent.sleep(self.rng.uniform(5, min(15, self.background_limit_s)))
        for _ in range(self.rng.randint(1, 3)):
            key = new_id()
            store().queue(
                self.ident["device_id"],
                key,
                {
                    "provider": "gdrive",
                    "document": self.rng.choice(DOCUMENTS),
                    "instruction": "summarize (queued offline)",
                },
            )
        self.offline, self.offline_until = False, time.monotonic()
        # Back online: replay the outbox with the original keys, then catch up once the socket
        # is back (bounded), as an app does: a result published before the socket registered
        # and after a sync made earlier would otherwise wait for the next background sync.
        for key, body in store().outbox(self.ident["device_id"]):
            self.send_submit(key, body, replayed=True)
        deadline = time.monotonic() + RECONNECT_WAIT_S
        while self.ws is None and time.monotonic() < deadline:
            gevent.sleep(0.1)
        self.sync()


_WS_TLS: gevent.ssl.SSLContext | None = None


def ws_socket(url: str, source: str, timeout_s: float) -> socket.socket:
    """The connected socket (TLS for wss://) a phone's WebSocket runs on, leaving from
    `source`; websocket-client does the rest (the handshake, frames) on it, with its own socket
    options."""
    global _WS_TLS
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    sock = connect_from(
        source, host, parts.port or (443 if secure else 80), timeout_s,
        websocket.DEFAULT_SOCKET_OPTION,
    )  # fmt: skip
    if not secure:
        return sock
    if _WS_TLS is None:
        _WS_TLS = gevent.ssl.create_default_context(cafile=CA_FILE)
    try:
        tls: socket.socket = _WS_TLS.wrap_socket(sock, server_hostname=host)
    except OSError:
        sock.close()
        raise
    return tls


#: How long a phone back online waits for its socket before it syncs anyway.
RECONNECT_WAIT_S = 5.0

_SCHEDULE: ArrivalSchedule | None = None


def schedule() -> ArrivalSchedule:
    """This process's share of the fleet's arrivals, started with its first phone."""
    global _SCHEDULE
    if _SCHEDULE is None:
        _SCHEDULE = ArrivalSchedule(per_process_rate(ARRIVAL_RATE, WORKERS), time.monotonic())
    return _SCHEDULE


class ClosedPhone(PhoneUser):
    """A phone of the closed model: it acts, thinks, acts again."""

    abstract = True
    # Locust's own attribute (it reads the weights once, when the class is made).
    tasks = {  # noqa: RUF012
        PhoneUser.submit: 6,
        PhoneUser.read: 2,
        PhoneUser.sync: 1,
        PhoneUser.go_offline: 1,
    }


class ArrivalPhone(PhoneUser):
    """A phone of the open arrival model: a pool member that runs sessions (submit, then wait
    for the result on its socket) when the schedule says, never paced by the system's answers.

    A session's latency counts from its intended start, so when every phone of the pool is busy
    (the system stalled) the wait shows in the percentiles. The pool (USERS) bounds the
    sessions in flight; a pool too small shows as a growing start lag in the ledger.
    """

    abstract = True

    def wait_time(self) -> float:  # type: ignore[override]
        return 0.0  # the schedule paces, not think times

    @task
    def session(self) -> None:
        intended = schedule().take()
        gevent.sleep(max(0.0, intended - time.monotonic()))
        started, wall = time.monotonic(), time.time()
        key = new_id()
        body = {
            "provider": self.rng.choice(["sharepoint", "gdrive"]),
            "document": self.rng.choice(DOCUMENTS),
            "instruction": "summarize",
        }
        store().queue(self.ident["device_id"], key, body)
        rid = self.send_submit(key, body, intended_s=intended)
        outcome: Outcome = "info"
        if rid is not None:
            if rid not in self.notified:  # woken by on_event, not by polling
                waiter = self.waiting[rid] = gevent.event.Event()
                waiter.wait(SESSION_TIMEOUT_S)
                self.waiting.pop(rid, None)
            outcome = "ok" if rid in self.notified else "fail"
        op = Operation(
            f"session:{key}",
            "session",
            intended,
            time.monotonic(),
            wall - (started - intended),
            outcome,
            None,
            None
            if outcome == "ok"
            else f"no result ({'not acknowledged' if rid is None else 'timeout'})",
            {"request_id": rid, "start_lag_s": round(started - intended, 6)},
        )
        record(self.environment, op, "SESSION", "session (from intended start)")


class IOS:
    """iOS cuts background sockets early and its apps back off with full jitter."""

    platform = "ios"
    backoff = Backoff("full", base_s=0.5, cap_s=30.0)
    background_limit_s = 30.0
    weight = 60


class Android:
    """Android keeps background work longer; its apps use decorrelated jitter."""

    platform = "android"
    backoff = Backoff("decorrelated", base_s=0.5, cap_s=60.0)
    background_limit_s = 60.0
    weight = 40


class IOSPhone(IOS, ClosedPhone):
    pass


class AndroidPhone(Android, ClosedPhone):
    pass


class IOSArrivalPhone(IOS, ArrivalPhone):
    pass


class AndroidArrivalPhone(Android, ArrivalPhone):
    pass


_written = 0
_background: list[gevent.Greenlet] = []
#: Every phone's socket reader: it records notifications, and outlives its phone when the phone
#: was stopped without its on_stop (killed at Locust's stop timeout).
SOCKETS: set[gevent.Greenlet] = set()


def quiesce() -> None:
    """Nothing of this process records any more: every socket reader and the storm watcher
    stopped (the phones themselves already are). Before the final batch, which must be final."""
    gevent.killall([*SOCKETS, *_background[1:]], block=True, timeout=5)
    SOCKETS.clear()


#: The phones of this process that are running, for the reconnect storm.
PHONES: weakref.WeakSet[PhoneUser] = weakref.WeakSet()


def _take() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """This process's ledger entries since the last call, and its histograms now."""
    global _written
    with _LOCK:
        new, _written = LEDGER[_written:], len(LEDGER)
        return [op.to_json() for op in new], LATENCY.encode()


#: This process's place in the fleet: ships its records to the master (or, alone, collects them
#: itself into CWH_FLEET_DIR). See scenarios/fleet_link.py.
LINK = Link(_take, FLEET_DIR, lambda: quiesce())


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    LINK.attach(environment)
    # Each process (the master and every worker: Locust forks before this event) for its share
    # of the fleet.
    # Phones about to think longer than the server's keep-alive hold their socket alone.
    per_phone = descriptors_per_phone(THINK_MEAN_S, THINK_CAP_S, HTTP_KEEPALIVE_S)
    limit = raise_fd_limit(fds_needed(USERS, WORKERS, per_phone))
    log = logging.getLogger("cwh.fleet")
    (log.info if limit.enough else log.warning)("pid %d: %s", os.getpid(), limit.describe())


def write_records() -> None:
    """Ship what is new; safe to call again and again (each entry goes once)."""
    LINK.ship()


def _flush_forever() -> None:
    while True:
        gevent.sleep(FLUSH_EVERY_S)
        try:
            write_records()
        except Exception:
            # Said, and tried again next time: a flusher that died quietly would leave the live
            # ledger (the safety control reads it) still until the final batch.
            logging.getLogger("cwh.fleet").exception("shipping this process's records failed")


def _storm_watch(environment: Any) -> None:
    """The reconnect storm: when the shape says so, every phone of this process online at that
    moment loses its socket at once, and comes back with its own backoff. One watcher per
    process, so idle phones need not wake to ask."""
    shape = environment.shape_class
    if shape is None or not hasattr(shape, "storm_due"):
        return
    while not shape.storm_due():
        gevent.sleep(0.2)
    online = [phone for phone in list(PHONES) if phone.ws is not None]
    now, wall = time.monotonic(), time.time()
    for phone in online:
        phone.drop_socket()
    # How many sockets the storm cut here: what to expect back as reconnections.
    with _LOCK:
        LEDGER.append(
            Operation(
                new_id(),
                "storm",
                now,
                now,
                wall,
                "ok",
                None,
                None,
                {"dropped": len(online)},
            )
        )


def start_background(environment: Any) -> None:
    """The flusher and the storm watcher, once per process."""
    if not _background:
        _background.append(gevent.spawn(_flush_forever))
        _background.append(gevent.spawn(_storm_watch, environment))


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_: Any) -> None:
    # Phones have stopped: the final batch (a worker), or the master's wait for every worker's.
    LINK.on_test_stop(environment)


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    # Records of a process that quit without a test stop (Ctrl-C early) still go out.
    LINK.on_quitting()
