"""Adding and removing replicas of a running environment, the way a Deployment controller and
a kubelet do it together.

- A replica added takes the workload's next free slot (its name and ports), starts, and joins
  the load balancer (API, hub) only once its readiness probe passes; the call returns when the
  load balancer routes to it.
- A replica removed drains first: the load balancer stops sending it new requests and the call
  waits (bounded) for those in flight; then SIGTERM, which each service answers gracefully (the
  API finishes its requests, a worker finishes or releases its job, a hub closes every socket
  with 1001 going-away so phones reconnect elsewhere); SIGKILL only after the grace period.
- Every voluntary removal honours the workload's disruption budget (`min_available`): a replica
  whose removal would leave fewer ready replicas than that is not removed, and the result says
  so, as an eviction refused by a PodDisruptionBudget.

One scaling action at a time per environment (a lock), so the autoscaler, `cwh env scale` and a
rollout never interleave their changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from env import configs, network, probes
from env.files import write_file
from env.layout import Layout
from env.readiness import ready_count, replica_ready
from env.settings import EnvSettings
from env.topology import Replica, Topology, Workload

log = logging.getLogger("cwh.scaling")

#: How long a new replica may take to become ready (and routed to), seconds (times the scale).
READY_TIMEOUT_S = 90.0
#: How long a drain waits for the requests in flight before the replica is stopped anyway.
DRAIN_TIMEOUT_S = 30.0


class ScaleError(ValueError):
    """A scaling request that cannot be done (unknown workload, count outside its slots)."""


class Replicated(Protocol):
    """What scaling needs of a supervised process (`env.supervisor.Component`)."""

    name: str
    kind: str
    ports: dict[str, int]
    state: str
    joined: bool

    @property
    def pid(self) -> int | None: ...


class Runtime(Protocol):
    """What scaling needs of the runtime that runs the processes (`env.supervisor.Supervisor`)."""

    @property
    def topology(self) -> Topology: ...

    @property
    def layout(self) -> Layout: ...

    @property
    def settings(self) -> EnvSettings: ...

    def running(self, workload: str) -> list[Any]: ...

    def new_replica(self, w: Workload, r: Replica) -> Any: ...

    async def spawn(self, comp: Any) -> None: ...

    async def retire(self, comp: Any) -> None: ...


@dataclass
class ScaleResult:
    """What one scaling action did.

    workload: the workload. before, after: replicas running before and after. added, removed:
    replica names. refused: why a removal was not made (the disruption budget), "" if none.
    seconds: how long it took.
    """

    workload: str
    before: int
    after: int
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    refused: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "before": self.before,
            "after": self.after,
            "added": self.added,
            "removed": self.removed,
            "refused": self.refused,
            "seconds": round(self.seconds, 3),
        }


async def poll(
    check: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.2
) -> bool:
    """Whether `check` held before `timeout_s`; its exceptions count as not yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if await check():
                return True
        except Exception as exc:  # a replica starting refuses connections: not yet
            log.debug("not yet: %r", exc)
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)


class Scaler:
    """Scales the workloads of one runtime; see the module's docstring for the guarantees."""

    def __init__(self, runtime: Runtime, timeout_scale: float = 1.0) -> None:
        self.runtime = runtime
        self.timeout_scale = timeout_scale
        self.lock = asyncio.Lock()

    async def scale(self, workload: str, replicas: int, reason: str = "") -> ScaleResult:
        """Bring `workload` to `replicas` running replicas (as far as its budget allows)."""
        try:
            w = self.runtime.topology.workload(workload)
        except KeyError as exc:
            raise ScaleError(str(exc.args[0])) from None
        if not 1 <= replicas <= len(w.slots):
            raise ScaleError(f"{workload}: {replicas} replicas asked, it has {len(w.slots)} slots")
        async with self.lock:
            started = time.monotonic()
            current = self.runtime.running(workload)
            result = ScaleResult(workload, len(current), len(current))
            log.info("scale %s: %d -> %d (%s)", workload, len(current), replicas, reason or "asked")
            if replicas > len(current):
                await self._add(w, replicas - len(current), result)
            elif replicas < len(current):
                await self._remove(w, len(current) - replicas, result)
            result.after = len(self.runtime.running(workload))
            result.seconds = time.monotonic() - started
            return result

    async def rollout(self, workload: str, reason: str = "") -> ScaleResult:
        """Replace every replica of `workload`, one by one, as a rolling update with maxSurge 1
        and maxUnavailable 0: for each, a surge replica starts in a free slot and is routed to,
        the old one drains and stops, its successor (today's code and configuration) starts
        under the same name and is routed to, and the surge replica drains and stops. Names
        stay (as a StatefulSet's do): logs, scrape targets and scripts keep finding them.

        Stops at the first replica that does not become ready (it is removed again, the rest
        stay as they were), as a rollout past its progress deadline; `refused` says so, and
        `added`/`removed` list the replicas replaced so far (each in both)."""
        try:
            w = self.runtime.topology.workload(workload)
        except KeyError as exc:
            raise ScaleError(str(exc.args[0])) from None
        async with self.lock:
            started = time.monotonic()
            old = list(self.runtime.running(workload))
            result = ScaleResult(workload, len(old), len(old))
            log.info("rollout %s: %d replicas (%s)", workload, len(old), reason or "asked")
            for comp in old:
                if why := await self._replace(w, comp):
                    result.refused = why
                    break
                result.added.append(comp.name)
                result.removed.append(comp.name)
            result.after = len(self.runtime.running(workload))
            result.seconds = time.monotonic() - started
            return result

    async def _replace(self, w: Workload, comp: Any) -> str:
        """One step of a rollout; "" when done, else why it stopped."""
        taken = {c.name for c in self.runtime.running(w.name)}
        free = [r for r in w.slots if r.name not in taken]
        if not free:
            return f"{w.name}: no free slot for the surge replica"
        surge = await self._start(w, free[0])
        if isinstance(surge, str):
            return surge
        await self._stop(w, comp)
        successor = await self._start(w, w.slot(comp.name))
        await self._stop(w, surge)
        return successor if isinstance(successor, str) else ""

    async def _start(self, w: Workload, slot: Replica) -> Any:
        """A replica in `slot`, routed to; a string (why) when it never became ready."""
        timeout = READY_TIMEOUT_S * self.timeout_scale
        comp = self.runtime.new_replica(w, slot)
        await self.runtime.spawn(comp)
        await self.publish(w)
        if await self._join(w, comp, timeout):
            return comp
        await self.runtime.retire(comp)
        await self.forget(w, comp)
        await self.publish(w)
        return f"{comp.name} was not ready within {timeout:.0f} s"

    async def _stop(self, w: Workload, comp: Any) -> None:
        """Drain, stop and forget one replica (no budget check: the caller keeps the count)."""
        await self.drain(w, comp)
        await self.runtime.retire(comp)
        await self.forget(w, comp)
        await self.publish(w)

    async def _add(self, w: Workload, n: int, result: ScaleResult) -> None:
        taken = {c.name for c in self.runtime.running(w.name)}
        slots = [r for r in w.slots if r.name not in taken][:n]
        comps = [self.runtime.new_replica(w, r) for r in slots]
        for comp in comps:
            await self.runtime.spawn(comp)
        await self.publish(w)  # scraped from its first second, like a pod
        timeout = READY_TIMEOUT_S * self.timeout_scale
        oks = await asyncio.gather(*(self._join(w, c, timeout) for c in comps))
        for comp, ok in zip(comps, oks, strict=True):
            result.added.append(comp.name)
            if not ok:
                log.warning("%s: not ready after %.0f s (left running)", comp.name, timeout)

    async def _join(self, w: Workload, comp: Replicated, timeout_s: float) -> bool:
        """Ready first, then into the load balancer; True once it routes to it."""
        if not await poll(lambda: replica_ready(w, comp), timeout_s):
            return False
        if w.load_balancer is None:
            return True
        layout, slot = self.runtime.layout, f"{w.load_balancer}/{comp.name}"
        port = comp.ports["http"]
        host = network.host(self.runtime.settings, comp.name)
        await probes.haproxy_command(layout, f"set server {slot} addr {host} port {port}")
        await probes.haproxy_command(layout, f"set server {slot} state ready")
        comp.joined = True  # from now on the load balancer keeper puts it back if HAProxy loses it

        async def routed() -> bool:
            rows = await probes.haproxy_stat(layout)
            return comp.name in probes.haproxy_servers_up(rows, w.load_balancer or "")

        return await poll(routed, timeout_s)

    async def _remove(self, w: Workload, n: int, result: ScaleResult) -> None:
        for _ in range(n):
            running = self.runtime.running(w.name)
            victim = running[-1]  # the highest slot: names stay compact
            if w.min_available is not None and await replica_ready(w, victim):
                available = await ready_count(w, running)
                if available - 1 < w.min_available:
                    result.refused = (
                        f"disruption budget: {w.name} keeps {w.min_available} available "
                        f"({available} are)"
                    )
                    log.warning("scale %s: %s", w.name, result.refused)
                    return
            await self._stop(w, victim)
            result.removed.append(victim.name)

    async def drain(self, w: Workload, comp: Replicated) -> None:
        """Stop routing to `comp` and wait (bounded) for its requests in flight to end."""
        if w.load_balancer is None:
            return
        layout, backend = self.runtime.layout, w.load_balancer
        await probes.haproxy_command(layout, f"set server {backend}/{comp.name} state drain")

        async def idle() -> bool:
            rows = await probes.haproxy_stat(layout)
            row = next(r for r in rows if r["pxname"] == backend and r["svname"] == comp.name)
            return int(row.get("scur") or 0) == 0

        if not await poll(idle, DRAIN_TIMEOUT_S * self.timeout_scale):
            log.warning("%s: requests still in flight after the drain; stopping it", comp.name)

    async def forget(self, w: Workload, comp: Replicated) -> None:
        """After a removal: its load balancer slot off (maintenance), so nothing routes there."""
        if w.load_balancer is not None:
            slot = f"{w.load_balancer}/{comp.name}"
            await probes.haproxy_command(self.runtime.layout, f"set server {slot} state maint")

    async def publish(self, w: Workload) -> None:
        """Tell Prometheus which replicas to scrape now (file-based discovery)."""
        comps = self.runtime.running(w.name)
        s = self.runtime.settings
        targets = [
            f"{network.host(s, c.name)}:{c.ports['http']}" for c in comps if "http" in c.ports
        ]
        path = self.runtime.layout.prometheus_targets / f"{w.kind}.json"
        # Atomically: Prometheus reads the folder whenever it likes, never half a file.
        write_file(path, configs.prometheus_target_file(targets, {"role": w.kind}), mode=0o644)
