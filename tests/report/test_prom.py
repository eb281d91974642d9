"""The Prometheus timelines from recorded answers: who was primary when, lines per series,
gaps where a target could not be scraped, and charts that say why they have no data."""

from __future__ import annotations

import json
from typing import Any

from cwh.report import prom
from tests.report.runs import NO_PROMETHEUS, load, run_folder


def series(metric: dict[str, str], values: list[tuple[float, float]]) -> dict[str, Any]:
    return {"metric": metric, "values": [[t, str(v)] for t, v in values]}


def test_postgres_roles_show_the_failover_and_the_down_member():
    step = 2.0
    matrix = [
        # pg0: primary, killed at 10 (no scrape for 10 s), back as a replica.
        series({"member": "pg0"}, [(0, 2), (2, 2), (4, 2), (6, 2), (8, 2), (20, 1), (22, 1)]),
        series({"member": "pg1"}, [(t, 1) for t in range(0, 12, 2)] + [(12, 2), (14, 2)]),
    ]
    pg0, pg1 = prom.pg_lanes(matrix, step)
    assert pg0.name == "pg0"
    assert pg0.segments == ((0.0, 10.0, "primary"), (20.0, 24.0, "replica"))
    assert pg1.segments == ((0.0, 12.0, "replica"), (12.0, 16.0, "primary"))


def test_redis_roles_merge_a_nodes_series_across_its_failover():
    matrix = [
        series({"instance": "redis://127.0.0.1:22053", "role": "slave"}, [(0, 1), (2, 1)]),
        series({"instance": "redis://127.0.0.1:22053", "role": "master"}, [(4, 1), (6, 1)]),
        series({"instance": "redis://127.0.0.1:22050", "role": "master"}, [(0, 1), (2, 1)]),
    ]
    lanes = prom.redis_lanes(matrix, 2.0)
    assert [lane.name for lane in lanes] == ["127.0.0.1:22050", "127.0.0.1:22053"]
    assert lanes[1].segments == ((0.0, 4.0, "replica"), (4.0, 8.0, "master"))


def test_lines_name_each_series_and_skip_what_is_not_a_number():
    q = prom.Query("sum by (instance) (x)", label="instance", dashed=True)
    matrix = [
        series({"instance": "hub2"}, [(0, 3), (2, 4)]),
        {"metric": {"instance": "hub1"}, "values": [[0, "NaN"], [2, "5"], [4, "oops"]]},
    ]
    hub1, hub2 = prom.lines_of(matrix, q)
    assert (hub1.label, hub1.points, hub1.dashed) == ("hub1", ((2.0, 5.0),), True)
    assert hub2.points == ((0.0, 3.0), (2.0, 4.0))
    assert hub1.color != hub2.color


def test_charts_from_a_recorded_run_all_have_data(tmp_path):
    folder = run_folder("chaos-kill-api", tmp_path)
    charts = prom.charts(load(folder, "prometheus.json"))
    assert [c.chart_id for c in charts] == [s.chart_id for s in prom.CHARTS]
    for chart in charts:
        assert chart.missing == ""
        assert chart.points > 0, chart.chart_id
    pg = next(c for c in charts if c.chart_id == "pg-roles")
    primaries = {lane.name for lane in pg.lanes for *_, role in lane.segments if role == "primary"}
    assert len(primaries) == 1  # kill-api leaves PostgreSQL alone


def test_charts_say_in_their_place_why_they_have_no_data():
    charts = prom.charts(None, "Prometheus at http://x was unreachable (ConnectionError)")
    assert all(c.points == 0 for c in charts)
    assert all("unreachable" in c.missing for c in charts)
    empty = prom.charts({"url": "http://p", "results": {}})
    assert all("had no samples of" in c.missing for c in empty)


def test_saved_answers_are_reused_and_an_unreachable_prometheus_is_said(tmp_path):
    folder = run_folder("chaos-kill-api", tmp_path)
    saved = load(folder, "prometheus.json")
    data, reason = prom.load_or_fetch(folder, NO_PROMETHEUS, saved["start"], saved["end"])
    assert (data, reason) == (saved, "")
    # A window the saved answers do not cover is asked again: here nobody answers.
    data, reason = prom.load_or_fetch(folder, NO_PROMETHEUS, saved["start"] - 60, saved["end"])
    assert data is None
    assert reason == f"Prometheus at {NO_PROMETHEUS} was unreachable (ConnectionError)"
    assert json.loads((folder / "prometheus.json").read_text()) == saved  # left as it was
    assert prom.load_or_fetch(tmp_path, "", 0, 1) == (
        None,
        "no Prometheus URL was known for this run",
    )
