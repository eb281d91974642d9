"""The release gate: every SLO evaluated over a window, a verdict each, one exit code.

Exit codes: 0 pass (warnings included), 1 a key objective failed, 2 error or inconclusive (a
key objective without data whose policy says so, a source that cannot be reached, a definition
that cannot be read). `on_inconclusive` changes what inconclusive gives.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slo import scaling
from slo.arith import (
    align_window,
    budget_consumed,
    good_ratio,
    good_slices,
    margin,
    meets,
    regression_pct,
)
from slo.model import SLO, Source, Status
from slo.sources import Prometheus, QueryProblem, RunData, Window, with_window

EXIT_PASS, EXIT_FAIL, EXIT_INCONCLUSIVE = 0, 1, 2


@dataclass
class Verdict:
    """One SLO's verdict, with everything needed to understand it without reading code."""

    name: str
    description: str
    file: str
    line: int
    key: bool
    status: Status
    objective: str
    measured: float | None
    margin: float | None
    budget_consumed: float | None  # share of the error budget used in the window (1 = all)
    samples: float | None
    queries: list[str]
    reason: str
    baseline: float | None = None
    regression_pct: float | None = None
    no_data_policy: str = "inconclusive"
    #: The measured value is a fraction of good events or slices (shown as a percentage).
    fraction: bool = False


@dataclass
class Context:
    """What the SLOs are evaluated against."""

    window: Window
    prometheus: Prometheus | None
    run: RunData
    baseline: dict[str, float] | None = None  # name -> measured value of a baseline run


class _NoData(Exception):
    pass


def _value(slo: SLO, ctx: Context, kind: str, query: str, at_window_s: float) -> float | None:
    if kind == "run":
        return ctx.run.value(query)
    if ctx.prometheus is None:
        raise _NoData("no Prometheus given (--prometheus, PROMETHEUS_URL)")
    return ctx.prometheus.instant(
        with_window(query, at_window_s), ctx.window.end, quantile=slo.gate.quantile
    )


#: Range checks read at the local scrape interval (a long window is read in parts).
SCALING_STEP_S = 2.0


def _scaling(src: Source, ctx: Context) -> scaling.Finding:
    if ctx.prometheus is None:
        raise _NoData("no Prometheus given (--prometheus, PROMETHEUS_URL)")
    w = ctx.window
    step = SCALING_STEP_S
    # The step grid ends at the window's end (Prometheus counts steps from the start): the
    # last change in the window is in the series, not a step short of it.
    start = w.end - step * math.ceil(w.seconds / step)
    try:
        found = scaling.measure(src.check, dict(src.params), ctx.prometheus, start, w.end, step)
    except ValueError as exc:
        raise QueryProblem(str(exc)) from None
    if found is None:
        raise _NoData("a series the check reads is empty in this window")
    return found


def _resolved(slo: SLO, window_s: float) -> list[str]:
    out = []
    for s in slo.sources:
        if s.kind == "prometheus":
            out.append(with_window(s.query, window_s))
        elif s.kind == "scaling":
            out += [f"{s.check}: {q}" for q in scaling.queries(s.check, dict(s.params)).values()]
        else:
            out.append(f"run:{s.query}")
    return out


def evaluate(slo: SLO, ctx: Context) -> Verdict:
    """One verdict; data problems become "no data" with the reason, never a pass."""
    w = ctx.window.seconds
    verdict = Verdict(
        name=slo.name,
        description=slo.description,
        file=slo.file,
        line=slo.line,
        key=slo.gate.key,
        status="no_data",
        objective=slo.objective_text(),
        measured=None,
        margin=None,
        budget_consumed=None,
        samples=None,
        queries=_resolved(slo, slo.timeslice_s if slo.budgeting == "Timeslices" else w),  # type: ignore[arg-type]
        reason="",
        no_data_policy=slo.gate.no_data,
        fraction=slo.kind == "ratio" or slo.budgeting == "Timeslices",
    )
    try:
        if slo.kind == "ratio":
            _ratio(slo, ctx, verdict)
        else:
            _threshold(slo, ctx, verdict)
    except (_NoData, QueryProblem) as exc:
        verdict.status, verdict.reason = "no_data", str(exc)
    if verdict.status == "no_data" and slo.gate.no_data == "fail":
        verdict.status = "fail"
        verdict.reason = f"no data, which this SLO counts as a failure ({verdict.reason})"
    return verdict


def _check_samples(slo: SLO, samples: float | None) -> None:
    if samples is not None and samples < slo.gate.min_samples:
        raise _NoData(f"{samples:g} samples, fewer than the {slo.gate.min_samples:g} required")


def _ratio(slo: SLO, ctx: Context, v: Verdict) -> None:
    assert slo.total is not None
    if slo.budgeting == "Timeslices":
        assert slo.timeslice_s
        assert slo.timeslice_target is not None
        if ctx.prometheus is None or slo.total.kind != "prometheus":
            raise _NoData("ratio time slices need Prometheus sources")
        start, end = align_window(ctx.window.start, ctx.window.end, slo.timeslice_s)
        src = slo.good or slo.bad
        assert src is not None
        part, whole = (with_window(q, slo.timeslice_s) for q in (src.query, slo.total.query))
        expr = f"({part}) / ({whole})"
        if slo.bad is not None:
            expr = f"1 - {expr}"
        values = ctx.prometheus.series(expr, Window(start, end), slo.timeslice_s)
        frac = good_slices(values, "gte", slo.timeslice_target)
        if frac is None:
            raise _NoData("no time slice has data")
        v.samples = len(values)
        _check_samples(slo, v.samples)
        _judge_fraction(slo, v, frac, f"{len(values)} slices")
        return
    total = _value(slo, ctx, slo.total.kind, slo.total.query, ctx.window.seconds)
    good = bad = None
    if slo.good is not None:
        good = _value(slo, ctx, slo.good.kind, slo.good.query, ctx.window.seconds)
    if slo.bad is not None:
        bad = _value(slo, ctx, slo.bad.kind, slo.bad.query, ctx.window.seconds)
        bad = 0.0 if bad is None and total else bad  # no error series yet: no errors
    if total is None or (good is None and bad is None):
        raise _NoData("the query returned nothing for this window")
    # A rate() total is per second; increase() and run counts are events.
    v.samples = total * ctx.window.seconds if "rate(" in slo.total.query else total
    _check_samples(slo, v.samples)
    ratio = good_ratio(good, bad, total)
    if ratio is None:
        raise _NoData("no events in the window")
    _judge_fraction(slo, v, ratio, f"{v.samples:g} events")


def _judge_fraction(slo: SLO, v: Verdict, frac: float, what: str) -> None:
    v.measured = frac
    v.margin = frac - slo.target
    v.budget_consumed = budget_consumed(frac, slo.target)
    ok = frac >= slo.target
    warn = slo.gate.warn is not None and frac < slo.gate.warn
    v.status = "fail" if not ok else ("warn" if warn else "pass")
    v.reason = (
        f"{frac * 100:.3f} % good over {what}, objective {slo.target * 100:g} %; "
        f"error budget used {_pct(v.budget_consumed)}"
    )


def _pct(x: float | None) -> str:
    if x is None:
        return "n/a"
    return "all of it and more (no budget)" if math.isinf(x) else f"{x * 100:.1f} %"


def _threshold(slo: SLO, ctx: Context, v: Verdict) -> None:
    assert slo.metric is not None
    assert slo.op is not None
    assert slo.value is not None
    unit = f" {slo.unit}" if slo.unit else ""
    if slo.budgeting == "Timeslices":
        assert slo.timeslice_s
        if ctx.prometheus is None or slo.metric.kind != "prometheus":
            raise _NoData("time slices need a Prometheus source")
        start, end = align_window(ctx.window.start, ctx.window.end, slo.timeslice_s)
        values = ctx.prometheus.series(
            with_window(slo.metric.query, slo.timeslice_s), Window(start, end), slo.timeslice_s
        )
        frac = good_slices(values, slo.op, slo.value)
        if frac is None:
            raise _NoData("no time slice has data")
        v.samples = len(values)
        _check_samples(slo, v.samples)
        worst = max(values) if slo.op in ("lt", "lte") else min(values)
        _judge_fraction(slo, v, frac, f"{len(values)} slices")
        v.reason += f"; worst slice {worst:g}{unit}"
        return
    found = _scaling(slo.metric, ctx) if slo.metric.kind == "scaling" else None
    measured = (
        found.value
        if found
        else _value(slo, ctx, slo.metric.kind, slo.metric.query, ctx.window.seconds)
    )
    if measured is None:
        raise _NoData(
            "the run has no such record"
            if slo.metric.kind == "run"
            else "the query returned nothing for this window"
        )
    if slo.gate.samples is not None:
        v.samples = ctx.run.value(slo.gate.samples.query)
        if v.samples is None:
            raise _NoData(f"no sample count at {slo.gate.samples.query}")
        _check_samples(slo, v.samples)
    v.measured = measured
    v.margin = margin(slo.op, measured, slo.value)
    ok = meets(slo.op, measured, slo.value)
    warn = slo.gate.warn is not None and not meets(slo.op, measured, slo.gate.warn)
    v.status = "fail" if not ok else ("warn" if warn else "pass")
    word = "missed by" if not ok else "margin"
    v.reason = (
        f"measured {measured:g}{unit}, objective {slo.objective_text()}, "
        f"{word} {abs(v.margin):g}{unit}"
    )
    if warn:
        v.reason += f" (warning threshold {slo.gate.warn:g}{unit})"
    if found is not None:
        v.samples = found.episodes
        v.reason += f"; {found.note}"
    if ctx.baseline is not None and slo.gate.max_regression_pct is not None:
        base = ctx.baseline.get(slo.name)
        if base is not None:
            v.baseline = base
            v.regression_pct = regression_pct(slo.op, measured, base)
            v.reason += f"; {v.regression_pct:+.1f} % against the baseline's {base:g}{unit}"
            if v.regression_pct > slo.gate.max_regression_pct:
                v.status = "fail"
                v.reason += f" (more than the {slo.gate.max_regression_pct:g} % allowed)"


def exit_code(verdicts: list[Verdict], on_inconclusive: int = EXIT_INCONCLUSIVE) -> int:
    """1 when a key objective failed, else `on_inconclusive` when a key objective has no data
    and its policy is "inconclusive", else 0."""
    key = [v for v in verdicts if v.key]
    if any(v.status == "fail" for v in key):
        return EXIT_FAIL
    if any(v.status == "no_data" and v.no_data_policy == "inconclusive" for v in key):
        return on_inconclusive
    return EXIT_PASS


def baseline_values(folder: Path) -> dict[str, float]:
    """The measured values in a baseline run's `slo.json`."""
    data = json.loads((folder / "slo.json").read_text())
    return {v["name"]: v["measured"] for v in data["verdicts"] if v["measured"] is not None}


def as_json(
    verdicts: list[Verdict], window: Window, code: int, extra: dict[str, Any]
) -> dict[str, Any]:
    start, end = window.iso()
    return {
        "window": {"start": start, "end": end, "seconds": window.seconds},
        "exit_code": code,
        "verdict": {0: "pass", 1: "fail"}.get(code, "inconclusive"),
        "counts": {
            s: sum(1 for v in verdicts if v.status == s)
            for s in ("pass", "warn", "fail", "no_data")
        },
        **extra,
        "verdicts": [asdict(v) for v in verdicts],
    }
