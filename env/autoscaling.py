"""The local autoscaler: kube-controller-manager's HPA loop over the local environment.

Every sync period it observes each autoscaled workload the way the HPA controller would (pods:
the running replicas with their readiness and start time; CPU: each replica's process CPU over
the last window, against its declared request; queue depth: the workers' `cw_queue_depth`, as
prometheus-adapter serves it), runs the pure algorithm (`env/autoscaler.py`) on it, and scales
through the runtime's `Scaler` when the decision differs from the current count. It keeps the
history the algorithm needs and the last decision of each HPA, which the supervisor exports in
kube-state-metrics' names (`kube_samples`).

Observing is the runtime's side of the seam; deciding is pure and shared with a cluster (where
the real HPA decides from the same `deploy/base/` specs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from env import autoscaler, probes
from env.autoscaler import ControllerConfig, Decision, History, Observation, Pod, PodMetric
from env.hpa import HPASpec
from env.readiness import replica_ready
from env.scaling import Scaler, ScaleResult
from env.topology import Topology, Workload

log = logging.getLogger("cwh.autoscaler")


@dataclass
class Readiness:
    """What the controller knows of one replica between syncs."""

    pid: int | None = None  # the process these readings are of
    ready: bool = False
    since: float = 0.0  # wall clock of the last transition
    cpu_s: float | None = None  # process CPU seconds at the last sync
    at: float = 0.0  # monotonic time of that reading


@dataclass
class HPAState:
    """One HPA's memory: the algorithm's history, its last decision and last scaling."""

    spec: HPASpec
    history: History = field(default_factory=History)
    last: Decision | None = None
    last_scale: ScaleResult | None = None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (None when it is gone)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(t.user + t.system)


def queue_depth(text: str) -> float | None:
    """`cw_queue_depth` from a worker's /metrics text (None when it has none)."""
    for line in text.splitlines():
        if line.startswith("cw_queue_depth "):
            return float(line.split()[1])
    return None


class LocalAutoscaler:
    """The HPA controller for the autoscaled workloads of one runtime.

    Args:
        topology: what runs (which workloads an HPA drives, their requests and probes).
        specs: the HPAs by name (`env.hpa.load()`).
        running: the running replicas of a workload (`Supervisor.running`).
        scaler: how to change the count.
        cfg: the controller's flags (sync period, tolerance, windows).
        enabled: start enabled (the supervisor's admin API switches it at run time).
    """

    def __init__(
        self,
        topology: Topology,
        specs: Mapping[str, HPASpec],
        running: Callable[[str], list[Any]],
        scaler: Scaler,
        cfg: ControllerConfig | None = None,
        enabled: bool = True,
    ) -> None:
        self.topology = topology
        self.running = running
        self.scaler = scaler
        self.cfg = cfg or ControllerConfig()
        self.enabled = enabled
        self.states = {
            name: HPAState(spec)
            for name, spec in specs.items()
            if spec.target.name in {w.name for w in topology.workloads}
        }
        self.replicas: dict[str, Readiness] = {}

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Sync every period until `stopping()`; an error in one sync is logged, never fatal."""
        while not stopping():
            started = time.monotonic()
            if self.enabled:
                try:
                    await self.sync()
                except Exception:  # the controller outlives any one sync's failure
                    log.exception("autoscaler sync failed")
            await asyncio.sleep(max(0.0, self.cfg.sync_period_s - (time.monotonic() - started)))

    async def sync(self) -> None:
        for state in self.states.values():
            w = self.topology.workload(state.spec.target.name)
            obs = await self.observe(state.spec, w)
            decision = autoscaler.decide(state.spec, obs, state.history, self.cfg)
            state.last = decision
            applied = True
            if decision.desired != decision.current:
                log.info(
                    "%s: %d -> %d (%s; %s)",
                    w.name,
                    decision.current,
                    decision.desired,
                    decision.reason,
                    ", ".join(
                        f"{v.metric} {v.utilization or v.average or v.value}"
                        for v in decision.metrics
                    ),
                )
                result = await self.scaler.scale(w.name, decision.desired, f"hpa {state.spec.name}")
                state.last_scale = result
                applied = result.after != decision.current
            state.history = decision.next_history(applied)

    async def observe(self, spec: HPASpec, w: Workload) -> Observation:
        """The HPA controller's view of workload `w` now."""
        now_wall, now = time.time(), time.monotonic()
        comps = self.running(w.name)
        oks = await asyncio.gather(*(replica_ready(w, c) for c in comps))
        pods, cpu = [], {}
        requests = {"cpu": w.resources.cpu_request_m / 1000} if w.resources.cpu_request_m else {}
        # Names come back (api4 retired, later started again): what was known of a replica that
        # is gone must not be read as the new process's (its CPU counter restarts from zero).
        running = {c.name for c in comps}
        for name in [r.name for r in w.slots if r.name not in running]:
            self.replicas.pop(name, None)
        for comp, ok in zip(comps, oks, strict=True):
            seen = self.replicas.get(comp.name)
            if seen is None or seen.pid != comp.pid:
                seen = self.replicas[comp.name] = Readiness(pid=comp.pid, since=now_wall)
            if ok != seen.ready:
                seen.ready, seen.since = ok, now_wall
            pods.append(
                Pod(
                    comp.name,
                    phase="Running" if comp.pid else "Pending",
                    ready=ok,
                    ready_since=seen.since,
                    started_at=comp.started_wall or None,
                    requests=requests,
                )
            )
            used = cpu_seconds(comp.pid) if comp.pid else None
            if used is not None and seen.cpu_s is not None and now > seen.at:
                window = now - seen.at
                cpu[comp.name] = PodMetric((used - seen.cpu_s) / window, now_wall, window)
            seen.cpu_s, seen.at = used, now
        pod_metrics: dict[str, Mapping[str, PodMetric]] = {}
        values: dict[str, tuple[float, ...]] = {}
        for m in spec.metrics:
            if m.type == "Resource" and m.name == "cpu":
                pod_metrics[m.key] = cpu
            elif m.type == "External" and m.name == "cloudwatcher_queue_depth":
                depth = await self.queue_depth()
                values[m.key] = () if depth is None else (depth,)
        return Observation(now_wall, len(comps), tuple(pods), pod_metrics, values)

    async def queue_depth(self) -> float | None:
        """The jobs waiting or in flight, as prometheus-adapter serves it: the max over the
        workers' gauges (each counts the whole table)."""
        readings: list[Awaitable[tuple[int, str]]] = [
            probes.http_get(f"http://127.0.0.1:{c.ports['http']}/metrics")
            for c in self.running("worker")
        ]
        depths = []
        for got in await asyncio.gather(*readings, return_exceptions=True):
            if isinstance(got, BaseException):
                continue
            status, text = got
            if status == 200 and (d := queue_depth(text)) is not None:
                depths.append(d)
        return max(depths) if depths else None

    def kube_samples(self, available: Mapping[str, int]) -> list[autoscaler.ExportedSample]:
        """kube-state-metrics' samples for every HPA and its target Deployment; `available`:
        each workload's ready replicas now."""
        out = []
        for state in self.states.values():
            name = state.spec.target.name
            current = len(self.running(name))
            # Switched off, the controller decides nothing: no metric it saw, no desired count
            # of its own (a last decision kept on export would look like a live, idle HPA).
            last = state.last if self.enabled else None
            desired = last.desired if last else current
            out += autoscaler.kube_state_samples(
                state.spec, current, desired, available.get(name, 0), decision=last
            )
        return out

    def describe(self) -> dict[str, Any]:
        """For `GET /workloads`: each HPA's last decision, step by step."""
        out: dict[str, Any] = {"enabled": self.enabled, "sync_period_s": self.cfg.sync_period_s}
        for name, state in self.states.items():
            d = state.last
            out[name] = {
                "target": state.spec.target.name,
                "min": state.spec.min_replicas,
                "max": state.spec.max_replicas,
                "last": None
                if d is None
                else {
                    "at": d.at,
                    "current": d.current,
                    "recommendation": d.recommendation,
                    "desired": d.desired,
                    "reason": d.reason,
                    "metrics": [
                        {
                            "metric": v.metric,
                            "replicas": v.replicas,
                            "utilization": v.utilization,
                            "average": v.average,
                            "value": v.value,
                            "note": v.note,
                        }
                        for v in d.metrics
                    ],
                },
                "last_scale": state.last_scale.as_json() if state.last_scale else None,
            }
        return out
