"""Fault knobs shared by the emulators: latency, errors, 429s and outages, set at run time.

`GET /admin/knobs` shows them, `POST /admin/knobs` with a JSON object changes the ones it names
(unknown names or wrong types are a 422). Experiments turn them; nothing restarts.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

from reference_impl.control_plane import guarded
from reference_impl.errors import ApiError, json_body


@dataclass
class Knobs:
    """Attributes:
    latency_ms: mean added latency.
    latency_dist: fixed | exponential | lognormal (sigma 1, same mean).
    error_rate: share of calls answered 500 (0..1).
    rate_429: share of calls answered 429 with Retry-After.
    retry_after_s: the Retry-After of those 429s.
    outage: when true, connections are dropped without an answer (a network error).
    malformed_rate: share of calls answered 200 with a body the caller cannot use (JSON of the
        wrong shape from the LLM, bytes that are not UTF-8 from a storage provider): hostile
        input that must fail one job, never a worker.
    """

    latency_ms: float = 0.0
    latency_dist: str = "fixed"
    error_rate: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    outage: bool = False
    malformed_rate: float = 0.0
    #: What a malformed answer carries: set by the service that installs the knobs.
    malformed_body: bytes = field(default=b"", repr=False)
    malformed_type: str = field(default="application/octet-stream", repr=False)

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name: f.type for f in fields(self) if f.repr}
        for name, value in changes.items():
            if name not in known:
                raise ApiError(422, {"field": name, "problem": "unknown knob"})
            kind = known[name]
            if kind == "bool" and not isinstance(value, bool):
                raise ApiError(422, {"field": name, "problem": "a boolean"})
            if kind == "float" and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ApiError(422, {"field": name, "problem": "a finite number >= 0"})
            if name in ("error_rate", "rate_429", "malformed_rate") and value > 1:
                raise ApiError(422, {"field": name, "problem": "a share between 0 and 1"})
            if name == "latency_dist" and value not in ("fixed", "exponential", "lognormal"):
                raise ApiError(422, {"field": name, "problem": "fixed, exponential or lognormal"})
        for name, value in changes.items():
            setattr(self, name, float(value) if known[name] == "float" else value)

    def delay_s(self) -> float:
        mean = self.latency_ms / 1000
        if mean <= 0:
            return 0.0
        if self.latency_dist == "exponential":
            return random.expovariate(1 / mean)
        if self.latency_dist == "lognormal":
            sigma = 1.0
            return random.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)
        return mean

    async def apply(self, request: web.Request) -> web.Response | None:
        """Play the knobs for one call: a response to send instead, or None to answer normally."""
        if self.outage:
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError  # the connection is gone; nothing to answer
        if delay := self.delay_s():
            await asyncio.sleep(delay)
        draw = random.random()
        if draw < self.rate_429:
            return web.json_response(
                {"error": "too_many_requests", "detail": "rate limited (knob)"},
                status=429,
                headers={"Retry-After": f"{self.retry_after_s:g}"},
            )
        if draw < self.rate_429 + self.error_rate:
            return web.json_response(
                {"error": "internal", "detail": "injected error (knob)"}, status=500
            )
        if draw < self.rate_429 + self.error_rate + self.malformed_rate:
            return web.Response(body=self.malformed_body, content_type=self.malformed_type)
        return None

    def public(self) -> dict[str, Any]:
        """The knobs a client may read and set (not the malformed body itself)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.repr}


KNOBS = web.AppKey("knobs", Knobs)


def install_knobs(
    app: web.Application, malformed: bytes, malformed_type: str = "application/json"
) -> Knobs:
    """Add `/admin/knobs`; `malformed` is the body of this service's malformed answers."""
    knobs = app[KNOBS] = Knobs(malformed_body=malformed, malformed_type=malformed_type)

    async def get(_: web.Request) -> web.Response:
        return web.json_response(knobs.public())

    async def post(request: web.Request) -> web.Response:
        changes = await json_body(request)
        if not isinstance(changes, dict):
            raise ApiError(422, "body must be a JSON object of knobs")
        knobs.update(changes)
        return web.json_response(knobs.public())

    # A control plane: nothing a web page could make a browser send gets through.
    app.router.add_get("/admin/knobs", guarded(get))
    app.router.add_post("/admin/knobs", guarded(post))
    return knobs
