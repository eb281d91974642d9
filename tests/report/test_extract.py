"""The report's data, extracted from a run's records by pure functions: fault windows, the
time axis, operations per second, latency quantiles, the verdict, the SLO windows and the
requests the reconciliation lists."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwh.report import extract as x
from cwh.report.model import FaultWindow
from slo.ledger import Operation


def op(kind: str, wall: float, latency: float, outcome: str = "ok", **detail: str) -> Operation:
    return Operation(
        f"{kind}-{wall}", kind, 100.0, 100.0 + latency, wall, outcome, detail=detail or None
    )  # type: ignore[arg-type]


def test_fault_windows_pair_injections_and_restorations_by_name_in_order():
    events = [
        {"event": "restore", "fault": "b", "wall": 5.0},  # nothing injected yet: ignored
        {"event": "inject", "fault": "a", "wall": 10.0, "pid": 7},
        {"event": "inject", "fault": "a", "wall": 12.0},
        {"event": "restore", "fault": "a", "wall": 20.0},
        {"event": "inject", "fault": "c", "wall": 30.0},
        {"event": "restore", "fault": "a", "wall": 25.0},  # out of order in the file
        {"event": "inject", "fault": "d"},  # no time: cannot be drawn
    ]
    windows = x.fault_windows(events)
    assert windows == [
        FaultWindow("a", 10.0, 20.0, "pid 7"),
        FaultWindow("a", 12.0, 25.0, ""),
        FaultWindow("c", 30.0, None, ""),
    ]
    assert windows[2].label == "c (not restored)"


def test_time_span_covers_the_window_the_ledger_and_the_faults():
    ops = [op("submit", 100.0, 2.0), op("read", 150.0, 30.0)]
    faults = [FaultWindow("kill", 90.0, None), FaultWindow("late", 120.0, 200.0)]
    assert x.time_span({"start": 95.0, "end": 170.0}, ops, faults) == (90.0, 200.0)
    assert x.time_span({"start": 95.0, "end": 170.0}, ops, []) == (95.0, 180.0)
    assert x.time_span(None, [], []) is None
    assert x.time_span({"start": 5}, [], []) == (5.0, 6.0)  # never an empty axis


@given(st.floats(min_value=1, max_value=10 * 86400))
def test_bin_width_is_round_and_bounds_the_bins(span):
    width = x.bin_width(span)
    assert span / width <= x.MAX_BINS
    assert width in x.NICE_BINS_S or width > x.NICE_BINS_S[-1]


def test_outcome_bars_count_per_second_by_completion_time():
    ops = [
        op("submit", 0.2, 0.5),  # completes at 0.7: bin 0
        op("submit", 0.9, 0.3),  # 1.2: bin 1
        op("submit", 1.0, 0.5, "fail"),
        op("submit", 2.5, 0.1, "info"),
    ]
    by_path = x.paths_on_wall_clock(ops)
    bars = x.outcome_bars(by_path["write"], 0.0, 3.0)
    assert bars.bin_s == 1.0
    ok, fail, info = (s.values for s in bars.stacks)
    assert (ok, fail, info) == ((1.0, 1.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    # Over ten minutes the bins are 5 s wide, and the heights are still per second.
    ten = x.paths_on_wall_clock([op("submit", 1.0, 1.0)] * 10)["write"]
    wide = x.outcome_bars(ten, 0.0, 600.0)
    assert wide.bin_s == 5.0
    assert wide.stacks[0].values[0] == pytest.approx(2.0)


def test_latency_quantiles_per_bin_service_time_and_from_intended_start():
    ops = [op("submit", 10.0 + i * 0.1, 0.1 * (i + 1)) for i in range(10)]
    ops.append(op("submit", 11.0, 9.0, "fail"))  # not ok: not a latency
    ops.append(op("session", 12.0, 4.0))  # invoked_s is the intended start
    samples = x.latency_samples(ops)
    assert len(samples["service"]) == 10
    assert samples["intended"] == [(16.0, 4.0)]
    # Ten minutes: 10 s bins (at most 60), so all ten are in one.
    (p50, p99) = x.quantile_lines(samples["service"], 0.0, 600.0, "submit", {0.5: "a", 0.99: "b"})
    assert [v for _, v in p50.points] == [pytest.approx(0.5)]
    assert [v for _, v in p99.points] == [pytest.approx(1.0)]
    assert p99.label == "submit p99"


SLO_PASS = {"verdict": "pass", "exit_code": 0, "verdicts": [{"name": "rto", "status": "pass"}]}
SUMMARY = {"locust_exit_code": 0, "operations": {"submit": {"ok": 1}}, "reconciliation": {}}


def test_verdict_pass_fail_and_inconclusive_from_the_records():
    assert x.verdict(SUMMARY, SLO_PASS) == ("pass", [], [])
    lost = {**SUMMARY, "reconciliation": {"lost": 2, "lost_ids": ["r1", "r2"]}}
    verdict, reasons, steps = x.verdict(lost, SLO_PASS)
    assert (verdict, reasons) == ("fail", ["2 request(s) lost"])
    assert "Reconciliation" in steps[0]
    deviated = x.verdict(SUMMARY, SLO_PASS, {"status": "completed", "deviated": True})
    assert deviated[0] == "fail"
    assert x.verdict(SUMMARY, SLO_PASS, restored={"healthy": False})[0] == "fail"
    assert x.verdict({**SUMMARY, "locust_exit_code": 1}, SLO_PASS)[0] == "fail"
    assert x.verdict({**SUMMARY, "operations": {}}, SLO_PASS)[1] == [
        "the fleet recorded no operation"
    ]
    # Never a pass without proof: no gate, an undecided gate, a steady state not met, unknowns.
    assert x.verdict(SUMMARY, None)[0] == "inconclusive"
    no_data = {"verdict": "inconclusive", "verdicts": [{"name": "lag", "status": "no_data"}]}
    verdict, reasons, _ = x.verdict(SUMMARY, no_data)
    assert (verdict, reasons) == ("inconclusive", ["the SLO gate was inconclusive (no data: lag)"])
    before = {"status": "completed", "steady_states": {"before": {"steady_state_met": False}}}
    assert x.verdict(SUMMARY, SLO_PASS, before)[0] == "inconclusive"
    unknown = {**SUMMARY, "reconciliation": {"unknown": 3}}
    assert x.verdict(unknown, SLO_PASS)[0] == "inconclusive"


def test_verdict_names_failed_slos_and_what_to_do_next():
    slo = {
        "verdict": "fail",
        "verdicts": [
            {"name": "rto", "status": "fail", "reason": "measured 950 s", "queries": ["run:x"]},
            {"name": "api-cpu", "status": "fail", "key": False, "reason": "82 %"},
        ],
    }
    verdict, reasons, steps = x.verdict(SUMMARY, slo)
    assert verdict == "fail"
    assert reasons == [
        "SLO rto failed: measured 950 s",
        "SLO api-cpu failed (not key: reported only): 82 %",
    ]
    assert len(steps) == 1
    assert "failover bound" in steps[0]
    # A failed SLO that is not key fails nothing by itself.
    only_soft = {"verdict": "pass", "verdicts": slo["verdicts"][1:]}
    assert x.verdict(SUMMARY, only_soft)[0] == "pass"


def test_slo_rows_link_failed_slos_to_the_window_that_broke_them():
    faults = [FaultWindow("kill", 100.0, 110.0), FaultWindow("kill", 150.0, 160.0)]
    chaos = {"fault_wall": 100.0, "rto_s": {"write": 12.0, "max": 30.0}}
    rec = {"lost_acked_walls": [95.0, 140.0], "duplicated_keys": ["k1"]}
    ops = [op("submit", 120.0, 1.0, key="k1"), op("submit", 125.0, 1.0, key="k1")]
    span = (90.0, 200.0)

    def of(name: str, queries: tuple[str, ...] = ()) -> tuple[float, float, str]:
        s = x.slo_span({"name": name, "queries": list(queries)}, faults, chaos, rec, ops, span)
        return s.start, s.end, s.anchor

    assert of("rto") == (100.0, 130.0, "slo-rto")
    assert of("requests-lost") == (95.0, 150.0, "slo-requests-lost")  # 140 was lost at 150
    assert of("requests-duplicated") == (120.0, 125.0, "slo-requests-duplicated")
    assert of("submit-latency-p95")[:2] == (100.0, 160.0)  # the fault windows
    assert x.slo_span({"name": "lag"}, [], None, {}, [], span).start == 90.0  # the whole run
    slo = {
        "verdict": "fail",
        "verdicts": [
            {"name": "rto", "status": "fail", "measured": 31.0, "budget_consumed": 0.5},
            {"name": "rpo", "status": "pass", "measured": 0},
        ],
    }
    rows, spans, note = x.slo_rows(slo, lambda v: x.slo_span(v, faults, chaos, rec, ops, span))
    assert [r.link is not None for r in rows] == [True, False]
    assert rows[0].cells[:6] == ("rto", "fail", "31", "", "—", "50.0 %")
    assert [s.anchor for s in spans] == ["slo-rto"]
    assert note.startswith("Gate FAIL")
    assert x.slo_rows(None)[2] == "No SLO gate ran on this run (no slo.json)."


def test_reconciliation_lists_lost_requests_with_the_ledger_lines_that_name_them():
    lines = [
        json.dumps({"kind": "submit", "detail": {"request_id": "r1", "key": "k1"}}),
        json.dumps({"kind": "read", "detail": None}),
        "not json",
        json.dumps({"kind": "notification", "detail": {"request_id": "r1"}}),
        json.dumps({"kind": "submit", "detail": {"request_id": "r2", "key": "k2"}}),
    ]
    rec = {"lost": 1, "lost_ids": ["r1"], "duplicated_keys": ["k2"], "never_notified_ids": []}
    listed = x.listed_requests(rec, lines)
    assert [(i.what, i.ident, [e.line for e in i.entries]) for i in listed] == [
        ("lost", "r1", [1, 4]),
        ("duplicated", "k2", [5]),
    ]
    assert listed[0].entries[1].text == lines[3]


def test_reconciliation_facts_show_what_is_there_new_keys_included():
    rec = {
        "valid": False,
        "acknowledged": 10,
        "lost": 1,
        "unknown": 2,  # a newer harness's count
        "unread_at_end": 4,  # a key this report does not know yet
        "lost_ids": ["r"],
        "by_status": {"completed": 9},
    }
    assert x.reconciliation_facts(rec) == [
        ("acknowledged", "10"),
        ("lost", "1"),
        ("unknown (could not be read back)", "2"),
        ("unread at end", "4"),
        ("read back as", "completed 9"),
    ]


def test_recovery_rows_from_todays_chaos_json():
    chaos = {
        "consecutive": 5,
        "rto_s": {"write": 3.5, "read": None, "max": 3.5},
        "recovered": {"write": True, "read": None},
        "not_ok_after_fault": {"write": 4},
        "rpo_s": {"max": 0.0},
    }
    head, rows, note = x.recovery_rows(chaos)
    assert head == ["path", "RTO", "recovered", "longest silence", "not ok after the fault"]
    assert [r.cells for r in rows] == [
        ("write", "3.5 s", "yes", "—", "4"),
        ("read", "—", "—", "—", "—"),
        ("RPO", "0 s", "", "", ""),
    ]
    assert [r.status for r in rows] == ["pass", "no_data", "pass"]
    assert "5 consecutive" in note
    assert x.recovery_rows(None) == ([], [], "")


def test_recovery_rows_with_stalls_and_silences_when_the_measurement_has_them():
    # chaos.json as the stall-aware measurement writes it (bounds, silences, slow answers).
    chaos = {
        "consecutive": 5,
        "bound_s": {"write": 2.0, "notification": 5.0},
        "rto_s": {"write": 12.0, "notification": 20.0, "max": 20.0},
        "recovered": {"write": True, "notification": False},
        "longest_silence": {"write": {"s": 9.5, "from": 101.0, "to": 110.5}, "notification": None},
        "longest_silence_s": {"write": 9.5, "notification": None},
        "not_ok_after_fault": {"write": 3, "notification": 8},
        "slow_after_fault": {"write": 6, "notification": 0},
        "rpo_s": {"max": 1.25},
    }
    head, rows, _ = x.recovery_rows(chaos)
    assert head[3:] == ["longest silence", "latency bound", "not ok after the fault", "ok but slow"]
    assert rows[0].cells == ("write", "12 s", "yes", "9.5 s", "2", "3", "6")
    assert rows[1].cells == ("notification", "20 s", "NO", "—", "5", "8", "0")
    assert [r.status for r in rows] == ["pass", "fail", "fail"]
    assert x.longest_silence(chaos, "write") == (9.5, 101.0, 110.5)
    assert x.longest_silence({"longest_silence_s": {"read": 4}}, "read") == (4.0, None, None)
