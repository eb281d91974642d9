"""Planted faults: defects put into the reference system on purpose, to measure the harness.

A harness that reports "0 lost" is only believable if it reports "3 lost" when 3 were lost. These
knobs make the system misbehave in counted, known ways (and, for liveness tests, wedge a loop),
so a test can check that the harness finds exactly what was planted.

They exist only where `ServiceSettings.planted_faults` is on, which the local and test
environments set (`CW_PLANTED_FAULTS=1`); everywhere else `/admin/planted` answers 403 and
nothing can be planted. The route is on the service's own port, never behind the public frontend.

    GET  /admin/planted            what is armed, and what was planted so far
    POST /admin/planted            JSON object: counts to arm (added to what is armed), or
                                   {"wedge_loop": "<loop name>"} / {"reset": true} /
                                   {"disarm": true} (plant no more, keep the record) /
                                   {"leak_mb_per_s": N} (hold N MB more each second, up to
                                   LEAK_CAP_MB; 0 stops growing, reset frees it)

The leak is memory pressure from inside, as a real leak gives it: resident pages (written, not
merely reserved), so a container's memory limit is reached and the kernel's OOM killer acts
(`experiments.activities.containers.actions.squeeze_memory`). Bounded: it stops at LEAK_CAP_MB,
as a process with no memory limit (the local runtime) must not take the host down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

from reference_impl.control_plane import guarded
from reference_impl.errors import ApiError, json_body

log = logging.getLogger("cw.planted")

#: The counted faults a service may arm; each service consults the ones of its role.
COUNTED = ("lose_acks", "duplicate_keys", "swallow_notifications")
#: The most a planted leak holds (the seed's pod limit, 2 GiB), and its growth rate's bound.
LEAK_CAP_MB, LEAK_MAX_MB_PER_S = 2048, 512
#: How often the leak grows: a tenth of its rate at a time, so the growth looks continuous.
LEAK_TICK_S = 0.1
_FILL = b"\xa5" * (1 << 20)


@dataclass
class PlantedFaults:
    """Attributes:
    enabled: False outside the local and test environments: nothing can be armed.
    armed: fault name -> how many more times to plant it.
    planted: fault name -> the ids it was planted on (request ids, idempotency keys), in order.
    wedge_loop: a background loop whose name matches stops making progress (liveness tests).
    leak_mb_per_s: how fast the planted leak grows (0: it does not). leaked_mb: what it holds.
    resets, disarms: how many of each so far (`epoch`, which `give_back` is handed).
    """

    enabled: bool
    armed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))
    planted: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in COUNTED})
    wedge_loop: str = ""
    leak_mb_per_s: int = 0
    leaked_mb: float = 0.0
    resets: int = 0
    disarms: int = 0
    _hoard: list[mmap.mmap] = field(default_factory=list, repr=False)

    def view(self) -> dict[str, Any]:
        """What GET shows: everything but the leaked memory itself."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def leak_step(self, seconds: float) -> float:
        """Grow the leak by `seconds` of its rate (never past LEAK_CAP_MB); the MB added.
        Written pages, not zeroed ones: zero pages are mapped lazily and would not count. Each
        step is a mapping of its own, not the heap: a reset unmaps them and the process is its
        size again (freed heap memory often stays with the process)."""
        if not self.enabled or self.leak_mb_per_s <= 0:
            return 0.0
        mb = min(self.leak_mb_per_s * seconds, LEAK_CAP_MB - self.leaked_mb)
        size = int(mb * (1 << 20))
        if size <= 0:
            return 0.0
        pages = mmap.mmap(-1, size)
        for offset in range(0, size, len(_FILL)):
            chunk = min(len(_FILL), size - offset)
            pages[offset : offset + chunk] = _FILL[:chunk]
        self._hoard.append(pages)
        self.leaked_mb += mb
        return mb

    def free_leak(self) -> None:
        """Stop the leak and give its memory back."""
        self.leak_mb_per_s, self.leaked_mb = 0, 0.0
        for pages in self._hoard:
            pages.close()
        self._hoard = []

    async def leak(self) -> None:
        """The leak's loop: from its arming until it stops growing (disarmed, or capped)."""
        while self.leak_step(LEAK_TICK_S) > 0:
            await asyncio.sleep(LEAK_TICK_S)

    def take(self, fault: str, ident: str) -> bool:
        """True (and record `ident`) when `fault` is armed: the caller plants it once now."""
        if not self.enabled or self.armed.get(fault, 0) <= 0:
            return False
        self.armed[fault] -= 1
        self.planted[fault].append(ident)
        return True

    @property
    def epoch(self) -> tuple[int, int]:
        """Taken with a `take`, handed back to `give_back`."""
        return self.resets, self.disarms

    def give_back(self, fault: str, ident: str, epoch: tuple[int, int]) -> None:
        """Undo a `take` (made at `epoch`) whose planting did not happen after all (the job's
        completion was fenced, or failed): off the record and armed once more, so the record
        stays exact. After a reset the record no longer holds it (and may hold a later take of
        the same id), so nothing is touched; after a disarm it comes off the record, but the
        fault stays disarmed."""
        resets, disarms = epoch
        if resets != self.resets:
            return
        self.planted[fault].remove(ident)
        if disarms == self.disarms:
            self.armed[fault] = self.armed.get(fault, 0) + 1

    async def wedge_point(self, loop: str) -> None:
        """Called by background loops once per cycle: never returns while `loop` is wedged, as
        a loop stuck on a call without a deadline would not."""
        while self.enabled and self.wedge_loop and loop.startswith(self.wedge_loop):
            await asyncio.sleep(0.5)

    def update(self, body: dict[str, Any]) -> None:
        for verb in ("reset", "disarm"):
            if verb in body and len(body) > 1:
                raise ApiError(422, {"field": verb, "problem": "takes no other field"})
        if body.get("reset") is True:
            self.resets += 1
            self.armed = dict.fromkeys(COUNTED, 0)
            self.planted = {k: [] for k in COUNTED}
            self.wedge_loop = ""
            self.free_leak()
            return
        if body.get("disarm") is True:  # plant no more; what was planted stays on record
            self.disarms += 1
            self.armed = dict.fromkeys(COUNTED, 0)
            self.leak_mb_per_s = 0  # the leak grows no more; what it holds stays, as a record
            return
        for name, value in body.items():
            if name == "wedge_loop":
                if not isinstance(value, str) or len(value) > 64:
                    raise ApiError(422, {"field": name, "problem": "a loop name (string)"})
                continue
            if name == "leak_mb_per_s":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int)
                    or not 0 <= value <= LEAK_MAX_MB_PER_S
                ):
                    raise ApiError(422, {"field": name, "problem": f"0..{LEAK_MAX_MB_PER_S}"})
                continue
            if name not in COUNTED:
                raise ApiError(422, {"field": name, "problem": f"one of {', '.join(COUNTED)}"})
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
                raise ApiError(422, {"field": name, "problem": "an integer 0..10000"})
        for name, value in body.items():
            if name == "wedge_loop":
                self.wedge_loop = value
            elif name == "leak_mb_per_s":
                self.leak_mb_per_s = value
            else:
                self.armed[name] += value


PLANTED = web.AppKey("planted", PlantedFaults)


def _said_if_failed(task: asyncio.Task[None]) -> None:
    """A leak that died (the allocation refused, say) is logged, not lost with its task."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("planted leak stopped: %r", exc)


def install_planted(app: web.Application, enabled: bool) -> PlantedFaults:
    """Add `/admin/planted` to `app`; it refuses everything unless `enabled`."""
    planted = app[PLANTED] = PlantedFaults(enabled=enabled)

    def guard() -> None:
        if not planted.enabled:
            raise ApiError(
                403,
                "planted faults are off: only the local and test environments enable them"
                " (CW_PLANTED_FAULTS=1)",
            )

    async def get(_: web.Request) -> web.Response:
        guard()
        return web.json_response(planted.view())

    async def post(request: web.Request) -> web.Response:
        guard()
        body = await json_body(request)
        if not isinstance(body, dict):
            raise ApiError(422, "body must be a JSON object")
        planted.update(body)
        if planted.leak_mb_per_s > 0 and (not leaks or leaks[-1].done()):
            leaks[:] = [asyncio.create_task(planted.leak(), name="planted-leak")]
            leaks[0].add_done_callback(_said_if_failed)
        return web.json_response(planted.view())

    leaks: list[asyncio.Task[None]] = []  # the leak's loop, the last one started

    async def leaking(_: web.Application) -> AsyncIterator[None]:
        yield
        for task in leaks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # A control plane: nothing a web page could make a browser send gets through.
    app.router.add_get("/admin/planted", guarded(get))
    app.router.add_post("/admin/planted", guarded(post))
    if enabled:
        app.cleanup_ctx.append(leaking)
    return planted
