"""`report.html`: one self-contained page per run folder (load, chaos, game day, benchmarks),
readable offline: the verdict and what to do next, timelines on one time axis with every fault
window shaded, RTO and RPO, the SLO table, the reconciliation.

    write_html(folder, prometheus_url)   # what `cwh load`, `cwh chaos run|gameday` and
                                         # `cwh report html RUN_DIR` call

Layout: `extract` (pure: records to values), `prom` (the Prometheus timelines), `build` (a
report per kind of folder), `svg` and `page` (drawing), `browser` (headless Chromium, for the
screenshot and the tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from cwh.report import build, page, prom
from cwh.report import extract as x
from cwh.report.model import Report

REPORT = "report.html"


class NotARunFolder(ValueError):
    """The folder holds none of the files a run writes."""


def kind_of(folder: Path) -> str:
    """bench-chaos, bench-failover, gameday, bench (the other benchmarks) or run (a load or
    chaos run), by the files and the folder's name."""
    if (folder / "bench-chaos.json").exists():
        return "bench-chaos"
    if (folder / "results.json").exists() and "bench-failover" in folder.name:
        return "bench-failover"
    if (folder / "gameday.json").exists():
        return "gameday"
    if build.BENCH_FOLDER.search(folder.name):
        return "bench"
    if any((folder / f).exists() for f in ("summary.json", "faults.jsonl", "journal.json")):
        return "run"
    raise NotARunFolder(f"{folder}: no summary.json, faults.jsonl, gameday.json or bench results")


def prometheus_url_of(files: build.RunFiles, given: str = "") -> str:
    """The URL given, else the one the run's SLO gate used, else the fleet's option."""
    return (
        given
        or str(x.dig(files.slo, "prometheus") or "")
        or str(x.dig(files.summary, "options.prometheus_url") or "")
    )


def _prometheus(folder: Path, url: str, report_axis: Any) -> tuple[dict[str, Any] | None, str]:
    if report_axis is None:
        return None, "the run has no time window"
    return prom.load_or_fetch(folder, url, report_axis[0], report_axis[1])


def make_report(folder: Path, prometheus_url: str = "") -> Report:
    """The report of any run folder (see `kind_of`)."""
    folder = folder.resolve()
    kind = kind_of(folder)
    problems: list[str] = []
    if kind == "bench-chaos":
        data = build.read_json(folder / "bench-chaos.json", problems) or {}
        return build.bench_chaos_report(folder, data, build.model_bound_for(data.get("failover")))
    if kind == "bench-failover":
        from env.configs import worst_case_failover_s

        data = build.read_json(folder / "results.json", problems) or {}
        return build.bench_failover_report(folder, data, worst_case_failover_s())
    if kind == "gameday":
        return _gameday(folder, prometheus_url)
    if kind == "bench":
        return build.bench_report(folder)
    files = build.read_run(folder)
    faults = x.fault_windows(files.fault_events)
    span = x.time_span(x.dig(files.summary, "window"), files.ops, faults)
    data, reason = _prometheus(folder, prometheus_url_of(files, prometheus_url), span)
    settings = build.local_settings() if build.is_local(files) else []
    return build.run_report(files, data, reason, build.versions(folder), settings)


def _gameday(folder: Path, prometheus_url: str) -> Report:
    problems: list[str] = []
    plan = build.read_json(folder / "gameday.json", problems) or {}
    runs: list[tuple[str, int | None, build.RunFiles | None]] = []
    for entry in plan.get("experiments") or []:
        sub = entry.get("folder")
        files = build.read_run((folder / sub).resolve()) if sub else None
        runs.append((str(entry.get("experiment", "?")), entry.get("code"), files))
    url = prometheus_url or next(
        (prometheus_url_of(f) for _, _, f in runs if f is not None and prometheus_url_of(f)), ""
    )
    ops = [op for _, _, f in runs if f is not None for op in f.ops]
    events = [e for _, _, f in runs if f is not None for e in f.fault_events]
    span = x.time_span(None, ops, x.fault_windows(events))
    data, reason = _prometheus(folder, url, span)
    local = any(f is not None and build.is_local(f) for _, _, f in runs)
    settings = build.local_settings() if local else []
    return build.gameday_report(
        folder, runs, data, reason, build.versions(folder), settings, plan.get("score")
    )


def write_html(folder: Path, prometheus_url: str = "") -> Path:
    """Write `report.html` into a run folder; returns its path.

    Raises:
        NotARunFolder: the folder holds no run.
    """
    report = make_report(folder, prometheus_url)
    path = folder / REPORT
    path.write_text(page.render(report))
    return path


def try_write_html(
    folder: Path, prometheus_url: str, console: Console, index_root: Path | None = None
) -> Path | None:
    """`write_html` at the end of a run: a report that cannot be made is said, and never
    changes the run's own outcome (its exit code is the gate's). `index_root`: the folder of
    runs whose `index.html` to rewrite (default: the parent, when it is named `reports`)."""
    try:
        path = write_html(folder, prometheus_url)
    except Exception as exc:  # the run's verdict stands whatever happens to its page
        console.print(f"[yellow]no report.html[/yellow]: {type(exc).__name__}: {exc}")
        return None
    console.print(f"html report: {path}")
    if index_root is None and folder.resolve().parent.name == "reports":
        index_root = folder.resolve().parent  # the runs' own folder, not a bench's inner one
    if index_root is not None:
        from cwh.report.index import write_index

        try:
            write_index(index_root.resolve())
        except Exception as exc:  # the index is a convenience; the run's page is made
            console.print(f"[yellow]no index.html[/yellow]: {type(exc).__name__}: {exc}")
    return path


def screenshot(report: Path, out: Path | None = None) -> Path:
    """The report opened in headless Chromium, as a PNG beside it (`report.png`).

    Raises:
        BrowserError: Chromium is missing, did not start or did not load the page.
    """
    from cwh.report.browser import CHROMIUM, BrowserError, Chromium, available

    if not available():
        raise BrowserError(f"no {CHROMIUM} (Debian's chromium package; `make deps` installs it)")
    with Chromium() as browser:
        load = browser.open(report)
        if load.errors:
            raise BrowserError(f"{report}: {'; '.join(load.errors)}")
        return browser.screenshot(out or report.with_suffix(".png"))


__all__ = ["REPORT", "NotARunFolder", "make_report", "screenshot", "try_write_html", "write_html"]
