"""What an SLO is, once read: the gate's own model, whatever format the definition came in
(OpenSLO v1 or Sloth `prometheus/v1`, see `slo/definitions.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Op = Literal["lt", "lte", "gt", "gte"]
NoData = Literal["fail", "inconclusive", "ignore"]
Status = Literal["pass", "warn", "fail", "no_data"]
OP_SYMBOL: dict[str, str] = {"lt": "<", "lte": "≤", "gt": ">", "gte": "≥"}


@dataclass(frozen=True)
class Source:
    """Where a number comes from.

    Attributes:
        kind: "prometheus" (a PromQL query; `{{window}}` stands for the evaluation window),
            "run" (a dotted path into the run's summary, e.g. `latency.submit.p95_ms`) or
            "scaling" (a check over Prometheus range data, `slo/scaling.py`).
        query: the query or the path; for "scaling", the check with its parameters, as text.
        check, params: for "scaling", the check's name and parameters (numbers in seconds).
    """

    kind: Literal["prometheus", "run", "scaling"]
    query: str
    check: str = ""
    params: tuple[tuple[str, str | float], ...] = ()


@dataclass(frozen=True)
class Gate:
    """What a release gate needs beyond OpenSLO and Sloth (the `x-cwh` extension section).

    Attributes:
        key: a failed key objective fails the gate; a failed non-key one is reported only.
        warn: a value in the SLI's units between the objective and it passes with a warning
            (for `lte 500` with `warn 400`: 450 warns).
        min_samples: fewer samples than this is "no data", not a verdict.
        samples: where the sample count of a threshold SLI is (ratio SLIs count their total).
        no_data: what "no data" means for the gate: fail, inconclusive (exit code 2) or ignore
            (reported as no data, never as a pass).
        max_regression_pct: against a baseline run, fail when the SLI is worse by more.
        quantile: for a query returning histogram buckets (`le`), the quantile to compute.
    """

    key: bool = True
    warn: float | None = None
    min_samples: float = 0
    samples: Source | None = None
    no_data: NoData = "inconclusive"
    max_regression_pct: float | None = None
    quantile: float | None = None


@dataclass(frozen=True)
class SLO:
    """One objective.

    Attributes:
        name, description, service: as defined.
        file, line: where it is defined (for messages and reports).
        kind: "ratio" (good or bad events over total) or "threshold" (a value against `op` and
            `value`).
        target: fraction of good events (Occurrences) or good time slices (Timeslices), 0..1.
        window_s: the SLO's own time window (the error budget's period).
        budgeting: Occurrences or Timeslices.
        good, bad, total: the ratio's sources (good or bad, and total).
        metric: the threshold's source.
        op, value: the threshold objective, e.g. lte 500.
        timeslice_s: the slice length (Timeslices).
        timeslice_target: for a ratio SLI with Timeslices, a slice is good when its ratio
            reaches this.
        unit: for display only (ms, s, ratio...).
        origin: "openslo" or "sloth".
    """

    name: str
    description: str
    service: str
    file: str
    line: int
    kind: Literal["ratio", "threshold"]
    target: float
    window_s: float
    budgeting: Literal["Occurrences", "Timeslices"] = "Occurrences"
    good: Source | None = None
    bad: Source | None = None
    total: Source | None = None
    metric: Source | None = None
    op: Op | None = None
    value: float | None = None
    timeslice_s: float | None = None
    timeslice_target: float | None = None
    unit: str = ""
    origin: str = "openslo"
    gate: Gate = field(default_factory=Gate)

    @property
    def sources(self) -> list[Source]:
        return [s for s in (self.good, self.bad, self.total, self.metric) if s is not None]

    def objective_text(self) -> str:
        if self.kind == "ratio":
            return f"≥ {self.target * 100:g} % good"
        assert self.op is not None
        assert self.value is not None
        text = f"{OP_SYMBOL[self.op]} {self.value:g}{(' ' + self.unit) if self.unit else ''}"
        if self.budgeting == "Timeslices":
            text += f" in ≥ {self.target * 100:g} % of {self.timeslice_s:g} s slices"
        return text
