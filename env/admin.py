"""The supervisor's admin API (HTTP on 127.0.0.1, `Ports.supervisor`).

    GET  /status                       phase, error, and every component (pid, state, restarts)
    POST /components/{name}/hold       body {"seconds": float}: no restart until released or
                                       timed out
    POST /components/{name}/release    allow restarts again (a dead component restarts at once)
    GET  /workloads                    every workload: replicas, bounds, budget, autoscaler
    POST /workloads/{name}/scale       body {"replicas": int}: scale now (`kubectl scale`)
    POST /workloads/{name}/rollout     replace every replica, surge 1, unavailable 0
    POST /autoscaler                   body {"enabled": bool}: switch the local autoscaler
    GET  /metrics                      kube-state-metrics' names for the workloads (Prometheus)
    POST /shutdown                     stop everything in reverse order and exit

Errors are JSON `{"error", "detail"}` with a 4xx status; the control-plane guard refuses what a
browser could send cross-site.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from env.autoscaler import ExportedSample
from env.readiness import ready_count
from env.scaling import ScaleError
from env.topology import Workload
from reference_impl.control_plane import control_plane_guard

if TYPE_CHECKING:
    from env.supervisor import Component, Supervisor

#: Workloads whose replicas come and go (the services): exported and scalable.
SCALABLE_KINDS = ("api", "hub", "worker", "scheduler")


def bad_request(detail: str, status: int = 400) -> web.HTTPException:
    error = {400: "bad_request", 404: "not_found", 409: "conflict"}.get(status, "error")
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 409: web.HTTPConflict}[status]
    return cls(
        text=web.json_response({"error": error, "detail": detail}).text,
        content_type="application/json",
    )


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # nesting past the parser's limit too
        raise bad_request("the body is not JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def exposition(samples: list[ExportedSample]) -> str:
    """Prometheus' text format, one gauge family per name."""
    lines, typed = [], set()
    for s in samples:
        if s.name not in typed:
            typed.add(s.name)
            lines.append(f"# TYPE {s.name} gauge")
        labels = ",".join(f'{k}="{v}"' for k, v in s.labels)
        lines.append(f"{s.name}{{{labels}}} {s.value:g}")
    return "\n".join(lines) + "\n"


async def workload_samples(sup: Supervisor) -> list[ExportedSample]:
    """Deployments and PodDisruptionBudgets as kube-state-metrics names them, and each HPA."""
    scalable = [w for w in sup.topology.workloads if w.kind in SCALABLE_KINDS]
    ready = await asyncio.gather(*(ready_count(w, sup.running(w.name)) for w in scalable))
    available = {w.name: n for w, n in zip(scalable, ready, strict=True)}
    out: list[ExportedSample] = []
    hpa_targets = set()
    if sup.autoscaler is not None:
        out += sup.autoscaler.kube_samples(available)
        hpa_targets = {s.spec.target.name for s in sup.autoscaler.states.values()}
    for w in scalable:
        dep = (("namespace", "default"), ("deployment", w.name))
        running = float(len(sup.running(w.name)))
        if w.name not in hpa_targets:  # an HPA's target is exported with it
            out += [
                ExportedSample("kube_deployment_spec_replicas", dep, running),
                ExportedSample("kube_deployment_status_replicas", dep, running),
                ExportedSample(
                    "kube_deployment_status_replicas_available", dep, float(available[w.name])
                ),
            ]
        if w.min_available is not None:
            pdb = (("namespace", "default"), ("poddisruptionbudget", w.name))
            out += [
                ExportedSample(
                    "kube_poddisruptionbudget_status_desired_healthy", pdb, float(w.min_available)
                ),
                ExportedSample(
                    "kube_poddisruptionbudget_status_current_healthy", pdb, float(available[w.name])
                ),
            ]
    return out


def describe_workload(sup: Supervisor, w: Workload) -> dict[str, Any]:
    return {
        "name": w.name,
        "kind": w.kind,
        "replicas": [c.name for c in sup.running(w.name)],
        "min_replicas": w.min_replicas,
        "max_replicas": w.max_replicas,
        "slots": len(w.slots),
        "autoscaled": w.autoscaled,
        "min_available": w.min_available,
        "cpu_request_m": w.resources.cpu_request_m,
    }


def metrics_handler(sup: Supervisor) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /metrics: the workloads as kube-state-metrics would show them."""

    async def metrics(_: web.Request) -> web.Response:
        text = exposition(await workload_samples(sup)) if sup.phase == "ready" else ""
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    return metrics


def metrics_app(sup: Supervisor) -> web.Application:
    """Only /metrics: what the supervisor serves on the containers network's bridge, where
    Prometheus (in its container) scrapes it; the admin API stays on loopback."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(sup))
    return app


def admin_app(sup: Supervisor) -> web.Application:
    app = web.Application(middlewares=[control_plane_guard()])

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response(sup.status())

    def find(request: web.Request) -> Component:
        name = request.match_info["name"]
        if name not in sup.components:
            raise bad_request(f"no component {name}", 404)
        return sup.components[name]

    async def hold(request: web.Request) -> web.Response:
        comp = find(request)
        seconds = (await json_body(request)).get("seconds", 300)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 < seconds <= 3600
        ):
            raise bad_request("seconds must be a number in (0, 3600]")
        comp.held_until = time.monotonic() + float(seconds)
        return web.json_response(comp.describe())

    async def release(request: web.Request) -> web.Response:
        comp = find(request)
        comp.held_until = 0.0
        return web.json_response(comp.describe())

    async def workloads(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "workloads": [
                    describe_workload(sup, w)
                    for w in sup.topology.workloads
                    if w.kind in SCALABLE_KINDS
                ],
                "autoscaler": sup.autoscaler.describe() if sup.autoscaler else None,
            }
        )

    async def scale(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        replicas = (await json_body(request)).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise bad_request('"replicas" must be an integer')
        if sup.phase != "ready":
            raise bad_request(f"the environment is {sup.phase}, not ready", 409)
        if name not in {w.name for w in sup.topology.workloads if w.kind in SCALABLE_KINDS}:
            raise bad_request(f"{name} is not a scalable workload", 404)
        try:
            result = await sup.scaler.scale(name, replicas, "asked through the admin API")
        except ScaleError as exc:
            raise bad_request(str(exc)) from None
        return web.json_response(result.as_json())

    async def rollout(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if sup.phase != "ready":
            raise bad_request(f"the environment is {sup.phase}, not ready", 409)
        if name not in {w.name for w in sup.topology.workloads if w.kind in SCALABLE_KINDS}:
            raise bad_request(f"{name} is not a scalable workload", 404)
        result = await sup.scaler.rollout(name, "asked through the admin API")
        return web.json_response(result.as_json())

    async def autoscaler(request: web.Request) -> web.Response:
        enabled = (await json_body(request)).get("enabled")
        if not isinstance(enabled, bool):
            raise bad_request('"enabled" must be true or false')
        if sup.autoscaler is None:
            raise bad_request("no autoscaler runs (services off, or not ready yet)", 409)
        sup.autoscaler.enabled = enabled
        return web.json_response(sup.autoscaler.describe())

    async def do_shutdown(_: web.Request) -> web.Response:
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(sup.shutdown()))
        return web.json_response({"phase": "stopping"})

    app.router.add_get("/status", get_status)
    app.router.add_post("/components/{name}/hold", hold)
    app.router.add_post("/components/{name}/release", release)
    app.router.add_get("/workloads", workloads)
    app.router.add_post("/workloads/{name}/scale", scale)
    app.router.add_post("/workloads/{name}/rollout", rollout)
    app.router.add_post("/autoscaler", autoscaler)
    app.router.add_get("/metrics", metrics_handler(sup))
    app.router.add_post("/shutdown", do_shutdown)
    return app
