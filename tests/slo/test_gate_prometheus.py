"""Verdicts against a real Prometheus holding data whose right answers are known in advance:
promtool turns OpenMetrics text into TSDB blocks, a Prometheus of the test's own serves them.
Also: the generated rules pass `promtool check rules`, and an unreachable Prometheus is exit 2.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from rich.console import Console

from cwh.gate import GateOptions, check
from env.process import terminate_then_kill, wait_until
from slo.definitions import DEFAULT_DIR, load
from slo.rules import render
from slo.sources import Window

STEP = 15
HOUR = 3600


def openmetrics(start: int) -> str:
    """An hour of data per case. Counters: `good` and `total` requests per case; gauges: a
    value per case (exactly on the objective for `borderline`), and a lag that breaches for 2
    of the 60 minutes in `lag="bad"`."""
    lines = ["# TYPE t_requests counter"]
    cases = {"pass": (9995, 10000), "fail": (990, 1000)}
    for case, (good, total) in cases.items():
        for i in range(HOUR // STEP + 1):
            t = start + i * STEP
            lines.append(f't_requests_total{{case="{case}",kind="good"}} {good * i} {t}')
            lines.append(f't_requests_total{{case="{case}",kind="all"}} {total * i} {t}')
    lines.append("# TYPE t_value gauge")
    for i in range(HOUR // STEP + 1):
        t = start + i * STEP
        lines.append(f't_value{{case="borderline"}} 1.0 {t}')
        # Prometheus 2 ranges include both ends: breaching samples strictly inside a minute
        # fall in exactly one one-minute slice.
        breach = (i * STEP) % 1800 in (615, 630, 645)
        lines.append(f't_value{{case="lag_ok"}} 0.2 {t}')
        lines.append(f't_value{{case="lag_bad"}} {5.0 if breach else 0.2} {t}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def document(name: str, indicator: str, budgeting: str, objective: str) -> str:
    """One OpenSLO SLO document; `indicator` is the indented body of `indicator.spec`."""
    return f"""---
apiVersion: openslo/v1
kind: SLO
metadata: {{name: {name}}}
spec:
  indicator:
    metadata: {{name: {name}}}
    spec:
{indicator}
  timeWindow: [{{duration: 28d}}]
  budgetingMethod: {budgeting}
  objectives: [{objective}]
"""


def source(query: str) -> str:
    return f"{{metricSource: {{type: Prometheus, spec: {{query: '{query}'}}}}}}"


def threshold(name: str, query: str, op: str, value: float, extra: str = "") -> str:
    sliced = "timeSlice" in extra
    return document(
        name,
        f"      thresholdMetric: {source(query)}",
        "Timeslices" if sliced else "Occurrences",
        f"{{op: {op}, value: {value}, target: {0.99 if sliced else 1}{extra}}}",
    )


def ratio(name: str, case: str) -> str:
    q = f'sum(increase(t_requests_total{{case="{case}",kind="%s"}}[{{{{window}}}}]))'
    return document(
        name,
        f"      ratioMetric:\n        good: {source(q % 'good')}\n"
        f"        total: {source(q % 'all')}",
        "Occurrences",
        "{target: 0.999}",
    )


@pytest.fixture(scope="module")
def known_prometheus(tmp_path_factory, env_settings) -> Iterator[tuple[str, Window]]:
    work = tmp_path_factory.mktemp("prom")
    # Whole hours, two hours back: inside Prometheus' retention, outside its head block.
    start = (int(time.time()) // HOUR - 3) * HOUR
    (work / "data.om").write_text(openmetrics(start))
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(work / "data.om"),
         str(work / "tsdb")],
        check=True, capture_output=True,
    )  # fmt: skip
    (work / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    port = env_settings.base_port + 80
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'tsdb'}", "--storage.tsdb.retention.time=10y",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def loaded() -> bool:
            # The data is hours old: ask at a time inside it.
            try:
                r = requests.get(
                    f"{url}/api/v1/query",
                    params={"query": "t_value", "time": start + 600},
                    timeout=2,
                )
            except requests.RequestException:
                return False
            return r.ok and bool(r.json()["data"]["result"])

        wait_until(loaded, timeout_s=60, what="the test Prometheus to serve the blocks")
        yield url, Window(start + 60, start + HOUR - 60)
    finally:
        terminate_then_kill([proc.pid], grace_s=10)
        proc.wait(timeout=10)


def gate(tmp_path: Path, url: str, window: Window, text: str) -> tuple[int, dict]:
    defs = tmp_path / "defs.yaml"
    defs.write_text(text)
    out = tmp_path / "out"
    console = Console(record=True, width=200)
    code = check(GateOptions(window=window, prometheus_url=url, definitions=defs, out=out), console)
    assert (out / "slo.json").exists(), console.export_text()
    result = json.loads((out / "slo.json").read_text())
    return code, {v["name"]: v for v in result["verdicts"]}


def test_a_ratio_above_its_target_passes_and_reports_its_budget(known_prometheus, tmp_path):
    code, v = gate(tmp_path, *known_prometheus, ratio("r", "pass"))
    assert code == 0
    assert v["r"]["status"] == "pass"
    assert v["r"]["measured"] == pytest.approx(0.9995, abs=1e-9)
    assert v["r"]["budget_consumed"] == pytest.approx(0.5, rel=1e-6)  # half of 0.1 %


def test_a_ratio_below_its_target_fails_with_exit_code_1(known_prometheus, tmp_path):
    code, v = gate(tmp_path, *known_prometheus, ratio("r", "fail"))
    assert code == 1
    assert v["r"]["status"] == "fail"
    assert v["r"]["measured"] == pytest.approx(0.99, abs=1e-9)
    assert v["r"]["budget_consumed"] == pytest.approx(10.0, rel=1e-6)  # ten times the budget
    assert "t_requests_total" in v["r"]["queries"][0]
    junit = (tmp_path / "out" / "slo-junit.xml").read_text()
    assert 'failures="1"' in junit
    assert "SLOViolation" in junit


def test_a_value_exactly_on_the_objective_meets_lte_and_misses_lt(known_prometheus, tmp_path):
    q = 'max(max_over_time(t_value{case="borderline"}[{{window}}]))'
    code, v = gate(
        tmp_path, *known_prometheus, threshold("lte", q, "lte", 1.0) + threshold("lt", q, "lt", 1.0)
    )
    assert v["lte"]["status"] == "pass"
    assert v["lte"]["margin"] == 0
    assert v["lt"]["status"] == "fail"
    assert code == 1


def test_time_slices_count_the_minutes_that_breach(known_prometheus, tmp_path):
    extra = ", timeSliceWindow: 1m"
    good = threshold("ok", 'max(max_over_time(t_value{case="lag_ok"}[{{window}}]))', "lt", 1, extra)
    bad = threshold(
        "bad", 'max(max_over_time(t_value{case="lag_bad"}[{{window}}]))', "lt", 1, extra
    )
    code, v = gate(tmp_path, *known_prometheus, good + bad)
    assert v["ok"]["status"] == "pass"
    assert v["ok"]["measured"] == 1.0
    # Two breaching minutes out of the 58-minute window's slices: under 99 % good.
    assert v["bad"]["status"] == "fail"
    assert v["bad"]["measured"] == pytest.approx(1 - 2 / v["bad"]["samples"], abs=1e-9)
    assert code == 1


def test_no_data_is_inconclusive_never_a_pass(known_prometheus, tmp_path):
    code, v = gate(
        tmp_path, *known_prometheus, threshold("none", 'max(t_value{case="nothing"})', "lt", 1)
    )
    assert v["none"]["status"] == "no_data"
    assert code == 2


def test_an_unreachable_prometheus_is_exit_code_2(tmp_path, env_settings):
    defs = tmp_path / "defs.yaml"
    defs.write_text(threshold("x", "max(up)", "gte", 1))
    code = check(
        GateOptions(
            window=Window(time.time() - 60, time.time()),
            prometheus_url=f"http://127.0.0.1:{env_settings.base_port + 81}",
            definitions=defs,
            out=tmp_path / "out",
        ),
        Console(quiet=True),
    )
    assert code == 2
    assert not (tmp_path / "out" / "slo.json").exists()


def test_generated_rules_pass_promtool(tmp_path):
    path = tmp_path / "slo.yml"
    path.write_text(render(load(DEFAULT_DIR)))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    text = path.read_text()
    for window in ("ratio_rate5m", "ratio_rate1h", "ratio_rate6h", "ratio_rate3d"):
        assert window in text
    assert "> 0.0144" in text  # 14.4 x the 0.1 % budget of submit-availability
