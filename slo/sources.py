"""Where SLIs come from: Prometheus (through prometheus-api-client) and the run's own records
(its summary: HDR percentiles, reconciliation, and the chaos results when there are any).

Missing data is None, never zero: the gate decides what "no data" means. An unreachable
Prometheus is an error (`SourceUnavailable`), never "no data" and never a pass.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from slo.arith import quantile_from_buckets

WINDOW = re.compile(r"\{\{\s*\.?window\s*\}\}")


class SourceUnavailable(Exception):
    """A data source the definitions need cannot be reached or refuses the query."""


class QueryProblem(Exception):
    """The query ran, but its answer is not one number (e.g. several series)."""


def with_window(query: str, seconds: float) -> str:
    """`{{window}}` (ours) and `{{.window}}` (Sloth's) become a PromQL duration."""
    return WINDOW.sub(f"{max(1, round(seconds))}s", query)


@dataclass(frozen=True)
class Window:
    """The evaluated period, UTC seconds since the epoch."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def iso(self) -> tuple[str, str]:
        return _iso(self.start), _iso(self.end)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """An RFC 3339 time (`2026-11-27T21:00:00Z`) in seconds since the epoch."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time (like 2026-11-27T21:00:00Z)") from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z for UTC)")
    return t.timestamp()


class Prometheus:
    """Instant and range queries over the window."""

    def __init__(
        self, url: str, timeout_s: float = 15.0, session: requests.Session | None = None
    ) -> None:
        """`session`: what requests go through (one that authenticates, to reach a
        Prometheus behind the Kubernetes API server's service proxy); default a plain one."""
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        # Few retries: an unreachable Prometheus must fail the gate quickly and clearly.
        self.client = PrometheusConnect(
            self.url,
            disable_ssl=False,
            retry=Retry(total=1, backoff_factor=0.2),
            session=self.session,
        )
        self.timeout_s = timeout_s

    def check(self) -> None:
        try:
            ok = self.session.get(f"{self.url}/-/ready", timeout=self.timeout_s).status_code == 200
        except requests.RequestException as exc:
            raise SourceUnavailable(f"Prometheus at {self.url} is unreachable: {exc}") from None
        if not ok:
            raise SourceUnavailable(f"Prometheus at {self.url} is not ready")

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        try:
            result = fn(*args, **kwargs)
        except (requests.RequestException, PrometheusApiClientException) as exc:
            raise SourceUnavailable(f"Prometheus at {self.url}: {exc}") from None
        return list(result or [])

    def instant(self, query: str, at: float, quantile: float | None = None) -> float | None:
        """One number: the query's single series at `at`; with `quantile`, the series are
        histogram buckets (`le`) and the quantile is computed from them."""
        result = self._run(
            self.client.custom_query, query, params={"time": at}, timeout=self.timeout_s
        )
        if not result:
            return None
        if quantile is not None:
            buckets = [(float(r["metric"]["le"]), float(r["value"][1])) for r in result]
            return quantile_from_buckets(quantile, buckets)
        if len(result) > 1:
            raise QueryProblem(f"{len(result)} series, not one: aggregate them (sum, max...)")
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def _range(self, query: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        return self._run(
            self.client.custom_query_range,
            query,
            start_time=datetime.fromtimestamp(start, UTC),
            end_time=datetime.fromtimestamp(end, UTC),
            step=f"{max(1, round(step_s))}s",
            timeout=self.timeout_s,
        )

    @staticmethod
    def _points(result: dict[str, Any]) -> list[tuple[float, float]]:
        return [(float(t), float(v)) for t, v in result["values"] if not math.isnan(float(v))]

    #: Prometheus refuses a range query of more than 11,000 points per series.
    MAX_POINTS = 10_000

    def timed(
        self, query: str, start: float, end: float, step_s: float
    ) -> list[list[tuple[float, float]]]:
        """Every series of the query over [start, end] at `step_s`, as (time, value) pairs
        without NaNs; a long range is asked in parts, never at a coarser step (a 28-day window
        sampled every few minutes would hide every event shorter than that)."""
        step = max(1, round(step_s))
        by_series: dict[str, list[tuple[float, float]]] = {}
        t = start
        while t <= end:
            part_end = min(end, t + step * (self.MAX_POINTS - 1))
            for r in self._range(query, t, part_end, step):
                key = json.dumps(r["metric"], sort_keys=True)
                by_series.setdefault(key, []).extend(self._points(r))
            t = part_end + step
        return list(by_series.values())

    def timed_by_label(
        self, query: str, label: str, start: float, end: float, step_s: float
    ) -> dict[str, list[tuple[float, float]]]:
        """Each series of the query over [start, end] by the value of its `label`."""
        return {
            str(r["metric"].get(label, "")): self._points(r)
            for r in self._range(query, start, end, step_s)
        }

    def series(self, query: str, window: Window, step_s: float) -> list[float]:
        """The values of the query's single series at each step of the window."""
        result = self._range(query, window.start, window.end, step_s)
        if not result:
            return []
        if len(result) > 1:
            raise QueryProblem(f"{len(result)} series, not one: aggregate them (sum, max...)")
        return [v for _, v in self._points(result[0])]


class RunData:
    """A run folder's records: `summary.json`, and `chaos.json` (under `chaos`) when present."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.data: dict[str, Any] = {}
        if folder is None:
            return
        try:
            self.data = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError) as exc:
            raise SourceUnavailable(f"{folder}/summary.json: {exc}") from None
        chaos = folder / "chaos.json"
        if chaos.exists():
            self.data["chaos"] = json.loads(chaos.read_text())

    def window(self) -> Window | None:
        w = self.data.get("window")
        return Window(float(w["start"]), float(w["end"])) if w else None

    def value(self, path: str) -> float | None:
        """A dotted path (`latency.submit.p95_ms`); None when any part is missing."""
        node: Any = self.data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, int | float):
            return None
        return float(node)
