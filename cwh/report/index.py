"""`reports/index.html`: every run folder with its verdict and headline figures, newest first,
each linking to its own page. Made from the folders' small records (never their ledgers), so
it stays quick with hundreds of runs; refreshed at the end of every run."""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from cwh.report import extract as x
from cwh.report.build import BENCH_FOLDER, bench_report, read_json

INDEX = "index.html"


@dataclass(frozen=True)
class Entry:
    """One run folder's line: its headline figures as text, its verdict, its page."""

    folder: str
    started: float | None
    kind: str
    verdict: str
    target: str
    figures: tuple[tuple[str, str], ...]  # (name, value) shown in the row
    page: str  # report.html, or the folder when it has none yet


def entry(folder: Path) -> Entry | None:
    """The folder's entry, or None when it holds no run."""
    problems: list[str] = []
    summary = read_json(folder / "summary.json", problems)
    slo = read_json(folder / "slo.json", problems)
    chaos = read_json(folder / "chaos.json", problems)
    journal = read_json(folder / "journal.json", problems)
    page = "report.html" if (folder / "report.html").exists() else ""
    page = f"{folder.name}/{page}" if page else f"{folder.name}/"
    if (gameday := read_json(folder / "gameday.json", problems)) is not None:
        codes = [e.get("code") for e in gameday.get("experiments") or []]
        pending = int(gameday.get("pending") or 0)
        # A day with trials left is not a pass, whatever the ones that ran said.
        verdict = _worst_code([*codes, *([2] if pending else [])])
        figures: tuple[tuple[str, str], ...] = (("trials", str(len(codes))),)
        score = (gameday.get("score") or {}).get("score")
        if score is not None:
            figures += (("resilience", f"{score:g} %"),)
        if pending:
            figures += (("not run", str(pending)),)
        return Entry(folder.name, _started(folder, None), "gameday", verdict, "", figures, page)
    if (bench := read_json(folder / "bench-chaos.json", problems)) is not None:
        runs = bench.get("runs") or []
        verdict = _worst_code([r.get("code") for r in runs])
        figures = (("trials", str(len(runs))),)
        return Entry(folder.name, _started(folder, None), "bench-chaos", verdict, "", figures, page)
    if BENCH_FOLDER.search(folder.name):
        r = bench_report(folder)
        return Entry(folder.name, _started(folder, None), "bench", r.verdict, "", (), page)
    if summary is None and journal is None:
        return None
    restored = read_json(folder / "restored-after.json", problems)
    verdict = x.verdict(summary, slo, journal, restored)[0]
    kind = "chaos" if journal is not None or chaos is not None else "load"
    return Entry(
        folder.name,
        _started(folder, summary),
        kind,
        verdict,
        str(x.dig(summary, "options.target") or ""),
        headline(summary, chaos),
        page,
    )


def headline(summary: Any, chaos: Any) -> tuple[tuple[str, str], ...]:
    """RTO (worst path) and RPO for a chaos run; lost and duplicated requests; submit p99."""
    out = []
    if chaos is not None:
        out.append(("RTO", x.fmt(x.dig(chaos, "rto_s.max"), " s")))
        out.append(("RPO", x.fmt(x.dig(chaos, "rpo_s.max"), " s")))
    rec = x.dig(summary, "reconciliation") or {}
    if "lost" in rec:
        out.append(("lost", x.fmt(rec.get("lost"))))
    if "duplicated" in rec:
        out.append(("duplicated", x.fmt(rec.get("duplicated"))))
    p99 = x.dig(summary, "latency.submit.p99_ms")
    if p99 is not None:
        out.append(("submit p99", x.fmt(p99, " ms")))
    return tuple(out)


def _worst_code(codes: Sequence[Any]) -> str:
    if not codes:
        return "inconclusive"
    if any(c == 1 for c in codes):
        return "fail"
    return "pass" if all(c == 0 for c in codes) else "inconclusive"


def _started(folder: Path, summary: Any) -> float | None:
    """The run's start: its window, else the UTC stamp its folder's name begins with."""
    start = x.number(x.dig(summary, "window.start"))
    if start is not None:
        return start
    try:
        return float(calendar.timegm(time.strptime(folder.name[:16], "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None


def entries(reports: Path) -> list[Entry]:
    """Every run folder directly under `reports`, newest first (`latest` is a link, skipped)."""
    found = []
    for folder in reports.iterdir():
        if folder.is_dir() and not folder.is_symlink() and (e := entry(folder)) is not None:
            found.append(e)
    return sorted(found, key=lambda e: (e.started or 0.0, e.folder), reverse=True)


def render(listed: Sequence[Entry], title: str) -> str:
    rows = []
    for e in listed:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.started)) if e.started else "?"
        figures = ", ".join(f"{k} {v}" for k, v in e.figures)
        rows.append(
            f'<tr class="{escape(e.verdict)}"><td>{escape(when)}</td>'
            f'<td><a href="{escape(e.page)}">{escape(e.folder)}</a></td><td>{escape(e.kind)}</td>'
            f'<td class="v">{escape(e.verdict)}</td><td>{escape(figures)}</td>'
            f"<td>{escape(e.target)}</td></tr>"
        )
    counts = {v: sum(1 for e in listed if e.verdict == v) for v in ("pass", "fail", "inconclusive")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>"
        "body{font:14px/1.45 'DejaVu Sans',sans-serif;margin:16px auto;max-width:1100px}"
        "table{border-collapse:collapse}td,th{border:1px solid #e0e0e0;padding:2px 6px;"
        "text-align:left}tr.fail .v{color:#c62828;font-weight:bold}tr.pass .v{color:#2e7d32}"
        "tr.inconclusive .v{color:#6a1b9a}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>{len(listed)} runs: {escape(summary)}. Compare two with "
        "<code>cwh report compare RUN_A RUN_B</code>.</p><table id=runs><tr><th>started (UTC)"
        "</th><th>run</th><th>kind</th><th>verdict</th><th>headline</th><th>target</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def write_index(reports: Path) -> Path:
    """Write `reports/index.html`; returns its path."""
    path = reports / INDEX
    path.write_text(render(entries(reports), f"Runs in {reports.resolve().name}"))
    return path
