"""What a run's HTML report shows, as typed values: extraction (`extract`, `prom`) builds them
from the run folder's files, rendering (`svg`, `page`) only draws them. Times are UTC seconds
since the epoch throughout; every timeline chart shares one `Axis`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["pass", "fail", "inconclusive"]

#: Colours shared by the charts and the legend: outcomes as in the ledger.
OK, FAIL, INFO = "#2e7d32", "#c62828", "#f9a825"


@dataclass(frozen=True)
class FaultWindow:
    """One fault, from its injection to its restoration (`end` None: never restored in the
    journal, shaded to the end of the axis)."""

    fault: str
    start: float
    end: float | None
    detail: str = ""

    @property
    def label(self) -> str:
        return self.fault if self.end is not None else f"{self.fault} (not restored)"


@dataclass(frozen=True)
class Span:
    """A window of the timeline that something points at (a failed SLO, a lost request)."""

    anchor: str  # the element id the link goes to
    start: float
    end: float
    why: str  # how the window was chosen, shown with the link


@dataclass(frozen=True)
class Stack:
    """One layer of stacked bars: its label, colour and one value per bin."""

    label: str
    color: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class Bars:
    """Stacked bars on the time axis: bin `i` covers `start + i * bin_s` to the next bin."""

    start: float
    bin_s: float
    stacks: tuple[Stack, ...]

    @property
    def points(self) -> int:
        return sum(1 for s in self.stacks for v in s.values if v)


@dataclass(frozen=True)
class Line:
    """A series of (time, value) points, drawn as a polyline; a gap in time breaks it."""

    label: str
    color: str
    points: tuple[tuple[float, float], ...]
    dashed: bool = False


@dataclass(frozen=True)
class Lane:
    """One row of a role chart (a PostgreSQL member, a Redis node): who held which role when."""

    name: str
    segments: tuple[tuple[float, float, str], ...]  # (start, end, role)


@dataclass(frozen=True)
class Chart:
    """One timeline chart. Exactly one of bars, lines or lanes carries its data; `missing`
    says, in the chart's place, why there is none (Prometheus unreachable, not exported)."""

    chart_id: str
    title: str
    unit: str = ""
    bars: Bars | None = None
    lines: tuple[Line, ...] = ()
    lanes: tuple[Lane, ...] = ()
    role_colors: tuple[tuple[str, str], ...] = ()
    missing: str = ""
    note: str = ""

    @property
    def points(self) -> int:
        if self.bars is not None:
            return self.bars.points
        return sum(len(x.points) for x in self.lines) + sum(len(x.segments) for x in self.lanes)


@dataclass(frozen=True)
class Axis:
    """The shared time axis of the timelines: `t0` to `t1` over `width` pixels, the plot area
    between `left` and `width - right`."""

    t0: float
    t1: float
    width: int = 960
    left: int = 110
    right: int = 16

    def x(self, t: float) -> float:
        span = max(self.t1 - self.t0, 1e-9)
        inner = self.width - self.left - self.right
        return self.left + (min(max(t, self.t0), self.t1) - self.t0) / span * inner


@dataclass(frozen=True)
class Row:
    """A table row: cells as text, an optional status for its colour and an optional link."""

    cells: tuple[str, ...]
    status: str = ""
    link: Span | None = None


@dataclass(frozen=True)
class LedgerEntry:
    """A ledger line quoted in the report: its line number in `ledger.jsonl` and its text."""

    line: int
    text: str


@dataclass(frozen=True)
class Listed:
    """A request listed by the reconciliation (lost, duplicated, never notified)."""

    what: str
    ident: str
    entries: tuple[LedgerEntry, ...]
    ledger: str = "ledger.jsonl"  # the ledger file, relative to the report


@dataclass(frozen=True)
class Distribution:
    """Repeated trials of one figure (RTO of a path in one experiment), with a bound to hold."""

    group: str
    label: str
    values: tuple[float, ...]
    bound: float | None = None


@dataclass
class Report:
    """Everything a page shows. Sections with nothing to show are left out by the page."""

    title: str
    kind: str  # load, chaos, gameday, bench-chaos, bench-failover, bench
    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)  # target, window, ...
    versions: list[tuple[str, str]] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)
    axis: Axis | None = None
    faults: list[FaultWindow] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    marks: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # chart -> rules
    recovery_head: list[str] = field(default_factory=list)
    recovery: list[Row] = field(default_factory=list)
    recovery_note: str = ""
    distributions: list[Distribution] = field(default_factory=list)
    slo: list[Row] = field(default_factory=list)
    slo_note: str = ""
    reconciliation: list[tuple[str, str]] = field(default_factory=list)
    listed: list[Listed] = field(default_factory=list)
    lead: list[tuple[str, str]] = field(default_factory=list)  # (title, HTML) before timelines
    sections: list[tuple[str, str]] = field(default_factory=list)  # (title, trusted HTML)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, data: URI)
