"""Reading a report as a person would, in headless Chromium: shared by the tests on recorded
runs and the test that makes a run on the session's environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cwh.report.browser import Chromium
from tests.report.runs import fault_pairs, ledger_span

#: Everything the page draws, read in the page after its script ran.
SEEN = """(() => {
  const out = {charts: [], faults: [], labels: [], verdict: null};
  out.verdict = document.getElementById('verdict').textContent;
  for (const f of document.querySelectorAll('figure.chart')) {
    const svg = f.querySelector('svg.timeline');
    const drawn = svg ? svg.querySelectorAll(
      'rect.bar, polyline.line, circle.point, rect.segment').length : 0;
    out.charts.push({id: f.dataset.chart, points: +f.dataset.points, drawn: drawn,
                     missing: f.dataset.missing});
    if (!svg) continue;
    const area = svg.querySelector('rect.plot-area').getBoundingClientRect();
    for (const r of svg.querySelectorAll('rect.fault')) {
      const b = r.getBoundingClientRect();
      out.faults.push({chart: f.dataset.chart, fault: r.dataset.fault, t0: +svg.dataset.t0,
        t1: +svg.dataset.t1, left: b.left - area.left, right: b.right - area.left,
        width: area.width});
    }
    for (const t of svg.querySelectorAll('text.fault-label')) out.labels.push(t.textContent);
  }
  return out;
})()"""


def read_report(folder: Path, browser: Chromium) -> dict[str, Any]:
    """Open the folder's report.html: it loads with no console error and asks nothing of the
    network; a screenshot stays in the folder (report.png). Returns what the page drew."""
    load = browser.open(folder / "report.html")
    assert load.errors == [], load.errors
    assert load.requests == [], f"the page went to the network: {load.requests}"
    shot = browser.screenshot(folder / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seen: dict[str, Any] = browser.evaluate(SEEN)
    return seen


def assert_faults_where_journal_says(
    folder: Path,
    seen: dict[str, Any],
    prefix: str = "",
    span: tuple[float, float] | None = None,
) -> None:
    """Every timeline shades every fault of faults.jsonl, labelled, over the pixels its
    injection and restoration times map to on an axis that covers the whole ledger. On a game
    day's page: the faults of one trial's folder, named `<prefix><fault>`, on an axis that
    covers `span` (every trial's ledger)."""
    pairs = fault_pairs(folder)
    assert pairs, "the run injected no fault"
    first, last = span or ledger_span(folder)
    drawn = [c for c in seen["charts"] if not c["missing"]]
    for fault, injected, restored in pairs:
        fault = prefix + fault
        shades = [f for f in seen["faults"] if f["fault"] == fault]
        assert len(shades) == len(drawn), (fault, len(shades), len(drawn))
        for shade in shades:
            t0, t1, width = shade["t0"], shade["t1"], shade["width"]
            assert t0 <= first, "the time axis starts after the ledger"
            assert t1 >= last, "the time axis ends before the ledger"
            expect_left = (injected - t0) / (t1 - t0) * width
            expect_right = (restored - t0) / (t1 - t0) * width
            assert abs(shade["left"] - expect_left) <= 1.0, (shade, expect_left)
            assert abs(shade["right"] - max(expect_right, expect_left + 1)) <= 1.0, shade
        assert any(fault in label for label in seen["labels"]), (fault, seen["labels"])


def assert_report_complete(folder: Path) -> None:
    """The report a run just wrote: every chart drawn from data (Prometheus's included, asked
    while the environment ran), every fault shaded where faults.jsonl says."""
    with Chromium() as browser:
        seen = read_report(folder, browser)
    for chart in seen["charts"]:
        assert chart["missing"] == "", chart
        assert chart["points"] > 0, chart
        assert chart["drawn"] > 0, chart
    assert_faults_where_journal_says(folder, seen)
