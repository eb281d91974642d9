"""A TCP fault proxy that serves Toxiproxy's HTTP API, for machines without `toxiproxy-server`.

Experiments speak Toxiproxy's API (so the same experiment runs against a real Toxiproxy in
staging); this server implements that API and its toxics faithfully enough for the clients that
exist (`toxiproxy-python`, `chaostoolkit-toxiproxy`, plain HTTP):

- `GET /version`; `GET|POST /proxies`; `POST /populate`; `POST /reset`;
- `GET|POST|PATCH|DELETE /proxies/{name}` (POST with `enabled: false` stops listening and drops
  every connection, as Toxiproxy does);
- `GET|POST /proxies/{name}/toxics`, `GET|POST|PATCH|DELETE /proxies/{name}/toxics/{toxic}`;
- toxics `latency` (latency, jitter ms), `bandwidth` (rate KB/s), `timeout` (timeout ms),
  `reset_peer` (timeout ms), `slow_close` (delay ms), `slicer` (average_size, size_variation
  bytes, delay us), `limit_data` (bytes); each with `stream` (upstream: client to server,
  downstream: server to client) and `toxicity` (the chance a connection is affected, drawn once
  per connection and toxic, as Toxiproxy does).

Toxics apply to live connections too (a pooled database connection gets the latency when it is
added). Forwarding is protocol callbacks on the event loop: a chunk read on a stream with no toxic
for that connection is written to the other side in the same callback; only a stream with a
toxic (checked per chunk) queues its chunks for a pump that applies the toxics.

Errors are JSON `{"error": ..., "status": ...}` with Toxiproxy's status codes (400 bad
toxic, 404 missing, 409 exists). Run: `python -m env.faultproxy --port 8474 --config proxies.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import logging
import random
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from reference_impl.control_plane import control_plane_guard

log = logging.getLogger("cwh.faultproxy")

#: What `GET /version` reports: the Toxiproxy API this server follows.
VERSION = "2.9.0"
STREAMS = ("upstream", "downstream")
#: Attributes of each toxic type, with Toxiproxy's defaults.
TOXIC_TYPES: dict[str, dict[str, int]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "slow_close": {"delay": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": 0},
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int]

    @classmethod
    def parse(cls, body: Any, existing: Toxic | None = None) -> Toxic:
        """A toxic from an API body; on update, fields not given keep their value."""
        if not isinstance(body, dict):
            raise ApiError(400, "bad request body: a JSON object")
        kind = body.get("type", existing.type if existing else None)
        if kind not in TOXIC_TYPES:
            raise ApiError(400, f"bad toxic type: {kind}")
        stream = body.get("stream", existing.stream if existing else "downstream")
        if stream not in STREAMS:
            raise ApiError(400, f"stream was invalid: {stream!r} (upstream or downstream)")
        toxicity = body.get("toxicity", existing.toxicity if existing else 1.0)
        if not isinstance(toxicity, int | float) or not 0 <= toxicity <= 1:
            raise ApiError(400, f"toxicity must be between 0 and 1, not {toxicity!r}")
        attrs = dict(existing.attributes) if existing else dict(TOXIC_TYPES[kind])
        given = body.get("attributes") or {}
        if not isinstance(given, dict):
            raise ApiError(400, "attributes must be a JSON object")
        for key, value in given.items():
            if key not in TOXIC_TYPES[kind]:
                raise ApiError(400, f"toxic {kind} has no attribute {key!r}")
            if not isinstance(value, int | float) or value < 0:
                raise ApiError(400, f"attribute {key} must be a number >= 0, not {value!r}")
            attrs[key] = int(value)
        name = body.get("name") or (existing.name if existing else f"{kind}_{stream}")
        return cls(str(name), kind, stream, float(toxicity), attrs)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": self.attributes,
        }


def _split_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ApiError(400, f"{what} {text!r} is not host:port")
    return host or "0.0.0.0", int(port)


class Side(asyncio.Protocol):
    """One socket of a link: what it reads feeds its stream's `Pipe` (the client's side feeds
    upstream, the upstream's side downstream); its writes are paced by its transport's flow
    control (`drain`), and a side whose writes back up stops its peer from reading."""

    def __init__(self, stream: str, on_made: Callable[[Side], None] | None = None) -> None:
        self.stream = stream
        self.on_made = on_made
        self.transport: asyncio.Transport | None = None
        self.pipe: Pipe | None = None  # set when the link is made
        self.peer: Side | None = None
        self.held: set[str] = set()  # why reading is paused: "start", "peer", "queue"
        self.paused = False  # writes backed up past the transport's high-water mark
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        #: What arrived before the link was made (uvloop may start reading before
        #: connection_made's pause takes effect); b"" for an early end.
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not derive from asyncio.Transport; they have its methods)
        self.transport = cast(asyncio.Transport, transport)
        self.hold("start", True)  # nothing is read before both sides are there
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.feed(data)
        elif self.transport is not None and not self.transport.is_closing():  # (not after close)
            self.early.append(data)
            self.transport.pause_reading()  # ("start" holds it: resumed by Link.start)

    def eof_received(self) -> bool:
        if self.pipe is not None:
            self.pipe.feed(b"")
        else:
            self.early.append(b"")
        return True  # half-open until the pipe closes the link (slow_close waits first)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.wake()
        if self.pipe is not None:
            self.pipe.feed(b"")

    def hold(self, reason: str, on: bool) -> None:
        """Pause reading while any reason holds."""
        was = bool(self.held)
        if on:
            self.held.add(reason)
        else:
            self.held.discard(reason)
        if self.transport is None or was == bool(self.held) or self.transport.is_closing():
            return
        if self.held:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.paused = True
        if self.peer is not None:
            self.peer.hold("peer", True)

    def resume_writing(self) -> None:
        self.paused = False
        self.wake()
        if self.peer is not None:
            self.peer.hold("peer", False)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def drain(self) -> None:
        """Until the transport's buffer is below its high-water mark (or the side is gone)."""
        if self.paused and not self.lost:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter


@dataclass(eq=False)  # identity: links live in a set
class Link:
    """One client connection and its upstream connection; a pipe per stream."""

    proxy: Proxy
    client: Side
    upstream: Side
    #: (toxic name, stream) -> whether this connection drew the toxic (toxicity).
    drawn: dict[tuple[str, str], bool] = field(default_factory=dict)
    timers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    closed: bool = False

    def __post_init__(self) -> None:
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.pipes = (
            Pipe(self, "upstream", self.client, self.upstream),
            Pipe(self, "downstream", self.upstream, self.client),
        )
        self.client.pipe, self.upstream.pipe = self.pipes

    def start(self) -> None:
        for side in (self.client, self.upstream):
            early, side.early = side.early, []
            for data in early:
                assert side.pipe is not None
                side.pipe.feed(data)
            side.hold("start", False)

    def affected(self, toxic: Toxic) -> bool:
        key = (toxic.name, toxic.stream)
        if key not in self.drawn:
            self.drawn[key] = random.random() < toxic.toxicity
        return self.drawn[key]

    def close(self, reset: bool = False) -> None:
        """Close both sides (what was written is still sent); `reset` sends an RST to both
        (SO_LINGER 0), not a FIN."""
        if self.closed:
            return
        self.closed = True
        self.proxy.links.discard(self)
        for timer in self.timers.values():
            timer.cancel()
        for side in (self.client, self.upstream):
            transport = side.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            if reset and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if reset:
                transport.abort()
            else:
                transport.close()
            side.wake()
        for pipe in self.pipes:
            if pipe.task is not None and pipe.task is not asyncio.current_task():
                pipe.task.cancel()
        # Sides, pipes and the link refer to each other: undone here, they go as soon as the
        # transports let go, not at the cyclic collector's next pass (a pass every few dozen
        # connections showed in the profile).
        for side in (self.client, self.upstream):
            side.peer = None
            side.pipe = None


#: Chunks a stream holds for its toxics before its source stops reading.
QUEUED = 64


class Pipe:
    """One stream of a link. With no toxic on it for this connection and nothing queued, a
    chunk is written to the other side as it arrives (the check is per chunk: a toxic added to
    a live connection takes the next one). Otherwise chunks are stamped with their arrival and
    queued, and a pump applies the toxics in order: latency counts from arrival (as
    Toxiproxy's does), so it delays chunks, it does not add up."""

    def __init__(self, link: Link, stream: str, src: Side, dst: Side) -> None:
        self.link, self.stream, self.src, self.dst = link, stream, src, dst
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.task: asyncio.Task[None] | None = None

    def feed(self, data: bytes) -> None:
        """A chunk read from `src`; b"" for its end (EOF, error or close)."""
        link = self.link
        if link.closed:
            return
        if not self.queue and not link.proxy.toxics_of(self.stream, link):
            if not data:
                link.close()  # the end of either stream ends the link, as in Toxiproxy
                return
            assert self.dst.transport is not None
            self.dst.transport.write(data)
            link.sent[self.stream] += len(data)
            return
        self.queue.append((time.monotonic(), data))
        if len(self.queue) >= QUEUED:
            self.src.hold("queue", True)
        if self.task is None:
            self.task = asyncio.ensure_future(self.pump())

    async def pump(self) -> None:
        """Deliver the queue through the toxics; ends when the queue is empty (the next chunk
        with no toxic goes straight through again)."""
        link, proxy = self.link, self.link.proxy
        try:
            while self.queue and not link.closed:
                arrived, data = self.queue[0]
                toxics = proxy.toxics_of(self.stream, link)
                if not data:
                    for t in toxics:
                        if t.type == "slow_close":
                            await asyncio.sleep(t.attributes["delay"] / 1000)
                    link.close()
                    return
                if not any(t.type in ("timeout", "reset_peer") for t in toxics):
                    # (with those, the stream is stopped: data goes nowhere until the end)
                    await proxy.deliver(link, self.dst, self.stream, arrived, data, toxics)
                self.queue.popleft()
                if len(self.queue) < QUEUED // 2:
                    self.src.hold("queue", False)
        except OSError:
            link.close()
        except Exception:  # a toxic's bug must not leave the link hanging half-served
            log.exception("fault proxy %s: stream %s failed", proxy.name, self.stream)
            link.close()
        finally:
            self.task = None


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str, enabled: bool = True) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = enabled
        self.toxics: dict[str, Toxic] = {}
        self.links: set[Link] = set()
        self.connecting: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    def to_json(self, with_toxics: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
        }
        if with_toxics:
            out["toxics"] = [t.to_json() for t in self.toxics.values()]
        return out

    async def start(self) -> None:
        if self.server is not None:
            return
        host, port = _split_hostport(self.listen, "listen")
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(
                lambda: Side("upstream", self.accept), host, port, reuse_address=True
            )
        except OSError as exc:
            raise ApiError(500, f"listen {self.listen}: {exc.strerror}") from exc
        bound = self.server.sockets[0].getsockname()
        self.listen = f"{host}:{bound[1]}"  # port 0 becomes the one chosen
        self.enabled = True

    async def stop(self) -> None:
        self.enabled = False
        if self.server is not None:
            self.server.close()
            self.server = None
        for task in list(self.connecting):
            task.cancel()
        for link in list(self.links):
            link.close()
        self.links.clear()

    def toxics_of(self, stream: str, link: Link) -> list[Toxic]:
        return [t for t in self.toxics.values() if t.stream == stream and link.affected(t)]

    def toxics_changed(self) -> None:
        for link in list(self.links):
            self.arm_timers(link)

    def arm_timers(self, link: Link) -> None:
        """timeout and reset_peer end a connection after a time, data flowing or not."""
        live = {
            t.name: t
            for t in self.toxics.values()
            if t.type in ("timeout", "reset_peer") and link.affected(t)
        }
        for name in list(link.timers):
            if name not in live:
                link.timers.pop(name).cancel()
        for name, toxic in live.items():
            if name in link.timers or (
                toxic.type == "timeout" and toxic.attributes["timeout"] == 0
            ):
                continue  # timeout 0: data stops, the connection stays open

            async def fire(t: Toxic = toxic) -> None:
                await asyncio.sleep(t.attributes["timeout"] / 1000)
                link.close(reset=t.type == "reset_peer")
                self.links.discard(link)

            link.timers[name] = asyncio.ensure_future(fire())

    def accept(self, client: Side) -> None:
        """A client connected (its side holds reading): connect upstream, then join them."""
        task = asyncio.ensure_future(self.connect(client))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def connect(self, client: Side) -> None:
        assert client.transport is not None
        host, port = _split_hostport(self.upstream, "upstream")
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await asyncio.wait_for(
                loop.create_connection(lambda: Side("downstream"), host, port), timeout=5
            )
        except (OSError, TimeoutError):
            client.transport.close()  # upstream down: the client sees the connection close
            return
        except asyncio.CancelledError:  # the proxy stopped
            client.transport.close()
            raise
        if client.lost:
            upstream.transport.close()  # type: ignore[union-attr]
            return
        link = Link(self, client, upstream)
        self.links.add(link)
        self.arm_timers(link)
        link.start()

    async def deliver(
        self,
        link: Link,
        dst: Side,
        stream: str,
        arrived: float,
        data: bytes,
        toxics: list[Toxic],
    ) -> None:
        pieces = [data]
        gap_s = 0.0
        for t in toxics:
            a = t.attributes
            if t.type == "latency":
                jitter = random.uniform(-a["jitter"], a["jitter"]) if a["jitter"] else 0
                wait = arrived + max(0, a["latency"] + jitter) / 1000 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            elif t.type == "bandwidth" and a["rate"] > 0:
                await asyncio.sleep(len(data) / (a["rate"] * 1000))
            elif t.type == "slicer" and a["average_size"] > 0:
                pieces = _slices(data, a["average_size"], a["size_variation"])
                gap_s = a["delay"] / 1_000_000
            elif t.type == "limit_data":
                room = a["bytes"] - link.sent[stream]
                if room <= len(data):
                    if room > 0:
                        dst.write(data[:room])
                        link.sent[stream] += room
                        await dst.drain()
                    link.close()
                    return
        for i, piece in enumerate(pieces):
            if i and gap_s:
                await asyncio.sleep(gap_s)
            dst.write(piece)
            link.sent[stream] += len(piece)
            await dst.drain()


def _slices(data: bytes, average: int, variation: int) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        size = max(1, average + random.randint(-variation, variation))
        out.append(data[i : i + size])
        i += size
    return out


class FaultProxy:
    """The proxies and the API that drives them."""

    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()

    def find(self, name: str) -> Proxy:
        if name not in self.proxies:
            raise ApiError(404, "proxy not found")
        return self.proxies[name]

    async def create(self, body: Any) -> Proxy:
        if not isinstance(body, dict) or not body.get("name"):
            raise ApiError(400, "missing required field: name")
        if not body.get("upstream"):
            raise ApiError(400, "missing required field: upstream")
        name = str(body["name"])
        if name in self.proxies:
            raise ApiError(409, "proxy already exists")
        proxy = Proxy(name, str(body.get("listen") or "127.0.0.1:0"), str(body["upstream"]))
        _split_hostport(proxy.upstream, "upstream")
        if body.get("enabled", True):
            await proxy.start()
        else:
            proxy.enabled = False
            _split_hostport(proxy.listen, "listen")
        self.proxies[name] = proxy
        return proxy

    async def update(self, proxy: Proxy, body: Any) -> Proxy:
        if not isinstance(body, dict):
            raise ApiError(400, "bad request body: a JSON object")
        moved = False
        if "upstream" in body and body["upstream"] != proxy.upstream:
            _split_hostport(str(body["upstream"]), "upstream")
            proxy.upstream, moved = str(body["upstream"]), True
        if "listen" in body and body["listen"] != proxy.listen:
            _split_hostport(str(body["listen"]), "listen")
            proxy.listen, moved = str(body["listen"]), True
        enabled = bool(body.get("enabled", proxy.enabled))
        if moved or not enabled:
            await proxy.stop()
        if enabled:
            await proxy.start()
        return proxy

    async def delete(self, proxy: Proxy) -> None:
        await proxy.stop()
        self.proxies.pop(proxy.name, None)

    async def populate(self, body: Any) -> list[Proxy]:
        """Create or replace: a proxy whose listen or upstream changed is recreated."""
        if isinstance(body, dict) and "proxies" in body:
            body = body["proxies"]
        if not isinstance(body, list):
            raise ApiError(400, "bad request body: a JSON list of proxies")
        out = []
        for item in body:
            existing = self.proxies.get(str(item.get("name"))) if isinstance(item, dict) else None
            if existing is not None:
                same = existing.upstream == item.get("upstream") and existing.listen == item.get(
                    "listen", existing.listen
                )
                if same:
                    out.append(existing)
                    continue
                await self.delete(existing)
            out.append(await self.create(item))
        return out

    async def reset(self) -> None:
        """Every proxy enabled, every toxic gone."""
        for proxy in self.proxies.values():
            proxy.toxics.clear()
            proxy.toxics_changed()
            await proxy.start()

    async def shutdown(self) -> None:
        for proxy in self.proxies.values():
            await proxy.stop()

    # ---- HTTP API --------------------------------------------------------------------------

    def app(self) -> web.Application:
        # Toxiproxy refuses browsers; so does this, and cross-site forms too.
        app = web.Application(middlewares=[control_plane_guard(), _errors])
        r = app.router
        r.add_get("/version", self.h_version)
        r.add_get("/proxies", self.h_proxies)
        r.add_post("/proxies", self.h_create)
        r.add_post("/populate", self.h_populate)
        r.add_post("/reset", self.h_reset)
        r.add_get("/proxies/{proxy}", self.h_proxy)
        r.add_post("/proxies/{proxy}", self.h_update)
        r.add_patch("/proxies/{proxy}", self.h_update)
        r.add_delete("/proxies/{proxy}", self.h_delete)
        r.add_get("/proxies/{proxy}/toxics", self.h_toxics)
        r.add_post("/proxies/{proxy}/toxics", self.h_toxic_create)
        r.add_get("/proxies/{proxy}/toxics/{toxic}", self.h_toxic)
        r.add_post("/proxies/{proxy}/toxics/{toxic}", self.h_toxic_update)
        r.add_patch("/proxies/{proxy}/toxics/{toxic}", self.h_toxic_update)
        r.add_delete("/proxies/{proxy}/toxics/{toxic}", self.h_toxic_delete)
        return app

    async def h_version(self, _: web.Request) -> web.Response:
        return web.Response(text=VERSION)

    async def h_proxies(self, _: web.Request) -> web.Response:
        return web.json_response({n: p.to_json() for n, p in self.proxies.items()})

    async def h_create(self, request: web.Request) -> web.Response:
        async with self.lock:
            proxy = await self.create(await _body(request))
        return web.json_response(proxy.to_json(), status=201)

    async def h_populate(self, request: web.Request) -> web.Response:
        async with self.lock:
            proxies = await self.populate(await _body(request))
        return web.json_response({"proxies": [p.to_json() for p in proxies]}, status=201)

    async def h_reset(self, _: web.Request) -> web.Response:
        async with self.lock:
            await self.reset()
        return web.Response(status=204)

    async def h_proxy(self, request: web.Request) -> web.Response:
        return web.json_response(self.find(request.match_info["proxy"]).to_json())

    async def h_update(self, request: web.Request) -> web.Response:
        async with self.lock:
            proxy = await self.update(self.find(request.match_info["proxy"]), await _body(request))
        return web.json_response(proxy.to_json())

    async def h_delete(self, request: web.Request) -> web.Response:
        async with self.lock:
            await self.delete(self.find(request.match_info["proxy"]))
        return web.Response(status=204)

    async def h_toxics(self, request: web.Request) -> web.Response:
        proxy = self.find(request.match_info["proxy"])
        return web.json_response([t.to_json() for t in proxy.toxics.values()])

    async def h_toxic_create(self, request: web.Request) -> web.Response:
        proxy = self.find(request.match_info["proxy"])
        toxic = Toxic.parse(await _body(request))
        if toxic.name in proxy.toxics:
            raise ApiError(409, "toxic already exists")
        proxy.toxics[toxic.name] = toxic
        proxy.toxics_changed()
        log.info("toxic %s added to %s: %s", toxic.name, proxy.name, toxic.to_json())
        return web.json_response(toxic.to_json())

    def _toxic(self, request: web.Request) -> tuple[Proxy, Toxic]:
        proxy = self.find(request.match_info["proxy"])
        name = request.match_info["toxic"]
        if name not in proxy.toxics:
            raise ApiError(404, "toxic not found")
        return proxy, proxy.toxics[name]

    async def h_toxic(self, request: web.Request) -> web.Response:
        return web.json_response(self._toxic(request)[1].to_json())

    async def h_toxic_update(self, request: web.Request) -> web.Response:
        proxy, toxic = self._toxic(request)
        body = await _body(request)
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in ("name", "type", "stream")}
        updated = Toxic.parse(body, existing=toxic)
        proxy.toxics[toxic.name] = updated
        proxy.toxics_changed()
        return web.json_response(updated.to_json())

    async def h_toxic_delete(self, request: web.Request) -> web.Response:
        proxy, toxic = self._toxic(request)
        del proxy.toxics[toxic.name]
        proxy.toxics_changed()
        log.info("toxic %s removed from %s", toxic.name, proxy.name)
        return web.Response(status=204)


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except (ValueError, RecursionError) as exc:  # nesting past the parser's limit too
        raise ApiError(400, f"bad request body: {type(exc).__name__}") from None


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"error": exc.message, "status": exc.status}, status=exc.status)


async def serve(host: str, port: int, config: Path | None) -> None:
    proxy = FaultProxy()
    if config is not None:
        await proxy.populate(json.loads(config.read_text()))
    runner = web.AppRunner(proxy.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("fault proxy API on %s:%d, %d proxies", host, port, len(proxy.proxies))
    gc.freeze()  # what start-up made lives on: the collector's passes need not scan it again
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.shutdown()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8474)
    parser.add_argument("--config", type=Path, help="proxies to create at start (JSON list)")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop (uvloop: libuv's, the default; asyncio: the standard library's)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.host, args.port, args.config))
    else:
        asyncio.run(serve(args.host, args.port, args.config))


if __name__ == "__main__":
    main()
