"""The timelines that come from Prometheus: phones connected, replicas, replication lag, who
was primary when, queue depth. Queried over the run's window when the report is made, and
saved beside it (`prometheus.json`) so a report made again later, when the environment is
gone, still has them. Turning the answers into charts is pure and tested on recorded answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests import RequestException
from urllib3.util.retry import Retry

from cwh.report.model import Chart, Lane, Line

SAVED = "prometheus.json"
PALETTE = ("#1565c0", "#6a1b9a", "#00838f", "#ef6c00", "#4e342e", "#ad1457", "#558b2f")
#: A scrape missing for this many steps is a gap (the target was down), not a slow scrape.
GAP_STEPS = 2.5


@dataclass(frozen=True)
class Query:
    """One PromQL query of a chart: `label` names each series (the label whose value tells the
    series apart, "" for a single series called `name`)."""

    promql: str
    label: str = ""
    name: str = ""
    dashed: bool = False


@dataclass(frozen=True)
class ChartSpec:
    chart_id: str
    title: str
    unit: str
    kind: Literal["lines", "pg-roles", "redis-roles"]
    queries: tuple[Query, ...]
    note: str = ""


CHARTS = (
    ChartSpec(
        "phones",
        "Phones connected (WebSockets per hub, and in all)",
        "sockets",
        "lines",
        (
            Query("sum(cw_ws_connections)", name="all hubs"),
            Query("sum by (instance) (cw_ws_connections)", label="instance", dashed=True),
        ),
    ),
    ChartSpec(
        "replicas",
        "Replicas per deployment (scraped and up), and the HPA's desired count (dashed)",
        "replicas",
        "lines",
        (
            Query('sum by (role) (up{job="services"})', label="role"),
            Query(
                "max by (horizontalpodautoscaler) "
                "(kube_horizontalpodautoscaler_status_desired_replicas)",
                label="horizontalpodautoscaler",
                dashed=True,
            ),
        ),
    ),
    ChartSpec(
        "lag",
        "Replication lag (replay lag per standby, from the primary's pg_stat_replication)",
        "s",
        "lines",
        (
            Query(
                "max by (application_name) (pg_replication_replay_lag_seconds)", "application_name"
            ),
        ),
    ),
    ChartSpec(
        "pg-roles",
        "PostgreSQL roles (Patroni): who was primary when",
        "",
        "pg-roles",
        (Query("max by (member) (2 * patroni_primary + patroni_replica)", "member"),),
        "A gap is a member Prometheus could not scrape (Patroni down).",
    ),
    ChartSpec(
        "redis-roles",
        "Redis roles: which node was master when",
        "",
        "redis-roles",
        (Query("max by (instance, role) (redis_instance_info)", "instance"),),
        "A gap is a node Prometheus could not scrape (Redis down).",
    ),
    ChartSpec(
        "queue",
        "Queue depth (requests waiting for a worker)",
        "requests",
        "lines",
        (Query("max(cw_queue_depth)", name="queued"),),
    ),
)

PG_ROLES = {2: "primary", 1: "replica", 0: "no role"}
#: Redis says slave in INFO; the report says replica, as Redis's own documentation now does.
REDIS_ROLES = {"master": "master", "slave": "replica"}
ROLE_COLORS = (
    ("primary", "#1565c0"),
    ("master", "#1565c0"),
    ("replica", "#90caf9"),
    ("no role", "#bdbdbd"),
)


class Unavailable(Exception):
    """Prometheus could not be asked (unreachable, refused the query)."""


def step_for(span_s: float) -> float:
    """Range-query resolution: the scrape interval (2 s) up to 400 points per series."""
    return max(2.0, round(span_s / 400))


def fetch(url: str, t0: float, t1: float, timeout_s: float = 10.0) -> dict[str, Any]:
    """Every chart's queries over [t0, t1], as saved in `prometheus.json`.

    Raises:
        Unavailable: Prometheus did not answer, or refused a query.
    """
    try:
        ready = requests.get(f"{url.rstrip('/')}/-/ready", timeout=timeout_s)
    except RequestException as exc:
        raise Unavailable(f"Prometheus at {url} was unreachable ({type(exc).__name__})") from None
    if ready.status_code != 200:
        raise Unavailable(f"Prometheus at {url} was not ready (HTTP {ready.status_code})")
    client = PrometheusConnect(url, disable_ssl=False, retry=Retry(total=1, backoff_factor=0.2))
    step = step_for(t1 - t0)
    results: dict[str, list[dict[str, Any]]] = {}
    for spec in CHARTS:
        for q in spec.queries:
            try:
                results[q.promql] = list(
                    client.custom_query_range(
                        q.promql,
                        start_time=datetime.fromtimestamp(t0, UTC),
                        end_time=datetime.fromtimestamp(t1, UTC),
                        step=f"{step:g}s",
                        timeout=timeout_s,
                    )
                    or []
                )
            except (RequestException, PrometheusApiClientException) as exc:
                raise Unavailable(f"Prometheus at {url}: {exc}") from None
    return {
        "url": url,
        "start": t0,
        "end": t1,
        "step_s": step,
        "at": time.time(),
        "results": results,
    }


def load_or_fetch(
    folder: Path, url: str, t0: float, t1: float
) -> tuple[dict[str, Any] | None, str]:
    """The saved answers when they cover [t0, t1], else fresh ones (then saved); None and the
    reason when there are neither."""
    path = folder / SAVED
    saved: dict[str, Any] | None = None
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            saved = None
    if saved and saved.get("start", t0 + 1) <= t0 + 1 and saved.get("end", 0) >= t1 - 1:
        return saved, ""
    if not url:
        return None, "no Prometheus URL was known for this run"
    try:
        data = fetch(url, t0, t1)
    except Unavailable as exc:
        return None, f"{exc}"
    path.write_text(json.dumps(data))
    return data, ""


def charts(data: Mapping[str, Any] | None, reason: str = "") -> list[Chart]:
    """One chart per `CHARTS` entry from saved answers; with none, each chart says why in its
    place."""
    out = []
    for spec in CHARTS:
        if data is None:
            out.append(Chart(spec.chart_id, spec.title, spec.unit, missing=f"No data: {reason}."))
            continue
        results = data.get("results") or {}
        step = float(data.get("step_s") or 2.0)
        if spec.kind == "lines":
            lines: list[Line] = []
            for q in spec.queries:
                lines += lines_of(results.get(q.promql) or [], q, len(lines))
            chart = Chart(spec.chart_id, spec.title, spec.unit, lines=tuple(lines), note=spec.note)
        else:
            matrix = results.get(spec.queries[0].promql) or []
            lanes = pg_lanes(matrix, step) if spec.kind == "pg-roles" else redis_lanes(matrix, step)
            chart = Chart(
                spec.chart_id,
                spec.title,
                lanes=tuple(lanes),
                role_colors=ROLE_COLORS,
                note=spec.note,
            )
        if not chart.points:
            queries = "; ".join(q.promql for q in spec.queries)
            chart = Chart(
                spec.chart_id,
                spec.title,
                spec.unit,
                missing=f"No data: Prometheus at {data.get('url', '?')} had no samples of "
                f"{queries} in this window.",
            )
        out.append(chart)
    return out


def _samples(series: Mapping[str, Any]) -> list[tuple[float, float]]:
    out = []
    for t, v in series.get("values") or []:
        try:
            value = float(v)
        except (TypeError, ValueError):
            continue
        if value == value:  # NaN: no sample
            out.append((float(t), value))
    return out


def lines_of(matrix: Sequence[Mapping[str, Any]], q: Query, first_color: int = 0) -> list[Line]:
    """One line per series of a range query's answer, named by `q.label` (or `q.name`)."""
    lines = []
    for i, series in enumerate(sorted(matrix, key=lambda s: str(s.get("metric", {})))):
        metric = series.get("metric") or {}
        name = str(metric.get(q.label, "?")) if q.label else (q.name or "value")
        color = PALETTE[(first_color + i) % len(PALETTE)]
        points = tuple(_samples(series))
        if points:
            lines.append(Line(name, color, points, q.dashed))
    return lines


def segments(
    samples: Iterable[tuple[float, str]], step_s: float
) -> tuple[tuple[float, float, str], ...]:
    """Consecutive samples in one state become one segment (each sample stands for one step);
    a missing scrape longer than `GAP_STEPS` steps ends the segment, leaving a gap."""
    out: list[list[Any]] = []
    for t, state in sorted(samples):
        last = out[-1] if out else None
        if last and last[2] == state and t - last[1] <= GAP_STEPS * step_s:
            last[1] = t + step_s
        else:
            out.append([t, t + step_s, state])
    return tuple((float(a), float(b), str(s)) for a, b, s in out)


def pg_lanes(matrix: Sequence[Mapping[str, Any]], step_s: float) -> list[Lane]:
    """Lanes per Patroni member from `2 * patroni_primary + patroni_replica`."""
    lanes = []
    for series in sorted(matrix, key=lambda s: str((s.get("metric") or {}).get("member"))):
        member = str((series.get("metric") or {}).get("member", "?"))
        states = [(t, PG_ROLES.get(int(v), "no role")) for t, v in _samples(series)]
        lanes.append(Lane(member, segments(states, step_s)))
    return lanes


def redis_lanes(matrix: Sequence[Mapping[str, Any]], step_s: float) -> list[Lane]:
    """Lanes per Redis node from `max by (instance, role) (redis_instance_info)`: a node's role
    series changes label when it fails over, so the series of one instance are merged."""
    by_node: dict[str, list[tuple[float, str]]] = {}
    for series in matrix:
        metric = series.get("metric") or {}
        node = str(metric.get("instance", "?")).removeprefix("redis://")
        role = REDIS_ROLES.get(str(metric.get("role")), str(metric.get("role", "?")))
        by_node.setdefault(node, []).extend((t, role) for t, v in _samples(series) if v)
    return [Lane(node, segments(states, step_s)) for node, states in sorted(by_node.items())]
