"""Metrics, health, JSON logs with correlation ids, and spans: the same for every service.

Liveness means "my loop ticked recently"; readiness means "send me work": not while shutting down,
and, for services behind no load balancer (workers, schedulers), when their database answers.
Services behind the load balancer do not check a shared dependency in readiness: a stalled database
would take every replica out of rotation at once (see api.py). Each app gets its own Prometheus
registry, so in-process tests build several apps side by side without duplicate-metric errors.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import random
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reference_impl.planted import install_planted
from reference_impl.settings import ServiceSettings

log = logging.getLogger("cw.observability")

correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")

Check = Callable[[], Awaitable[bool]]


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the service, instance and the current correlation id."""

    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "instance": self.instance,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if cid := correlation_id.get():
            out["correlation_id"] = cid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(service: str, instance: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, instance))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Tracer:
    """OpenTelemetry spans, exported as JSON lines to a file (no collector needed to read them).

    The trace id is the correlation id when that is 32 hex digits (ours are), so the API's span
    of a submit and the worker's span of its job land in one trace. Each app has its own
    provider: in-process tests build several apps side by side.
    """

    def __init__(self, service: str, path: str) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self._file = open(path, "a") if path else None  # noqa: SIM115 - closed in shutdown()
        if self._file is not None:
            exporter = ConsoleSpanExporter(
                out=self._file, formatter=lambda span: span.to_json(indent=None) + "\n"
            )
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("cloudwatcher")

    def span(self, name: str, **attrs: Any) -> Any:
        """A context manager: a span, child of the current correlation id's trace."""
        parent = None
        cid = correlation_id.get()
        if len(cid) == 32 and all(c in "0123456789abcdef" for c in cid):
            remote = SpanContext(
                trace_id=int(cid, 16),
                span_id=random.getrandbits(64) or 1,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            parent = set_span_in_context(NonRecordingSpan(remote))
        return self.tracer.start_as_current_span(name, context=parent, attributes=attrs)

    def shutdown(self) -> None:
        self.provider.shutdown()
        if self._file is not None:
            self._file.close()


class Metrics:
    """The metrics every service exposes, plus room for its own in `registry`."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.http_latency = Histogram(
            "cw_http_request_duration_seconds",
            "HTTP request latency by route and status",
            ["service", "method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.loop_ticks = Counter(
            "cw_loop_ticks_total",
            "Background loop cycles",
            ["service", "loop"],
            registry=self.registry,
        )
        self.up = Gauge(
            "cw_service_up", "1 while the service runs", ["service"], registry=self.registry
        )
        self.up.labels(service).set(1)
        self.service = service
        # CPU and memory of the process: the autoscaling SLO's CPU utilisation.
        ProcessCollector(registry=self.registry)
        self.config = Gauge(
            "cw_config",
            "Settings the SLOs check (heartbeat, TTLs, retention), in seconds",
            ["service", "setting"],
            registry=self.registry,
        )

    def declare(self, setting: str, seconds: float) -> None:
        """Expose a setting an SLO checks, so a misconfigured deployment fails the gate."""
        self.config.labels(self.service, setting).set(seconds)


METRICS_KEY = web.AppKey("metrics", Metrics)
TRACER_KEY = web.AppKey("tracer", Tracer)
READY_CHECKS_KEY = web.AppKey("ready_checks", dict)
LAST_TICK_KEY = web.AppKey("last_tick", dict)


#: Routes for the environment's own eyes (probes, Prometheus, experiments): a replica's own port.
INTERNAL_PREFIXES = ("/health/", "/metrics", "/admin/")


@web.middleware
async def internal_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse internal routes to requests the load balancer forwarded (it adds X-Forwarded-For):
    behind the public frontend's allowlist, a second wall that does not depend on how a path is
    spelled (aiohttp serves `/%6detrics` as `/metrics`)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    if route.startswith(INTERNAL_PREFIXES) and "X-Forwarded-For" in request.headers:
        raise web.HTTPNotFound()
    return await handler(request)


def install(app: web.Application, settings: ServiceSettings) -> Metrics:
    """Add metrics, the correlation-id and latency middleware, health routes and the planted
    faults' admin route (refusing unless the settings allow it) to `app`."""
    service = settings.role
    metrics = Metrics(service)
    app[METRICS_KEY] = metrics
    tracer = app[TRACER_KEY] = Tracer(service, settings.trace_file)
    install_planted(app, settings.planted_faults)

    async def flush_traces(_: web.Application) -> None:
        tracer.shutdown()

    app.on_cleanup.append(flush_traces)
    app[STOPPING_KEY] = asyncio.Event()

    async def stopping(_: web.Application) -> None:
        app[STOPPING_KEY].set()

    # Before cleanup contexts cancel their tasks: a task ending now is the shutdown's doing.
    app.on_shutdown.append(stopping)
    app[READY_CHECKS_KEY] = {}
    app[LAST_TICK_KEY] = {}

    @web.middleware
    async def observe(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        cid = request.headers.get("X-Correlation-Id") or uuid.uuid4().hex
        token = correlation_id.set(cid[:64])
        started = time.perf_counter()
        status = 500
        resource = request.match_info.route.resource
        route_name = resource.canonical if resource is not None else "unmatched"
        try:
            with tracer.span(
                f"{request.method} {route_name}",
                **{
                    "http.request.method": request.method,
                    # The route template, never the raw path: a path may carry a document's
                    # name, which is encrypted at rest and must not leak into trace files.
                    "http.route": route_name,
                },
            ):
                response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers["X-Correlation-Id"] = correlation_id.get()
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.http_latency.labels(service, request.method, route_name, str(status)).observe(
                time.perf_counter() - started
            )
            correlation_id.reset(token)

    app.middlewares.insert(0, observe)
    app.middlewares.append(internal_only)

    async def live(_: web.Request) -> web.Response:
        now = time.monotonic()
        stale = {
            k: round(now - t, 1)
            for k, t in app[LAST_TICK_KEY].items()
            if now - t > settings.liveness_stale_s
        }
        if stale:
            return web.json_response({"live": False, "stale_loops_s": stale}, status=503)
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        if app[STOPPING_KEY].is_set():
            # Shutting down: the load balancer stops sending new work while in-flight drains.
            return web.json_response({"ready": False, "stopping": True}, status=503)
        results = {}
        for name, check in app[READY_CHECKS_KEY].items():
            try:
                results[name] = bool(await check())
            except Exception:
                results[name] = False
        ok = all(results.values())
        return web.json_response({"ready": ok, "checks": results}, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics_view)
    return metrics


def frames_only(exc: BaseException) -> str:
    """An exception's type and where it was raised (innermost first), without its message:
    for errors met while handling request content, whose messages may quote a document name or
    a response (kept encrypted at rest, so never in plaintext in logs either)."""
    frames = traceback.extract_tb(exc.__traceback__)[-8:]
    where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__} at {where or 'unknown'}"


STOPPING_KEY = web.AppKey("stopping", asyncio.Event)


def supervise(
    app: web.Application, coro: Coroutine[Any, Any, None], name: str
) -> asyncio.Task[None]:
    """Start a background task that must run as long as the service does (habit 11).

    Its loop should survive its own errors; if it ends anyway (an exception nobody caught, or
    a return) while the service is not shutting down, the service cannot do its job and must
    not look healthy: log it with the traceback and stop the process (SIGTERM: the usual
    graceful shutdown), so that the supervisor, like a kubelet, restarts it. Never a task whose
    exception waits for the garbage collector.
    """
    task = asyncio.create_task(coro, name=name)

    def ended(t: asyncio.Task[None]) -> None:
        if t.cancelled() or app[STOPPING_KEY].is_set():
            return
        exc = t.exception()
        log.critical(
            "background task %s ended (%r) while the service runs: stopping the process",
            name,
            exc,
            exc_info=exc,
        )
        os.kill(os.getpid(), signal.SIGTERM)

    task.add_done_callback(ended)
    return task


def tick(app: web.Application, loop: str) -> None:
    """Record that background loop `loop` completed a cycle (liveness)."""
    app[LAST_TICK_KEY][loop] = time.monotonic()
    app[METRICS_KEY].loop_ticks.labels(app[METRICS_KEY].service, loop).inc()
