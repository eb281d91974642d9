"""Liveness probes, the kubelet's way: a process that stops being live is restarted.

A service is live while its background loops tick (`/health/live`, reference_impl's
observability). A loop that stopped (wedged on a call without a deadline, or dead of an
exception) leaves a process that answers HTTP and does nothing: only a restart helps, and only
something outside the process can do it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from env import probes

log = logging.getLogger("cwh.liveness")

#: Kubernetes' `timeoutSeconds`: a probe that takes longer failed (a blocked event loop).
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2)
#: Failures are not counted before the first success or this long after start (the part of
#: Kubernetes' `startupProbe`): a service that cannot start exits by itself.
STARTUP_GRACE_S = 60.0


@dataclass(frozen=True)
class LivenessProbe:
    """Attributes:
    url: the endpoint that answers 200 while the process is live.
    period_s: seconds between probes (`periodSeconds`).
    failure_threshold: consecutive failures that mean "restart it" (`failureThreshold`).
    """

    url: str
    period_s: float = 5.0
    failure_threshold: int = 3


class FailureCounter:
    """Consecutive failures, not counted during start-up. Pure: fed results, says when."""

    def __init__(self, threshold: int, grace_s: float, started: float) -> None:
        self.threshold, self.grace_s, self.started = threshold, grace_s, started
        self.failures = 0
        self.seen_live = False

    def record(self, live: bool, now: float) -> bool:
        """Record one probe result at `now`; True when the process must be restarted."""
        if live:
            self.failures, self.seen_live = 0, True
            return False
        if not self.seen_live and now - self.started < self.grace_s:
            return False
        self.failures += 1
        return self.failures >= self.threshold


async def watch(
    probe: LivenessProbe,
    running: Callable[[], bool],
    restart: Callable[[str], Awaitable[None]],
) -> None:
    """Probe while `running()` holds; call `restart(reason)` once when the threshold is met."""
    counter = FailureCounter(probe.failure_threshold, STARTUP_GRACE_S, time.monotonic())
    while running():
        await asyncio.sleep(probe.period_s)
        if not running():
            return
        live = await probes.http_ok(probe.url, PROBE_TIMEOUT)
        if counter.record(live, time.monotonic()):
            reason = f"liveness: {counter.failures} failed probes of {probe.url}"
            log.warning("%s", reason)
            await restart(reason)
            return
