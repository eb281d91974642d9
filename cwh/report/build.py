"""A run folder's report, assembled: its files read (by key, whatever is missing is left out),
the Prometheus timelines fetched or taken from `prometheus.json`, and one `Report` per kind of
folder (a load or chaos run, a game day, the chaos and failover benchmarks).

`run_report`, `gameday_report` and the bench reports are pure given what was read; reading,
versions and Prometheus live at the edges (`read_run`, `versions`, `write_html`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cwh.report import extract as x
from cwh.report import prom
from cwh.report.model import Axis, Chart, Distribution, FaultWindow, Report, Row, Span, Verdict
from cwh.report.svg import utc
from slo.ledger import Operation

_OP_FIELDS = {f.name for f in fields(Operation)}
PATHS = ("write", "read", "notification")


@dataclass
class RunFiles:
    """What a load or chaos run folder holds; None (or empty) for what it does not."""

    folder: Path
    summary: dict[str, Any] | None = None
    slo: dict[str, Any] | None = None
    chaos: dict[str, Any] | None = None
    journal: dict[str, Any] | None = None
    restored: dict[str, Any] | None = None
    fault_events: list[dict[str, Any]] = field(default_factory=list)
    ledger_lines: list[str] = field(default_factory=list)
    ops: list[Operation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_json(path: Path, problems: list[str]) -> Any:
    """The file's JSON, or None when it is missing; a malformed file is noted in `problems`."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name}: {exc}")
        return None


def parse_ledger(lines: Sequence[str], problems: list[str]) -> list[Operation]:
    """Ledger lines as operations; unknown fields (a newer harness) are ignored, lines that are
    not operations are counted in `problems`."""
    ops, bad = [], 0
    for line in lines:
        try:
            raw = json.loads(line)
            ops.append(Operation(**{k: v for k, v in raw.items() if k in _OP_FIELDS}))
        except (ValueError, TypeError, AttributeError):
            bad += 1
    if bad:
        problems.append(f"ledger.jsonl: {bad} line(s) that are not operations")
    return ops


def read_run(folder: Path) -> RunFiles:
    files = RunFiles(folder)
    p = files.problems
    files.summary = read_json(folder / "summary.json", p)
    files.slo = read_json(folder / "slo.json", p)
    files.chaos = read_json(folder / "chaos.json", p)
    files.journal = read_json(folder / "journal.json", p)
    files.restored = read_json(folder / "restored-after.json", p)
    if (folder / "faults.jsonl").exists():
        for line in (folder / "faults.jsonl").read_text().splitlines():
            try:
                files.fault_events.append(json.loads(line))
            except ValueError:
                if line.strip():
                    p.append("faults.jsonl: a line that is not JSON")
    if (folder / "ledger.jsonl").exists():
        files.ledger_lines = (folder / "ledger.jsonl").read_text().splitlines()
        files.ops = parse_ledger(files.ledger_lines, p)
    return files


# ---- the header's facts, settings and versions ---------------------------------------------------


def run_facts(files: RunFiles, span: tuple[float, float] | None) -> list[tuple[str, str]]:
    opts = x.dig(files.summary, "options") or {}
    out = [("folder", files.folder.name)]
    if opts.get("target"):
        out.append(("target", str(opts["target"])))
    if span:
        start, end = span
        out.append(("timeline (UTC)", f"{_utc_full(start)} to {utc(end)} ({end - start:.0f} s)"))
    fleet = [
        f"{opts[k]} {label}"
        for k, label in (("users", "phones"), ("shape", "shape"), ("workers", "worker(s)"))
        if k in opts
    ]
    if fleet:
        out.append(("fleet", ", ".join(map(str, fleet))))
    if opts.get("duration_s") is not None:
        out.append(("fleet duration", _fleet_duration(files.summary, opts["duration_s"])))
    if x.number(opts.get("arrival_rate")):
        out.append(("open arrivals", f"{opts['arrival_rate']:g} sessions/s"))
    if opts.get("mix"):
        out.append(("mix", str(opts["mix"])))
    if files.journal is not None:
        title = x.dig(files.journal, "experiment.title")
        if title:
            out.append(("experiment", str(title)))
        out.append(("experiment status", str(files.journal.get("status", "?"))))
    for problem in files.problems:
        out.append(("could not read", problem))
    return out


def _fleet_duration(summary: Any, bound: Any) -> str:
    """The fleet's duration, and when and why it ended before it (`finished_early`): a
    chaos fleet's duration is a bound, and a reader comparing runs must see which ran whole."""
    text = x.fmt(bound, " s")
    ended = x.number(x.dig(summary, "finished_early.wall"))
    began = x.number(x.dig(summary, "window.start"))
    if ended is None or began is None:
        return text
    reason = x.dig(summary, "finished_early.reason", "?")
    return f"{text} bound; ended {ended - began:.0f} s in: {reason}"


def _utc_full(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def local_settings() -> list[tuple[str, str]]:
    """What shapes recovery in the local environment: its failure-detection timings (the
    profile the environment at `CWH_BASE_PORT` runs with, else the one `CWH_FAILOVER` names),
    HAProxy's HTTP checks, the failover bound they promise and the HPA specs."""
    from env import configs
    from env.failover_timing import STANDARD
    from env.layout import Layout
    from env.local import adopt_runtime
    from env.settings import EnvSettings, SettingsError

    try:
        settings = EnvSettings.from_environ()
        timing = adopt_runtime(settings, Layout(settings.run_dir)).timing
    except SettingsError:  # the profile is all it needs: the default's, rather than no row
        timing = STANDARD
    out = [
        *timing.rows(),
        ("HAProxy HTTP checks", f"inter {configs.HAPROXY_HTTP_CHECK_INTER_S} s"),
        (
            "failover bound",
            f"{configs.worst_case_failover_s(timing):g} s (ttl + loop_wait + 1 + rise * inter)",
        ),
    ]
    try:
        from env import hpa

        for name, spec in sorted(hpa.load().items()):
            out.append((f"HPA {name}", _hpa_text(spec)))
    except Exception as exc:  # a spec the loader refuses must not cost the report
        out.append(("HPA", f"specs not readable: {exc}"))
    return out


def _hpa_text(spec: Any) -> str:
    """`3 to 10 replicas, on cpu 70 % of the request` from an `env.hpa.HPASpec`."""
    bounds = f"{spec.min_replicas} to {spec.max_replicas} replicas"
    metrics = []
    for m in spec.metrics:
        t = m.target
        if t.average_utilization is not None:
            metrics.append(f"{m.name} {t.average_utilization} % of the request")
        else:
            quantity = t.average_value or t.value
            metrics.append(f"{m.name} {getattr(quantity, 'text', '?')}")
    return bounds + (f", on {', '.join(metrics)}" if metrics else "")


def versions(folder: Path) -> list[tuple[str, str]]:
    """The versions of what ran, recorded once in `versions.json` (a report made again later
    must not claim today's versions)."""
    from cwh.report.versions import stamp_versions

    return list(stamp_versions(folder).items())


# ---- load and chaos runs -------------------------------------------------------------------------


def is_local(files: RunFiles) -> bool:
    target = str(x.dig(files.summary, "options.target") or "")
    return "//127.0.0.1" in target or "//localhost" in target


def ledger_charts(ops: Sequence[Operation], t0: float, t1: float) -> list[Chart]:
    """Operations per second per path (ok, fail, info) and the latency quantiles."""
    by_path = x.paths_on_wall_clock(ops)
    notes = {
        "notification": "A notification is fail when it reached the phone later than 5 s.",
        "read": "Reads and background syncs.",
        "write": "Submits: info means the outcome is unknown (5xx or no answer).",
    }
    charts = []
    for path in PATHS:
        path_ops = by_path.get(path) or []
        chart = Chart(
            f"ops-{path}",
            f"{path.capitalize()} path: operations per second by outcome",
            "ops/s",
            bars=x.outcome_bars(path_ops, t0, t1) if path_ops else None,
            note=notes.get(path, ""),
        )
        if not chart.points:
            chart = Chart(
                chart.chart_id, chart.title, missing=f"No {path} operation in the ledger."
            )
        charts.append(chart)
    samples = x.latency_samples(ops)
    lines = x.quantile_lines(
        samples["service"], t0, t1, "submit", {0.5: "#1565c0", 0.99: "#c62828"}
    )
    lines += x.quantile_lines(
        samples["intended"],
        t0,
        t1,
        "session from intended start",
        {0.5: "#1565c0", 0.99: "#c62828"},
        dashed=True,
    )
    title = "Latency quantiles: submit service time, and sessions from their intended start"
    if lines:
        charts.append(Chart("latency", title, "s", lines=tuple(lines)))
    else:
        charts.append(Chart("latency", title, missing="No successful submit in the ledger."))
    return charts


def recovery_marks(chaos: Mapping[str, Any] | None) -> dict[str, list[tuple[float, str]]]:
    """Each path's recovery, and the ends of its longest silence, as rules on its chart."""
    fault = x.number(x.dig(chaos, "fault_wall"))
    out: dict[str, list[tuple[float, str]]] = {}
    for path in PATHS:
        marks = out.setdefault(f"ops-{path}", [])
        rto = x.number(x.dig(chaos, f"rto_s.{path}"))
        if fault is not None and rto is not None and x.dig(chaos, f"recovered.{path}"):
            marks.append((fault + rto, f"{path} recovered (RTO {rto:g} s)"))
        silence = x.longest_silence(chaos, path)
        if silence is not None:
            seconds, start, end = silence
            label = f"longest silence of the {path} path ({seconds:g} s)"
            marks += [(t, label) for t in (start, end) if t is not None]
    return out


def run_report(
    files: RunFiles,
    prom_data: Mapping[str, Any] | None,
    prom_reason: str,
    versions_: Sequence[tuple[str, str]] = (),
    settings: Sequence[tuple[str, str]] = (),
) -> Report:
    """The report of a load or chaos run."""
    faults = x.fault_windows(files.fault_events)
    span = x.time_span(x.dig(files.summary, "window"), files.ops, faults)
    kind = "chaos" if (files.journal or files.chaos or files.fault_events) else "load"
    verdict, reasons, steps = x.verdict(files.summary, files.slo, files.journal, files.restored)
    name = x.dig(files.journal, "experiment.title") if kind == "chaos" else None
    title = f"Chaos run {files.folder.name}" if kind == "chaos" else f"Load run {files.folder.name}"
    r = Report(title + (f": {name}" if name else ""), kind, verdict, reasons, steps)
    r.facts = run_facts(files, span)
    r.versions, r.settings = list(versions_), list(settings)
    rec = x.dig(files.summary, "reconciliation") or {}
    if span is not None:
        t0, t1 = span
        r.axis, r.faults = Axis(t0, t1), faults

        def span_of(v: Mapping[str, Any]) -> Span:
            return x.slo_span(v, faults, files.chaos, rec, files.ops, span)

        r.slo, r.spans, r.slo_note = x.slo_rows(files.slo, span_of)
        r.charts = ledger_charts(files.ops, t0, t1) + prom.charts(prom_data, prom_reason)
        r.marks = recovery_marks(files.chaos)
    else:
        r.slo, r.spans, r.slo_note = x.slo_rows(files.slo)
    r.recovery_head, r.recovery, r.recovery_note = x.recovery_rows(files.chaos)
    r.reconciliation = x.reconciliation_facts(rec)
    r.listed = x.listed_requests(rec, files.ledger_lines)
    return r


# ---- game days -----------------------------------------------------------------------------------

WORST: dict[str, int] = {"pass": 0, "inconclusive": 1, "fail": 2}
#: A trial's exit code as a verdict.
CODE_VERDICT: dict[int, Verdict] = {0: "pass", 1: "fail", 2: "inconclusive"}


def gameday_report(
    folder: Path,
    runs: Sequence[tuple[str, int | None, RunFiles | None]],
    prom_data: Mapping[str, Any] | None,
    prom_reason: str,
    versions_: Sequence[tuple[str, str]] = (),
    settings: Sequence[tuple[str, str]] = (),
    resilience: Mapping[str, Any] | None = None,
) -> Report:
    """A game day: one timeline over the whole day (every experiment's operations and faults),
    a row per trial, the resilience score per experiment (`cwh/gameday.py`), and the SLOs and
    reconciliation of all of them."""
    verdicts: list[Verdict] = []
    reasons, steps, rows, slo_rows, listed, events = [], [], [], [], [], []
    ops: list[Operation] = []
    starts, ends = [], []
    totals: dict[str, float] = {}  # the reconciliation's counts, over every experiment
    for name, _code, files in runs:
        if files is None:
            verdicts.append("inconclusive")
            reasons.append(f"{name}: no run folder (it could not start)")
            continue
        v, why, todo = x.verdict(files.summary, files.slo, files.journal, files.restored)
        if _code in CODE_VERDICT and CODE_VERDICT[_code] != v:
            # The trial's exit code is its verdict (what the score and the index count): a
            # method activity that failed, a waived objective; the records say the rest.
            why = [*why, f"exit code {_code}: {CODE_VERDICT[_code]}"]
            v = CODE_VERDICT[_code]
        verdicts.append(v)
        reasons += [f"{name}: {w}" for w in why]
        steps += todo
        rows.append(_gameday_row(folder, name, v, files))
        events += [{**e, "fault": f"{name}: {e.get('fault', 'fault')}"} for e in files.fault_events]
        ops += files.ops
        if (start := x.number(x.dig(files.summary, "window.start"))) is not None:
            starts.append(start)
        if (end := x.number(x.dig(files.summary, "window.end"))) is not None:
            ends.append(end)
        table, _, _ = x.slo_rows(files.slo)
        slo_rows += [Row((f"{name}: {row.cells[0]}", *row.cells[1:]), row.status) for row in table]
        rel = os.path.relpath(files.folder / "ledger.jsonl", folder)
        rec = x.dig(files.summary, "reconciliation") or {}
        for key, value in rec.items():
            if x.number(value) is not None:
                totals[key] = totals.get(key, 0.0) + float(value)
        listed += [
            type(item)(f"{item.what} ({name})", item.ident, item.entries, rel)
            for item in x.listed_requests(rec, files.ledger_lines)
        ]
    planned = x.number((resilience or {}).get("trials_planned"))
    ran = x.number((resilience or {}).get("trials_run"))
    if planned is not None and ran is not None and ran < planned:
        verdicts.append("inconclusive")
        reasons.append(f"{planned - ran:g} of {planned:g} planned trials not run")
    worst = max(verdicts, key=lambda v: WORST[v]) if verdicts else "inconclusive"
    r = Report(f"Game day {folder.name}", "gameday", worst, reasons, list(dict.fromkeys(steps)))
    if not runs:
        r.reasons.append("no experiment ran")
    faults = x.fault_windows(events)
    window = {"start": min(starts), "end": max(ends)} if starts and ends else None
    span = x.time_span(window, ops, faults)
    r.facts = [("folder", folder.name), ("experiments", ", ".join(n for n, _, _ in runs))]
    # Repeated trials of one experiment: their RTOs and RPOs as distributions, with the bound.
    by_experiment: dict[str, list[Mapping[str, Any]]] = {}
    for name, _code, files in runs:
        if files is not None and files.chaos:
            by_experiment.setdefault(name.split(" #")[0], []).append(files.chaos)
    for name, chaos in by_experiment.items():
        if len(chaos) > 1:
            r.distributions += trial_distributions(name, chaos, bound_for)
    r.versions, r.settings = list(versions_), list(settings)
    if span is not None:
        r.axis, r.faults = Axis(*span), faults
        r.charts = ledger_charts(ops, *span) + prom.charts(prom_data, prom_reason)
    head = ("experiment", "verdict", "RTO write", "RTO read", "RTO notification", "RPO", "lost")
    if resilience:
        r.facts += _resilience_facts(resilience)
        r.lead.append(("Resilience", _resilience_table(resilience)))
    r.lead.append(("Experiments", _rows_table(head, rows)))
    r.slo = slo_rows
    r.slo_note = "Each experiment's SLO gate, in the order they ran."
    r.reconciliation = x.reconciliation_facts(totals)
    r.listed = listed
    return r


def _resilience_facts(resilience: Mapping[str, Any]) -> list[tuple[str, str]]:
    value = x.number(resilience.get("score"))
    facts = [
        (
            "resilience score",
            ("-" if value is None else f"{value:g} %")
            + " (weighted share of trials that passed, per experiment)",
        )
    ]
    if (ran := resilience.get("trials_run")) is not None:
        facts.append(("trials run", f"{ran} of {resilience.get('trials_planned')} planned"))
    if not_run := resilience.get("not_run"):
        facts.append(("not run yet", ", ".join(map(str, not_run))))
    return facts


def _resilience_table(resilience: Mapping[str, Any]) -> str:
    from html import escape

    head = ("experiment", "trials", "passed", "failed", "inconclusive", "weight", "pass rate")
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for name, p in (resilience.get("experiments") or {}).items():
        rate = x.number(p.get("pass_rate"))
        status = "pass" if rate == 1 else "fail" if p.get("failed") else "inconclusive"
        cells = [name, *(str(p.get(k, "-")) for k in head[1:6])]
        cells.append("-" if rate is None else f"{100 * rate:.0f} %")
        tds = "".join(f"<td>{escape(c)}</td>" for c in cells)
        out.append(f'<tr class="{status}">{tds}</tr>')
    return "".join(out) + "</table>"


def _gameday_row(folder: Path, name: str, verdict: Verdict, files: RunFiles) -> Row:
    chaos = files.chaos or {}
    cells = [name, verdict]
    cells += [x.fmt(x.dig(chaos, f"rto_s.{p}"), " s") for p in PATHS]
    cells += [x.fmt(x.dig(chaos, "rpo_s.max"), " s"), x.fmt(chaos.get("lost"))]
    rel = os.path.relpath(files.folder / "report.html", folder)
    return Row((*cells, rel), verdict)


def _rows_table(head: Sequence[str], rows: Sequence[Row]) -> str:
    """A table whose last cell is a link to another report."""
    from html import escape

    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in (*head, "report")) + "</tr>"]
    for row in rows:
        *cells, link = row.cells
        tds = "".join(f"<td>{escape(c)}</td>" for c in cells)
        out.append(
            f'<tr class="{escape(row.status)}">{tds}<td><a href="{escape(link)}">'
            f"{escape(link)}</a></td></tr>"
        )
    return "".join(out) + "</table>"


# ---- benchmarks of repeated trials ---------------------------------------------------------------


def trial_distributions(
    name: str,
    chaos: Sequence[Mapping[str, Any]],
    bound_for: Callable[[str, str], float | None],
) -> list[Distribution]:
    """RTO per path and RPO over repeated trials of one experiment (their chaos.json), with the
    bound the configuration promises where one applies."""
    dists = []
    for path in PATHS:
        values = [v for v in (x.number(x.dig(c, f"rto_s.{path}")) for c in chaos) if v is not None]
        dists.append(Distribution(name, f"RTO {path}", tuple(values), bound_for(name, path)))
    rpo = [v for v in (x.number(x.dig(c, "rpo_s.max")) for c in chaos) if v is not None]
    dists.append(Distribution(name, "RPO", tuple(rpo)))
    return dists


def bench_chaos_report(
    folder: Path, data: Mapping[str, Any], bound_for: Callable[[str, str], float | None]
) -> Report:
    """`make bench-chaos`: RTO per path and RPO of every trial, by experiment, with the bound
    the configuration promises where one applies."""
    runs = [r for r in data.get("runs") or [] if isinstance(r, Mapping)]
    dists, rows = [], []
    for name in dict.fromkeys(str(r.get("experiment")) for r in runs):
        mine = [r for r in runs if str(r.get("experiment")) == name]
        chaos = [r["chaos"] for r in mine if isinstance(r.get("chaos"), Mapping)]
        dists += trial_distributions(name, chaos, bound_for)
        failed = sum(1 for r in mine if r.get("code") not in (0, None))
        lost = sum(int(x.number(c.get("lost")) or 0) for c in chaos)
        rows.append(
            Row(
                (name, str(len(mine)), str(failed), str(lost)), "fail" if failed or lost else "pass"
            )
        )
    r = _bench_verdict(f"Chaos benchmark {folder.name}", "bench-chaos", dists, rows)
    r.distributions = dists
    timing = data.get("timing")
    if isinstance(timing, Mapping):  # the failover profile the trials ran with
        r.settings = [(str(k), str(v)) for k, v in timing.items()]
    r.lead.append(("Trials", _plain_table(("experiment", "trials", "failed", "lost"), rows)))
    return r


def bench_failover_report(folder: Path, data: Mapping[str, Any], bound: float) -> Report:
    """`make bench-failover`: RTO of every kill, by fault, against the failover bound."""
    dists, rows = [], []
    for fault, s in (data.get("summary") or {}).items():
        values = tuple(v for v in (x.number(v) for v in s.get("rto_s") or []) if v is not None)
        dists.append(Distribution(str(fault), "RTO write", values, bound))
        lost = int(x.number(s.get("lost")) or 0)
        rows.append(Row((str(fault), str(len(values)), "0", str(lost)), "fail" if lost else "pass"))
    r = _bench_verdict(f"Failover benchmark {folder.name}", "bench-failover", dists, rows)
    r.distributions = dists
    r.lead.append(("Kills", _plain_table(("fault", "kills", "failed", "lost"), rows)))
    return r


def _bench_verdict(
    title: str, kind: str, dists: Sequence[Distribution], rows: Sequence[Row]
) -> Report:
    reasons = [
        f"{row.cells[0]}: {row.cells[2]} failed run(s), {row.cells[3]} lost"
        for row in rows
        if row.status == "fail"
    ]
    over = [
        f"{d.group} {d.label}: {max(d.values):.3g} s, over the configured bound {d.bound:g} s"
        for d in dists
        if d.bound is not None and d.values and max(d.values) > d.bound
    ]
    verdict: Verdict = "fail" if reasons or over else ("pass" if rows else "inconclusive")
    steps = (
        ["Open the failed trials' own reports (their folders are beside this file)."]
        if reasons
        else []
    )
    if over:
        steps.append(
            "An RTO above the bound: the configuration promises less than it delivers; "
            "read that trial's timeline (who was primary when)."
        )
    return Report(
        title, kind, verdict, [*reasons, *over] or ([] if rows else ["no trial ran"]), steps
    )


def _plain_table(head: Sequence[str], rows: Sequence[Row]) -> str:
    from cwh.report.page import table

    return table(head, rows)


def bound_for(experiment: str, path: str) -> float | None:
    """The RTO bound the configuration promises: PostgreSQL failovers on the write path."""
    if experiment.startswith("pg-") and path == "write" and experiment != "pg-replication-latency":
        from env.configs import worst_case_failover_s

        return worst_case_failover_s()
    return None


def model_bound_for(profile: object) -> Callable[[str, str], float | None]:
    """The config-to-RTO model's bound (env/failover_model.py) under the failover profile a
    bench-chaos run recorded (`standard` when it recorded none: runs from before profiles)."""
    from env import failover_model
    from env.failover_timing import PROFILES, STANDARD

    bounds = failover_model.bounds(PROFILES.get(str(profile), STANDARD))

    def bound(experiment: str, path: str) -> float | None:
        b = bounds.get(experiment, {}).get(path)
        return None if b is None else b.seconds

    return bound


__all__ = ["FaultWindow", "read_run", "run_report"]


# ---- the other benchmarks: their own figures, tables and plots ---------------------------------

#: The folders of the benchmarks that hold their figures as Markdown, JSON and PNG plots.
BENCH_FOLDER = re.compile(r"-bench-(api|load|dr|scale|runtime|proxy|soak|etcd)$")
#: Their results files.
BENCH_RESULTS = ("results.json", "bench.json", "bench-dr.json", "bench-scale.json", "summary.json")


def bench_report(folder: Path) -> Report:
    """`make bench-api|load|dr|scale|runtime|proxy|soak|etcd`: what the benchmark wrote
    for people (its Markdown: figures beside goals, ratios against the baseline measured in the
    same run) and its plots, in one page. A benchmark measures rather than judges: the page
    passes when the results are there, and is inconclusive when they are not."""
    import base64

    found = [name for name in BENCH_RESULTS if (folder / name).exists()]
    problems: list[str] = []
    data = read_json(folder / found[0], problems) if found else None
    verdict: Verdict = "pass" if data else "inconclusive"
    said = data.get("verdict") if isinstance(data, dict) else None
    if said in ("pass", "fail", "inconclusive"):
        verdict = said  # a benchmark with goals says itself whether it met them
    reasons = [] if data else ["no results in this folder (the benchmark did not finish)"]
    r = Report(f"Benchmark {folder.name}", "bench", verdict, reasons + problems)
    r.facts = [("folder", folder.name), ("results", ", ".join(found) or "-")]
    r.versions = list(versions(folder))
    for md in sorted(folder.glob("*.md")):
        r.sections.append((md.name, markdown_html(md.read_text())))
    if data is not None and not r.sections:
        from html import escape

        r.sections.append((found[0], f"<pre>{escape(json.dumps(data, indent=2))}</pre>"))
    for png in sorted(folder.glob("*.png")):
        if png.name == "report.png":
            continue  # the page's own screenshot
        uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        r.images.append((png.name, uri))
    return r


def markdown_html(text: str) -> str:
    """The Markdown the benchmarks write, as HTML: headings, tables, paragraphs (escaped; image
    links left out: the plots are embedded apart)."""
    from html import escape

    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            head, *body = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
            out.append(
                "<table><tr>"
                + "".join(f"<th>{escape(c)}</th>" for c in head)
                + "</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in body
                )
                + "</table>"
            )
            rows.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            rows.append([c.strip() for c in stripped.strip("|").split("|")])
            continue
        flush()
        if not stripped or stripped.startswith("!["):
            continue
        if stripped.startswith("#"):
            out.append(f"<h3>{escape(stripped.lstrip('#').strip())}</h3>")
        else:
            out.append(f"<p>{escape(stripped)}</p>")
    flush()
    return "".join(out)
