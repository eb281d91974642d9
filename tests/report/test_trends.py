"""Trends across runs: `reports/index.html` lists every run with its verdict and headline
figures; `cwh report compare` says what changed and which changes exceed the noise, judged
from repeated measurements (operations resampled, trials permuted), never one number against
one."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cwh.report import compare as cmp
from cwh.report.index import entries, write_index
from tests.report.runs import load, run_folder

CWH = str(Path(sys.executable).with_name("cwh"))


def test_permutation_test_needs_trials_beyond_each_other():
    # 3 against 3: only when every B trial is above every A trial is p as low as 1/20.
    assert cmp.permutation_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.05)
    assert cmp.permutation_p([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(0.05)
    assert cmp.permutation_p([1.0, 3.0, 5.0], [2.0, 4.0, 6.0]) > 0.2
    assert cmp.permutation_p([1.0, 1.0], [1.0, 1.0]) == 1.0


def test_bootstrap_tells_a_shift_from_the_same_distribution():
    rng = random.Random(1)
    a = [rng.lognormvariate(0, 0.5) for _ in range(300)]
    same = [rng.lognormvariate(0, 0.5) for _ in range(300)]
    slower = [v * 1.5 for v in same]
    low, high = cmp.bootstrap_interval(a, same, 0.95)
    assert low < 0 < high
    low, high = cmp.bootstrap_interval(a, slower, 0.95)
    assert low > 0


def _figures(name: str, trials: dict[str, list[float]], slos=None, latency=None) -> cmp.Figures:
    return cmp.Figures(name, latency or {}, trials, slos or {})


def test_trials_compared_by_permutation_single_runs_marked_noise_unknown():
    a = _figures("a", {"RTO write (pg)": [3.0, 3.5, 4.0], "RPO (pg)": [0.0]})
    b = _figures("b", {"RTO write (pg)": [9.0, 9.5, 10.0], "RPO (pg)": [2.0]})
    rto, rpo = sorted(cmp.trial_changes(a, b), key=lambda c: c.figure, reverse=True)
    assert (rto.figure, rto.worse, rto.beyond_noise, rto.regression) == (
        "RTO write (pg) median",
        True,
        True,
        True,
    )
    assert "p = 0.05" in rto.how
    assert (rpo.worse, rpo.beyond_noise, rpo.regression) == (True, None, False)
    assert rpo.how.startswith("noise unknown")


def test_an_slo_that_passed_and_then_failed_is_a_regression():
    a = _figures("a", {}, {"rto": {"status": "pass", "measured": 20, "objective": "< 900 s"}})
    b = _figures("b", {}, {"rto": {"status": "fail", "measured": 950, "objective": "< 900 s"}})
    (change,) = cmp.slo_changes(a, b)
    assert change.regression
    assert change.how == "passed in A, failed in B"
    up = _figures("c", {}, {"avail": {"status": "pass", "measured": 0.999, "objective": "≥ 99 %"}})
    down = _figures("d", {}, {"avail": {"status": "pass", "measured": 0.99, "objective": "≥ 99 %"}})
    (change,) = cmp.slo_changes(up, down)
    assert (change.worse, change.beyond_noise, change.regression) == (True, None, False)


def test_the_table_fits_80_columns():
    long = "RTO notification (pg-lose-primary-node) median"
    changes = [cmp.Change(long, "1.23 s", "45.6 s", "+44.4 (+3610 %)", True, True, "x " * 60)]
    text = cmp.text_table(changes, "reports/a", "reports/b")
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "WORSE, beyond noise" in text


def test_compare_a_run_with_itself_and_with_a_slower_one(tmp_path):
    api = run_folder("chaos-kill-api", tmp_path)
    proc = subprocess.run(
        [CWH, "report", "compare", str(api), str(api), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    same = json.loads(proc.stdout)
    latency = [c for c in same if c["figure"].startswith("submit p")]
    assert [c["beyond_noise"] for c in latency] == [False, False, False]
    # The same run, its submits three times slower: beyond noise, exit code 1.
    slow = tmp_path / "20261202T060000Z-chaos-kill-api"
    slow.mkdir()
    for name in ("summary.json", "slo.json", "chaos.json"):
        (slow / name).write_text((api / name).read_text())
    with open(slow / "ledger.jsonl", "w") as f:
        for line in (api / "ledger.jsonl").read_text().splitlines():
            op = json.loads(line)
            op["completed_s"] = op["invoked_s"] + 3 * (op["completed_s"] - op["invoked_s"])
            f.write(json.dumps(op) + "\n")
    proc = subprocess.run(
        [CWH, "report", "compare", str(api), str(slow)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stdout
    assert "submit p50" in proc.stdout
    assert "WORSE, beyond noise" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80


def test_index_lists_every_run_newest_first_with_its_verdict(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    api = run_folder("chaos-kill-api", reports).rename(reports / "20261202T054836Z-chaos-kill-api")
    lb = run_folder("chaos-kill-lb", reports).rename(reports / "20261202T043934Z-chaos-kill-lb")
    slo = load(lb, "slo.json")
    slo["verdict"] = "fail"
    slo["verdicts"][0]["status"] = "fail"
    (lb / "slo.json").write_text(json.dumps(slo))
    day = reports / "20261202T070000Z-gameday"
    day.mkdir()
    (day / "gameday.json").write_text(json.dumps({"experiments": [{"code": 0}, {"code": 2}]}))
    (reports / "latest").symlink_to(api.name)
    (reports / "notes").mkdir()  # not a run
    listed = entries(reports)
    assert [(e.folder, e.kind, e.verdict) for e in listed] == [
        (day.name, "gameday", "inconclusive"),
        (api.name, "chaos", "pass"),
        (lb.name, "chaos", "fail"),
    ]
    assert dict(listed[1].figures) == {
        "RTO": "0 s",
        "RPO": "0 s",
        "lost": "0",
        "duplicated": "0",
        "submit p99": "436 ms",
    }
    proc = subprocess.run(
        [CWH, "report", "index", str(reports), "--json"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert [e["folder"] for e in json.loads(proc.stdout)] == [day.name, api.name, lb.name]
    html = write_index(reports).read_text()
    assert html.index(api.name) < html.index(lb.name)
    assert f'href="{api.name}/"' in html  # no report.html yet: the folder
    assert "3 runs: 1 pass, 1 fail, 1 inconclusive" in html
