"""The report of a real chaos run, opened in headless Chromium (Debian's chromium): it loads
with no console error and no network, every chart has data (or says in its place why
Prometheus gave none), each fault window is shaded where faults.jsonl says, and the links
from a failed SLO and a lost request lead somewhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cwh.report import write_html
from cwh.report.browser import Chromium
from cwh.report.model import OK
from tests.report.chromium import assert_faults_where_journal_says, read_report
from tests.report.runs import NO_PROMETHEUS, ledger_span, lines, load, run_folder

LEDGER_CHARTS = {"ops-write", "ops-read", "ops-notification", "latency"}
PROMETHEUS_CHARTS = {"phones", "replicas", "lag", "pg-roles", "redis-roles", "queue"}
#: The write path's bars (x in the plot's pixels) by outcome, and its shaded fault.
WRITE_BARS = f"""(() => {{
  const svg = document.querySelector('svg.timeline[data-chart="ops-write"]');
  const shade = svg.querySelector('rect.fault');
  const bars = [...svg.querySelectorAll('rect.bar')];
  const x = b => +b.getAttribute('x');
  return {{shade_x: +shade.getAttribute('x'), shade_w: +shade.getAttribute('width'),
    bin_w: +bars[0].getAttribute('width'),
    ok: bars.filter(b => b.getAttribute('fill') === '{OK}').map(x),
    bad: bars.filter(b => b.getAttribute('fill') !== '{OK}').map(x)}};
}})()"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    with Chromium() as chromium:
        yield chromium


def test_kill_api_run_every_chart_has_data(tmp_path, browser):
    # Recorded with its Prometheus answers (prometheus.json): readable with no environment.
    folder = run_folder("chaos-kill-api", tmp_path)
    write_html(folder, NO_PROMETHEUS)
    seen = read_report(folder, browser)
    charts = {c["id"]: c for c in seen["charts"]}
    assert set(charts) == LEDGER_CHARTS | PROMETHEUS_CHARTS
    for chart in charts.values():
        assert chart["missing"] == "", chart
        assert chart["points"] > 0, chart
        assert chart["drawn"] > 0, chart
    assert_faults_where_journal_says(folder, seen)
    assert seen["verdict"] == "pass"


def test_kill_lb_run_without_prometheus(tmp_path, browser):
    folder = run_folder("chaos-kill-lb", tmp_path)
    write_html(folder, NO_PROMETHEUS)
    seen = read_report(folder, browser)
    charts = {c["id"]: c for c in seen["charts"]}
    for name in LEDGER_CHARTS:
        assert charts[name]["points"] > 0, charts[name]
        assert charts[name]["drawn"] > 0, charts[name]
    # Prometheus unreachable: each of its charts says so in its place, nothing is drawn.
    for name in PROMETHEUS_CHARTS:
        assert "unreachable" in charts[name]["missing"], charts[name]
        assert charts[name]["drawn"] == 0
    assert_faults_where_journal_says(folder, seen)
    # HAProxy down: no write succeeded inside the shaded window, and none failed before it.
    bars = browser.evaluate(WRITE_BARS)
    shade_x, shade_w, bin_w = bars["shade_x"], bars["shade_w"], bars["bin_w"]
    assert min(bars["bad"]) >= shade_x - bin_w
    assert not [x for x in bars["ok"] if shade_x + bin_w < x < shade_x + shade_w - bin_w]


def _break_the_run(folder: Path) -> str:
    """Turn the recorded kill-lb run into a failed one: its RTO SLO failed and one of its
    acknowledged requests lost. Returns that request's id."""
    slo = load(folder, "slo.json")
    rto = next(v for v in slo["verdicts"] if v["name"] == "rto")
    rto.update(status="fail", reason="measured 33.718 s, objective < 30 s")
    slo.update(verdict="fail", exit_code=1)
    (folder / "slo.json").write_text(json.dumps(slo))
    ops = lines(folder / "ledger.jsonl")
    acked = next(o for o in ops if o["kind"] == "submit" and o["outcome"] == "ok")
    summary = load(folder, "summary.json")
    rec = summary["reconciliation"]
    rid = acked["detail"]["request_id"]
    rec.update(lost=1, lost_ids=[rid], lost_acked_walls=[acked["invoked_wall"]], valid=False)
    (folder / "summary.json").write_text(json.dumps(summary))
    return rid


def test_failed_run_links_to_its_window_and_ledger_lines(tmp_path, browser):
    folder = run_folder("chaos-kill-lb", tmp_path)
    rid = _break_the_run(folder)
    write_html(folder, NO_PROMETHEUS)
    seen = read_report(folder, browser)
    assert seen["verdict"] == "fail"
    assert browser.evaluate("document.querySelectorAll('#next-steps li').length") >= 2
    # The failed SLO's row links to an outlined window of the timeline; following the link
    # zooms every timeline to it (margins included).
    link = browser.evaluate(
        "(() => { const a = document.querySelector('tr.fail a[data-start]');"
        " return {href: a.getAttribute('href'), start: +a.dataset.start, end: +a.dataset.end,"
        " target: !!document.getElementById(a.getAttribute('href').slice(1))}; })()"
    )
    chaos = load(folder, "chaos.json")
    assert link["target"], link
    assert link["start"] == pytest.approx(chaos["fault_wall"])
    assert link["end"] == pytest.approx(chaos["fault_wall"] + chaos["rto_s"]["max"])
    before = browser.evaluate("document.querySelector('svg.plot').getAttribute('viewBox')")
    browser.evaluate("document.querySelector('tr.fail a[data-start]').click()")
    after = browser.evaluate(
        "[].map.call(document.querySelectorAll('svg.plot'), p => p.getAttribute('viewBox'))"
    )
    assert len({tuple(v.split()[::2]) for v in after}) == 1, "all zoom to one window (x, width)"
    assert float(after[0].split()[2]) < float(before.split()[2])  # narrower: zoomed in
    # The lost request is listed with the ledger lines that name it, quoted.
    quoted = browser.evaluate(
        "[].map.call(document.querySelectorAll('#listed li.lost pre'), p => [p.id, p.textContent])"
    )
    numbers = [
        n for n, line in enumerate((folder / "ledger.jsonl").read_text().splitlines(), 1)
        if rid in line
    ]  # fmt: skip
    assert [q[0] for q in quoted] == [f"ledger-L{n}" for n in numbers]
    assert all(rid in text for _, text in quoted)


def test_a_load_runs_page_opens_cleanly_with_no_fault_shaded(tmp_path, browser):
    """A plain load run (`make load`): the chaos fixture without its experiment's files."""
    folder = run_folder("chaos-kill-api", tmp_path)
    for name in ("journal.json", "faults.jsonl", "chaos.json", "restored-after.json"):
        (folder / name).unlink()
    folder = folder.rename(tmp_path / "20261202T050000Z-load")
    write_html(folder, NO_PROMETHEUS)
    seen = read_report(folder, browser)
    charts = {c["id"]: c for c in seen["charts"]}
    assert set(charts) == LEDGER_CHARTS | PROMETHEUS_CHARTS
    for chart in charts.values():
        assert (chart["missing"], chart["points"] > 0) == ("", True), chart
    assert seen["faults"] == []
    assert seen["verdict"] == "pass"


def test_a_game_days_page_shades_every_trials_faults_on_one_axis(tmp_path, browser):
    """Two trials in a day's folder, as `cwh chaos gameday` leaves them: one page, every fault
    of each trial's faults.jsonl shaded where it says, on one axis over both ledgers."""
    from cwh.gameday import DONE, Item, Plan, score, trials

    day = tmp_path / "20261202T060000Z-gameday-weekly"
    day.mkdir()
    api, lb = run_folder("chaos-kill-api", day), run_folder("chaos-kill-lb", day)
    plan = Plan("weekly", (Item("kill-api"), Item("kill-lb")))
    done = trials(plan)
    for t, f in zip(done, (api, lb), strict=True):
        t.status, t.code, t.folder = DONE, 0, f.name
    entries = [{"experiment": t.experiment, "code": 0, "folder": t.folder} for t in done]
    doc = {"experiments": entries, "score": score(plan, done), "pending": 0}
    (day / "gameday.json").write_text(json.dumps(doc))
    write_html(day, NO_PROMETHEUS)
    seen = read_report(day, browser)
    spans = [ledger_span(f) for f in (api, lb)]
    span = (min(a for a, _ in spans), max(b for _, b in spans))
    assert_faults_where_journal_says(api, seen, "kill-api: ", span)
    assert_faults_where_journal_says(lb, seen, "kill-lb: ", span)
    assert seen["verdict"] == "pass"
    assert (day / "report.png").stat().st_size > 0
