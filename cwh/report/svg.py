"""Charts as inline SVG: no plotting library, no network when the page is read.

Every timeline draws its data inside a nested `<svg class="plot">` whose viewBox is in the
plot's own pixels, so the page's script zooms all timelines together by changing one viewBox
each; fault windows are `<rect class="fault">` carrying their times (`data-start`, `data-end`)
so a reader (or the Chromium test) can check where they sit.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Sequence
from html import escape

from cwh.report.model import Axis, Bars, Chart, Distribution, FaultWindow, Lane, Line, Span

TOP, BOTTOM = 10, 22  # room above the plot (fault labels) and under it (tick labels)
HEIGHT = {"bars": 110, "lines": 130}
LANE_H, LANE_GAP = 16, 4
FAULT_FILL = "#616161"
NICE_TICKS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


def q(value: object) -> str:
    """An attribute value or text, escaped."""
    return escape(str(value), quote=True)


def num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if v == v else "0"


def nice_max(value: float) -> float:
    """A round number at or above `value` for the top of a y axis."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= m * exp:
            return float(m * exp)
    return float(10 * exp)


def tick_step(span_s: float, most: int = 10) -> float:
    return float(next((s for s in NICE_TICKS_S if span_s / s <= most), NICE_TICKS_S[-1]))


def utc(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def ticks(axis: Axis, height: int) -> str:
    """Tick marks and UTC labels under the plot (the page's script redraws them on zoom)."""
    step = tick_step(axis.t1 - axis.t0)
    first = math.ceil(axis.t0 / step) * step
    parts = [f'<g class="ticks" data-y="{TOP + height}">']
    t = first
    while t <= axis.t1 + 1e-9:
        x = axis.x(t)
        parts.append(
            f'<line x1="{num(x)}" x2="{num(x)}" y1="{TOP}" y2="{TOP + height + 3}" '
            'class="grid"/>'
            f'<text x="{num(x)}" y="{TOP + height + 15}" text-anchor="middle">{utc(t)}</text>'
        )
        t += step
    parts.append("</g>")
    return "".join(parts)


def _plot_x(axis: Axis, t: float) -> float:
    """x inside the nested plot (0 at the plot's left edge)."""
    return axis.x(t) - axis.left


def fault_rects(axis: Axis, faults: Sequence[FaultWindow], height: int) -> str:
    out = []
    for i, w in enumerate(faults):
        end = w.end if w.end is not None else axis.t1
        x0, x1 = _plot_x(axis, w.start), _plot_x(axis, end)
        out.append(
            f'<rect class="fault" data-fault="{q(w.fault)}" data-index="{i}" '
            f'data-start="{w.start}" data-end="{end}" x="{num(x0)}" y="0" '
            f'width="{num(max(x1 - x0, 1.0))}" height="{height}" fill="{FAULT_FILL}" '
            f'fill-opacity="0.22"><title>{q(w.label)}: {utc(w.start)} to '
            f"{utc(end) if w.end is not None else 'the end'} ({end - w.start:.1f} s)"
            f"{q(', ' + w.detail if w.detail else '')}</title></rect>"
        )
    return "".join(out)


def fault_labels(axis: Axis, faults: Sequence[FaultWindow]) -> str:
    return "".join(
        f'<text class="fault-label" data-start="{w.start}" x="{num(axis.x(w.start) + 2)}" '
        f'y="{TOP - 1}">{i + 1}. {q(w.label)}</text>'
        for i, w in enumerate(faults)
    )


def span_rects(axis: Axis, spans: Sequence[Span], height: int, with_ids: bool) -> str:
    out = []
    for s in spans:
        x0, x1 = _plot_x(axis, s.start), _plot_x(axis, s.end)
        ident = f' id="{q(s.anchor)}"' if with_ids else ""
        out.append(
            f'<rect class="span"{ident} data-start="{s.start}" data-end="{s.end}" '
            f'x="{num(x0)}" y="0.5" width="{num(max(x1 - x0, 1.0))}" height="{height - 1}"/>'
        )
    return "".join(out)


def bars_body(axis: Axis, bars: Bars, height: int) -> tuple[str, float]:
    n = max(len(s.values) for s in bars.stacks)
    totals = [sum(s.values[i] for s in bars.stacks if i < len(s.values)) for i in range(n)]
    top = nice_max(max(totals, default=0.0))
    out = []
    for i in range(n):
        x0 = _plot_x(axis, bars.start + i * bars.bin_s)
        x1 = _plot_x(axis, bars.start + (i + 1) * bars.bin_s)
        bottom = 0.0
        for s in bars.stacks:
            v = s.values[i] if i < len(s.values) else 0.0
            if v <= 0:
                continue
            y1 = height - (bottom + v) / top * height
            h = v / top * height
            out.append(
                f'<rect class="bar" x="{num(x0)}" y="{num(y1)}" width="{num(max(x1 - x0, 0.5))}" '
                f'height="{num(h)}" fill="{s.color}"><title>{utc(bars.start + i * bars.bin_s)}'
                f" {q(s.label)}: {v:.3g}/s</title></rect>"
            )
            bottom += v
    return "".join(out), top


def _runs(points: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Points split where the gap is much wider than usual (no data there)."""
    if len(points) < 2:
        return [list(points)]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(points)]
    usual = statistics.median(gaps) or 1.0
    runs: list[list[tuple[float, float]]] = [[points[0]]]
    for gap, p in zip(gaps, points[1:], strict=True):
        if gap > 2.5 * usual:
            runs.append([])
        runs[-1].append(p)
    return runs


def lines_body(axis: Axis, lines: Sequence[Line], height: int) -> tuple[str, float]:
    top = nice_max(max((v for ln in lines for _, v in ln.points), default=0.0))
    out = []
    for ln in lines:
        dash = ' stroke-dasharray="5 3"' if ln.dashed else ""
        for run in _runs(ln.points):
            pts = " ".join(
                f"{num(_plot_x(axis, t))},{num(height - v / top * height)}" for t, v in run
            )
            if len(run) == 1:
                x, y = pts.split(",")
                out.append(f'<circle class="point" cx="{x}" cy="{y}" r="2" fill="{ln.color}"/>')
                continue
            out.append(
                f'<polyline class="line" points="{pts}" fill="none" stroke="{ln.color}" '
                f'stroke-width="1.6" vector-effect="non-scaling-stroke"{dash}>'
                f"<title>{q(ln.label)}</title></polyline>"
            )
    return "".join(out), top


def lanes_body(axis: Axis, lanes: Sequence[Lane], colors: dict[str, str]) -> str:
    out = []
    for i, lane in enumerate(lanes):
        y = i * (LANE_H + LANE_GAP)
        for start, end, role in lane.segments:
            x0, x1 = _plot_x(axis, start), _plot_x(axis, end)
            out.append(
                f'<rect class="segment" data-role="{q(role)}" x="{num(x0)}" y="{y}" '
                f'width="{num(max(x1 - x0, 0.5))}" height="{LANE_H}" '
                f'fill="{colors.get(role, "#ffb74d")}"><title>{q(lane.name)}: {q(role)} '
                f"{utc(start)} to {utc(end)}</title></rect>"
            )
    return "".join(out)


def y_labels(axis: Axis, top: float, unit: str, height: int) -> str:
    x = axis.left - 4
    return (
        f'<text x="{x}" y="{TOP + 8}" text-anchor="end">{top:g}</text>'
        f'<text x="{x}" y="{TOP + height}" text-anchor="end">0</text>'
        f'<text x="{x}" y="{TOP + height / 2 + 4}" text-anchor="end" class="unit">{q(unit)}</text>'
        f'<line x1="{axis.left}" x2="{axis.width - axis.right}" y1="{TOP + height / 2}" '
        f'y2="{TOP + height / 2}" class="grid"/>'
    )


def lane_labels(axis: Axis, lanes: Sequence[Lane]) -> str:
    return "".join(
        f'<text x="{axis.left - 4}" y="{TOP + i * (LANE_H + LANE_GAP) + 12}" '
        f'text-anchor="end">{q(lane.name)}</text>'
        for i, lane in enumerate(lanes)
    )


def timeline(
    chart: Chart,
    axis: Axis,
    faults: Sequence[FaultWindow],
    spans: Sequence[Span] = (),
    marks: Sequence[tuple[float, str]] = (),
    span_ids: bool = False,
) -> str:
    """One timeline chart as an `<svg class="timeline">`: its data, every fault window shaded
    and labelled, the failed SLOs' windows outlined (`span_ids`: give them their anchors, in
    the first chart only) and `marks` (time, label) as vertical rules."""
    if chart.lanes:
        height = len(chart.lanes) * (LANE_H + LANE_GAP)
        body = lanes_body(axis, chart.lanes, dict(chart.role_colors))
        labels = lane_labels(axis, chart.lanes)
    elif chart.bars is not None:
        height = HEIGHT["bars"]
        body, top = bars_body(axis, chart.bars, height)
        labels = y_labels(axis, top, chart.unit, height)
    else:
        height = HEIGHT["lines"]
        body, top = lines_body(axis, chart.lines, height)
        labels = y_labels(axis, top, chart.unit, height)
    inner = axis.width - axis.left - axis.right
    total = TOP + height + BOTTOM
    rules = "".join(
        f'<line class="mark" x1="{num(_plot_x(axis, t))}" x2="{num(_plot_x(axis, t))}" y1="0" '
        f'y2="{height}" vector-effect="non-scaling-stroke"><title>{q(label)} at {utc(t)}'
        "</title></line>"
        for t, label in marks
    )
    return (
        f'<svg class="timeline" data-chart="{q(chart.chart_id)}" data-points="{chart.points}" '
        f'data-t0="{axis.t0}" data-t1="{axis.t1}" data-left="{axis.left}" data-inner="{inner}" '
        f'viewBox="0 0 {axis.width} {total}" width="{axis.width}" height="{total}" '
        f'role="img" aria-label="{q(chart.title)}">'
        f'<rect class="plot-area" x="{axis.left}" y="{TOP}" width="{inner}" height="{height}"/>'
        f"{ticks(axis, height)}{labels}"
        f'<svg class="plot" x="{axis.left}" y="{TOP}" width="{inner}" height="{height}" '
        f'viewBox="0 0 {inner} {height}" preserveAspectRatio="none">'
        f"{fault_rects(axis, faults, height)}{span_rects(axis, spans, height, span_ids)}"
        f"{body}{rules}</svg>{fault_labels(axis, faults)}</svg>"
    )


def distributions(dists: Sequence[Distribution], unit: str = "s") -> str:
    """Repeated trials as a strip plot: one column per (group, label), each trial a dot, the
    median a bar, the configured bound a dashed red line across its column."""
    if not dists:
        return ""
    width, left, height, col = 960, 64, 180, 0.0
    top = nice_max(max([v for d in dists for v in d.values] + [d.bound or 0 for d in dists]))
    col = (width - left - 16) / len(dists)
    out = [
        f'<svg class="distributions" data-points="{sum(len(d.values) for d in dists)}" '
        f'viewBox="0 0 {width} {height + 70}" width="{width}" height="{height + 70}">',
        f'<rect class="plot-area" x="{left}" y="{TOP}" width="{width - left - 16}" '
        f'height="{height}"/>',
        f'<text x="{left - 4}" y="{TOP + 8}" text-anchor="end">{top:g} {q(unit)}</text>',
        f'<text x="{left - 4}" y="{TOP + height}" text-anchor="end">0</text>',
    ]

    def y(v: float) -> float:
        return TOP + height - v / top * height

    for i, d in enumerate(dists):
        cx = left + (i + 0.5) * col
        for j, v in enumerate(d.values):
            jitter = ((j * 7) % 11 - 5) * min(col / 40, 2.5)
            out.append(
                f'<circle class="trial" cx="{num(cx + jitter)}" cy="{num(y(v))}" r="3.5">'
                f"<title>{q(d.group)} {q(d.label)}: {v:.3g} {q(unit)}</title></circle>"
            )
        if d.values:
            m = statistics.median(d.values)
            out.append(
                f'<line class="median" x1="{num(cx - col * 0.3)}" x2="{num(cx + col * 0.3)}" '
                f'y1="{num(y(m))}" y2="{num(y(m))}"><title>median {m:.3g}</title></line>'
            )
        if d.bound is not None:
            out.append(
                f'<line class="bound" x1="{num(cx - col * 0.45)}" x2="{num(cx + col * 0.45)}" '
                f'y1="{num(y(d.bound))}" y2="{num(y(d.bound))}"><title>bound from the '
                f"configuration: {d.bound:g} {q(unit)}</title></line>"
            )
        out.append(
            f'<text x="{num(cx)}" y="{TOP + height + 16}" text-anchor="middle">{q(d.label)}</text>'
            f'<text x="{num(cx)}" y="{TOP + height + 30}" text-anchor="middle" class="group">'
            f"{q(d.group)}</text>"
        )
    out.append("</svg>")
    return "".join(out)
