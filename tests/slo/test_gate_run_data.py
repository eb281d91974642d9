"""The gate on the run's own records: thresholds, warnings, minimum samples, and the comparison
with a baseline run (no Prometheus involved)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from cwh.gate import GateOptions, check
from slo.definitions import DEFAULT_DIR

DEFS = """\
apiVersion: openslo/v1
kind: SLO
metadata: {name: p95}
spec:
  indicator:
    metadata: {name: p95}
    spec:
      thresholdMetric:
        metricSource: {type: cwh-run, spec: {query: latency.submit.p95_ms}}
  timeWindow: [{duration: 28d}]
  budgetingMethod: Occurrences
  objectives: [{op: lte, value: 500, target: 1}]
x-cwh:
  {warn: 400, minSamples: 50, samples: latency.submit.count, baseline: {maxRegressionPercent: 10}}
"""


def run_folder(tmp_path: Path, name: str, p95: float, count: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    now = time.time()
    summary = {
        "window": {"start": now - 60, "end": now},
        "latency": {"submit": {"p95_ms": p95, "count": count}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def gate(tmp_path: Path, run: Path, baseline: Path | None = None) -> tuple[int, dict]:
    defs = tmp_path / "defs.yaml"
    defs.write_text(DEFS)
    code = check(GateOptions(run=run, definitions=defs, baseline=baseline), Console(quiet=True))
    (verdict,) = json.loads((run / "slo.json").read_text())["verdicts"]
    return code, verdict


def test_within_the_objective_passes_and_near_it_warns(tmp_path):
    code, v = gate(tmp_path, run_folder(tmp_path, "a", 120, 500))
    assert (code, v["status"], v["measured"], v["margin"]) == (0, "pass", 120, 380)
    code, v = gate(tmp_path, run_folder(tmp_path, "b", 450, 500))
    assert (code, v["status"], v["margin"]) == (0, "warn", 50)


def test_too_few_samples_is_inconclusive(tmp_path):
    code, v = gate(tmp_path, run_folder(tmp_path, "a", 120, 10))
    assert (code, v["status"]) == (2, "no_data")
    assert "10 samples" in v["reason"]


def test_a_regression_beyond_the_allowance_fails_even_within_the_objective(tmp_path):
    base = run_folder(tmp_path, "base", 200, 500)
    assert gate(tmp_path, base)[0] == 0  # writes the baseline's slo.json
    code, v = gate(tmp_path, run_folder(tmp_path, "slower", 240, 500), baseline=base)
    assert (code, v["status"]) == (1, "fail")
    assert v["regression_pct"] == 20
    assert "more than the 10 % allowed" in v["reason"]
    code, v = gate(tmp_path, run_folder(tmp_path, "similar", 215, 500), baseline=base)
    assert (code, v["status"], v["regression_pct"]) == (0, "pass", 7.5)


def test_a_run_with_requests_left_unknown_is_never_a_pass(tmp_path):
    """Every SLO holds, but the read-back could not answer for some acknowledged requests:
    they may be lost, so the gate is inconclusive (and a loss still fails)."""
    run = run_folder(tmp_path, "a", 120, 500)
    summary = json.loads((run / "summary.json").read_text())
    summary["reconciliation"] = {"lost": 0, "unknown": 3}
    (run / "summary.json").write_text(json.dumps(summary))
    code, v = gate(tmp_path, run)
    assert (code, v["status"]) == (2, "pass")
    result = json.loads((run / "slo.json").read_text())
    assert (result["verdict"], result["unknown_requests"]) == ("inconclusive", 3)


def test_the_baseline_comparison_marks_what_changed_beyond_noise(tmp_path):
    """Beside the SLOs' limits: every sample both runs hold compared as `cwh report compare`
    does (a recorded run, and the same run with its submits three times slower)."""
    from tests.report.runs import run_folder as recorded

    base = recorded("chaos-kill-api", tmp_path / "a")
    slow = recorded("chaos-kill-api", tmp_path / "b")
    ledger = slow / "ledger.jsonl"
    ops = [json.loads(line) for line in ledger.read_text().splitlines()]
    for op in ops:
        if op["kind"] == "submit":
            op["completed_s"] = op["invoked_s"] + 3 * (op["completed_s"] - op["invoked_s"])
    ledger.write_text("".join(json.dumps(op) + "\n" for op in ops))
    check(GateOptions(run=base, definitions=DEFAULT_DIR), Console(quiet=True))
    check(GateOptions(run=slow, definitions=DEFAULT_DIR, baseline=base), Console(quiet=True))
    changes = {c["figure"]: c for c in json.loads((slow / "baseline-compare.json").read_text())}
    submit = [c for name, c in changes.items() if name.startswith("submit") and "p50" in name]
    assert submit, sorted(changes)
    assert all(c["worse"] and c["beyond_noise"] for c in submit), submit
