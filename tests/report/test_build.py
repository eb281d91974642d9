"""Reports of every kind of folder: a game day told as one story, the benchmarks' repeated
trials against the bound the configuration promises, folders of other harness versions, and
`cwh report html` as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cwh.report import make_report, write_html
from env import failover_model
from env.failover_timing import PROFILES
from tests.report.runs import NO_PROMETHEUS, fault_pairs, ledger_span, run_folder

CWH = str(Path(sys.executable).with_name("cwh"))
EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.I)


def test_a_run_page_is_one_file_that_fetches_nothing(tmp_path):
    folder = run_folder("chaos-kill-lb", tmp_path)
    html = write_html(folder, NO_PROMETHEUS).read_text()
    assert not EXTERNAL.search(html)
    assert "<script src" not in html
    assert "<link" not in html
    (fault, injected, restored), *_ = fault_pairs(folder)
    assert f'data-fault="{fault}"' in html
    assert f'data-start="{injected}" data-end="{restored}"' in html
    versions = json.loads((folder / "versions.json").read_text())
    assert {"harness", "python", "locust"} <= set(versions)


def test_gameday_page_puts_every_experiment_on_one_timeline(tmp_path):
    day = tmp_path / "20261202T060000Z-gameday"
    day.mkdir()
    api = run_folder("chaos-kill-api", day)
    lb = run_folder("chaos-kill-lb", day)
    plan = [
        {"experiment": "kill-lb", "code": 0, "folder": lb.name},
        {"experiment": "kill-api", "code": 0, "folder": api.name},
        {"experiment": "pg-kill-primary", "code": 2, "folder": None},  # could not start
    ]
    (day / "gameday.json").write_text(json.dumps({"experiments": plan}))
    report = make_report(day, NO_PROMETHEUS)
    assert report.kind == "gameday"
    assert report.verdict == "inconclusive"
    assert "pg-kill-primary: no run folder (it could not start)" in report.reasons
    assert [w.fault for w in report.faults] == ["kill-lb: kill-haproxy", "kill-api: kill-api1"]
    assert report.axis is not None
    for folder in (api, lb):
        first, last = ledger_span(folder)
        assert report.axis.t0 <= first
        assert report.axis.t1 >= last
    ops = {c.chart_id: c.points for c in report.charts if c.chart_id.startswith("ops-")}
    assert all(ops.values())
    (title, table), *_ = report.lead
    assert title == "Experiments"
    assert 'href="chaos-kill-lb/report.html"' in table
    assert 'href="chaos-kill-api/report.html"' in table
    assert {r.cells[0] for r in report.slo} >= {"kill-lb: rto", "kill-api: rto"}
    acked = sum(json.loads((f / "summary.json").read_text())["reconciliation"]["acknowledged"]
                for f in (api, lb))  # fmt: skip
    assert ("acknowledged", str(acked)) in report.reconciliation


def test_a_planned_game_day_shows_its_resilience_score(tmp_path):
    from cwh.gameday import DONE, Item, Plan, score, trials

    day = tmp_path / "20261202T060000Z-gameday-weekly"
    day.mkdir()
    plan = Plan("weekly", (Item("kill-api", 2, 1.0), Item("kill-lb", 1, 3.0)))
    done = trials(plan)[:2]  # kill-lb not run yet
    folders = [run_folder("chaos-kill-api", day), run_folder("chaos-kill-api", day / "b")]
    for t, code, f in zip(done, (0, 1), folders, strict=True):
        t.status, t.code, t.folder = DONE, code, str(f.relative_to(day))
    entries = [
        {"experiment": f"kill-api #{t.index}", "code": t.code, "folder": t.folder} for t in done
    ]
    doc = {"experiments": entries, "score": score(plan, done), "pending": 1}
    (day / "gameday.json").write_text(json.dumps(doc))
    report = make_report(day, NO_PROMETHEUS)
    assert ("not run yet", "kill-lb") in report.facts
    assert any(k == "resilience score" and v.startswith("50 %") for k, v in report.facts)
    (title, table), (title2, _) = report.lead[:2]
    assert (title, title2) == ("Resilience", "Experiments")
    assert (
        "<td>kill-api</td><td>2</td><td>1</td><td>1</td><td>0</td><td>1.0</td><td>50 %</td>"
        in table
    )


def _bench_chaos(folder: Path, write_rtos: list[float], failover: str = "standard") -> None:
    runs = [
        {
            "experiment": "pg-kill-primary",
            "repeat": i + 1,
            "code": 0,
            "chaos": {
                "rto_s": {"write": rto, "read": 1.0, "notification": None, "max": rto},
                "rpo_s": {"max": 0.0},
                "lost": 0,
            },
        }
        for i, rto in enumerate(write_rtos)
    ]
    runs.append({"experiment": "redis-kill-master", "repeat": 1, "code": 1, "chaos": None})
    timing = dict(PROFILES[failover].rows())
    data = {"failover": failover, "timing": timing, "runs": runs, "summary": {}}
    (folder / "bench-chaos.json").write_text(json.dumps(data))


@pytest.mark.parametrize("failover", ["standard", "fast"])
def test_bench_chaos_distributions_against_the_failover_bound(tmp_path, failover: str):
    """Each trial against the config-to-RTO model's bound under the profile the run recorded."""
    folder = tmp_path / "20261202T060000Z-bench-chaos"
    folder.mkdir()
    bound = failover_model.bounds(PROFILES[failover])["pg-kill-primary"]["write"].seconds
    _bench_chaos(folder, [3.0, 3.5, bound + 6], failover)
    report = make_report(folder)
    assert report.verdict == "fail"
    write = next(d for d in report.distributions if d.label == "RTO write")
    assert (write.group, write.values, write.bound) == (
        "pg-kill-primary",
        (3.0, 3.5, bound + 6),
        bound,
    )
    assert next(d for d in report.distributions if d.label == "RTO read").bound is None
    assert (
        f"pg-kill-primary RTO write: {bound + 6:.3g} s, over the configured bound {bound:g} s"
        in report.reasons
    )
    assert "redis-kill-master: 1 failed run(s), 0 lost" in report.reasons
    html = write_html(folder).read_text()
    assert html.count('class="trial"') == 3 + 3 + 3  # write, read and RPO of three trials
    # The model bounds the crash's write path and the Redis master loss's write and notification.
    assert html.count('class="bound"') == 3
    assert ("failover profile", failover) in report.settings


def test_bench_failover_page(tmp_path):
    folder = tmp_path / "20261202T060000Z-bench-failover"
    folder.mkdir()
    summary = {
        "kill-primary-postgres": {"rto_s": [2.1, 2.4], "lost": 0, "acknowledged": 90, "info": 0},
        "kill-primary-patroni": {"rto_s": [9.0, 11.2], "lost": 0, "acknowledged": 80, "info": 1},
    }
    (folder / "results.json").write_text(json.dumps({"summary": summary, "runs": []}))
    report = make_report(folder)
    assert (report.kind, report.verdict, report.reasons) == ("bench-failover", "pass", [])
    assert [d.values for d in report.distributions] == [(2.1, 2.4), (9.0, 11.2)]


def test_folders_of_other_harness_versions_still_get_a_page(tmp_path):
    folder = tmp_path / "20261202T060000Z-chaos-new"
    folder.mkdir()
    line = {
        "op_id": "a",
        "kind": "submit",
        "invoked_s": 1.0,
        "completed_s": 1.5,
        "invoked_wall": 1000.0,
        "outcome": "ok",
        "attempt": 2,  # a field this version does not know
    }
    (folder / "ledger.jsonl").write_text(json.dumps(line) + "\n{broken\n")
    (folder / "summary.json").write_text(json.dumps({"window": {"start": 999.0, "end": 1010.0}}))
    (folder / "chaos.json").write_text(json.dumps({"rto_s": {"write": {"stall": 3}}}))
    (folder / "faults.jsonl").write_text('{"event": "inject", "fault": "x", "wall": 1001}\nnope\n')
    report = make_report(folder, NO_PROMETHEUS)
    assert report.verdict == "inconclusive"  # no gate ran
    assert ("could not read", "ledger.jsonl: 1 line(s) that are not operations") in report.facts
    assert ("could not read", "faults.jsonl: a line that is not JSON") in report.facts
    assert [w.label for w in report.faults] == ["x (not restored)"]
    assert report.charts[0].points == 1
    assert "<html" in write_html(folder, NO_PROMETHEUS).read_text()


def test_cwh_report_html_prints_the_page_and_refuses_other_folders(tmp_path):
    folder = run_folder("chaos-kill-api", tmp_path)
    proc = subprocess.run(
        [CWH, "report", "html", str(folder), "--prometheus", NO_PROMETHEUS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(folder.resolve() / "report.html")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [CWH, "report", "html", str(empty)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "no summary.json" in " ".join(proc.stderr.split())  # wrapped to the terminal


def test_recovery_and_the_longest_silence_are_rules_on_the_paths_charts(tmp_path):
    folder = run_folder("chaos-kill-lb", tmp_path)
    chaos = json.loads((folder / "chaos.json").read_text())
    start = chaos["fault_wall"] + 1
    chaos["longest_silence"] = {"write": {"s": 20.0, "from": start, "to": start + 20}}
    (folder / "chaos.json").write_text(json.dumps(chaos))
    report = make_report(folder, NO_PROMETHEUS)
    recovered = chaos["fault_wall"] + chaos["rto_s"]["write"]
    assert [t for t, _ in report.marks["ops-write"]] == [recovered, start, start + 20]
    assert [t for t, _ in report.marks["ops-read"]] == [
        chaos["fault_wall"] + chaos["rto_s"]["read"]
    ]
    html = write_html(folder, NO_PROMETHEUS).read_text()
    assert html.count('class="mark"') == 4 + 1  # write 3, read 1, notification 1


def test_every_other_benchmark_gets_a_page_of_its_figures_and_plots(tmp_path):
    from cwh.report.index import entry

    folder = tmp_path / "20261204T100000Z-bench-load"
    folder.mkdir()
    (folder / "bench.json").write_text(json.dumps({"throughput": {"ratio": 0.74}}))
    (folder / "bench.md").write_text(
        "# Load generator\n\n| figure | value | goal |\n|---|---|---|\n"
        "| phone/plain per core | 0.74x | >= 0.7x |\n\n![connected](connected.png)\n"
    )
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    (folder / "connected.png").write_bytes(png)
    report = make_report(folder, NO_PROMETHEUS)
    assert (report.kind, report.verdict) == ("bench", "pass")
    html = write_html(folder, NO_PROMETHEUS).read_text()
    assert "<td>phone/plain per core</td><td>0.74x</td><td>&gt;= 0.7x</td>" in html
    assert "data:image/png;base64," in html
    assert not EXTERNAL.search(html)
    listed = entry(folder)
    assert listed is not None
    assert (listed.kind, listed.verdict) == ("bench", "pass")


def test_a_benchmark_that_says_its_verdict_is_believed_and_one_without_results_is_not_a_pass(
    tmp_path,
):
    runtime = tmp_path / "20261204T100000Z-bench-runtime"
    runtime.mkdir()
    (runtime / "summary.json").write_text(json.dumps({"verdict": "fail", "figures": {}}))
    assert make_report(runtime, NO_PROMETHEUS).verdict == "fail"
    empty = tmp_path / "20261204T110000Z-bench-scale"
    empty.mkdir()
    report = make_report(empty, NO_PROMETHEUS)
    assert report.verdict == "inconclusive"
    assert report.reasons == ["no results in this folder (the benchmark did not finish)"]


def _day_of_kill_api_trials(root: Path, name: str, write_rtos: list[float]) -> Path:
    """A game day's folder with one kill-api trial per RTO (the recorded run, its RTO set)."""
    day = root / name
    day.mkdir()
    entries = []
    for i, rto in enumerate(write_rtos, start=1):
        trial = run_folder("chaos-kill-api", day / f"t{i}")
        chaos = json.loads((trial / "chaos.json").read_text())
        chaos["rto_s"]["write"] = rto
        (trial / "chaos.json").write_text(json.dumps(chaos))
        rel = str(trial.relative_to(day))
        entries.append({"experiment": f"kill-api #{i}", "code": 0, "folder": rel})
    (day / "gameday.json").write_text(json.dumps({"experiments": entries, "pending": 0}))
    return day


def test_repeated_trials_of_a_game_day_show_as_distributions(tmp_path):
    day = _day_of_kill_api_trials(tmp_path, "20261202T060000Z-gameday-x", [1.0, 2.0, 3.0])
    report = make_report(day, NO_PROMETHEUS)
    dists = {(d.group, d.label): d.values for d in report.distributions}
    assert dists[("kill-api", "RTO write")] == (1.0, 2.0, 3.0)
    assert ("kill-api", "RPO") in dists


def test_two_game_days_compare_trial_by_trial(tmp_path):
    from cwh.report.compare import compare, read_figures

    a = _day_of_kill_api_trials(tmp_path, "20261202T060000Z-gameday-x", [1.0, 1.1, 0.9, 1.0])
    b = _day_of_kill_api_trials(tmp_path, "20261209T060000Z-gameday-x", [5.0, 5.2, 4.9, 5.1])
    fa, fb = read_figures(a), read_figures(b)
    assert fa.trials["RTO write (kill-api)"] == [1.0, 1.1, 0.9, 1.0]
    (change,) = [c for c in compare(fa, fb) if c.figure == "RTO write (kill-api) median"]
    assert change.worse is True
    assert change.beyond_noise is True


def test_a_fleet_that_ended_early_says_when_and_why_beside_its_bound(tmp_path):
    folder = run_folder("chaos-kill-lb", tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    bound = summary["options"]["duration_s"]
    whole = write_html(folder, NO_PROMETHEUS).read_text()
    assert "bound; ended" not in whole  # the recorded run went its whole duration
    start = summary["window"]["start"]
    reason = "every path had recovered 2.1 s after the first fault, held for 15 s"
    summary["finished_early"] = {"reason": reason, "wall": start + 33.4}
    (folder / "summary.json").write_text(json.dumps(summary))
    html = write_html(folder, NO_PROMETHEUS).read_text()
    assert f"{bound:.4g} s bound; ended 33 s in: {reason}" in html
