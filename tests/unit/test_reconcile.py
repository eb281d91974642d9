from __future__ import annotations

import json
from pathlib import Path

from slo.definitions import load
from slo.gate import Context, evaluate
from slo.ledger import Operation
from slo.reconcile import awaiting_results, reconcile
from slo.sources import RunData, Window


def submit(key: str, rid: str, outcome: str = "ok") -> Operation:
    return Operation(
        key,
        "submit",
        0,
        0.1,
        1000.0,
        outcome,  # type: ignore[arg-type]
        "api1",
        None,
        {"device_id": "d1", "request_id": rid},
    )


def note(rid: str) -> Operation:
    return Operation(
        f"n-{rid}",
        "notification",
        1,
        1,
        1001.0,
        "ok",
        "hub1",
        None,
        {"request_id": rid, "via": "socket"},
    )


def test_counts_lost_duplicated_completed_and_never_notified():
    ops = [
        submit("k1", "r1"),
        note("r1"),  # completed and notified
        submit("k2", "r2"),  # completed, never notified
        submit("k3", "r3"),  # lost
        submit("k4", "r4"),
        submit("k4", "r4"),  # replayed offline: same request, fine
        submit("k5", "r5"),
        submit("k5", "r6"),  # one key, two requests: duplicated
        submit("k7", "r7", outcome="info"),  # unknown: apart
    ]
    statuses = {
        "r1": "completed",
        "r2": "completed",
        "r3": None,
        "r4": "queued",
        "r5": "completed",
        "r6": "completed",
        "r7": None,
    }
    result = reconcile(ops, statuses)
    assert result["valid"] is False
    assert result["acknowledged"] == 6
    assert result["lost"] == 1
    assert result["lost_ids"] == ["r3"]
    assert result["lost_acked_walls"] == [1000.1]  # RPO's clock: the acknowledgement
    assert result["duplicated"] == 1
    assert result["duplicated_keys"] == ["k5"]
    assert result["completed"] == 4
    assert result["never_notified"] == 3
    assert result["info_submits"] == 1


def test_a_clean_run_is_valid():
    ops = [submit("k1", "r1"), note("r1")]
    assert reconcile(ops, {"r1": "completed"})["valid"] is True


def attempt(key: str, rid: str | None, outcome: str = "ok") -> Operation:
    """The phone's form: one entry per attempt, the idempotency key in the detail."""
    detail = {"device_id": "d1", "key": key}
    if rid is not None:
        detail["request_id"] = rid
    return Operation(
        f"attempt-{key}-{rid}-{outcome}",
        "submit",
        0,
        0.1,
        1000.0,
        outcome,  # type: ignore[arg-type]
        "api1",
        None,
        detail,
    )


def test_attempts_of_one_key_are_one_request_unless_acknowledged_twice_differently():
    ops = [
        attempt("k1", None, outcome="fail"),  # 429, then replayed with the same key
        attempt("k1", "r1"),
        attempt("k2", "r2"),
        attempt("k2", "r3", outcome="ok"),  # the server made a second request: duplicated
    ]
    rec = reconcile(ops, {"r1": "completed", "r2": "completed", "r3": "completed"})
    assert rec["duplicated"] == 1
    assert rec["duplicated_keys"] == ["k2"]
    assert rec["acknowledged"] == 3
    assert rec["lost"] == 0
    assert not rec["valid"]


def test_a_request_that_could_not_be_read_back_is_unknown_not_lost():
    """Absent from the read-back (5xx, timeout, 429 to the end, no token): unknown. Only a
    request the API said is not there (None) is lost."""
    ops = [submit("k1", "r1"), note("r1"), submit("k2", "r2"), submit("k3", "r3")]
    rec = reconcile(ops, {"r1": "completed"})
    assert (rec["lost"], rec.get("unknown")) == (0, 2)
    assert rec["unknown_ids"] == ["r2", "r3"]
    assert rec["completed"] == 1
    assert rec["never_notified"] == 0
    assert rec["verdict"] == "inconclusive"  # neither a pass nor a loss
    assert rec["by_status"] == {"completed": 1, "unknown": 2}


def test_a_loss_fails_the_run_even_with_unknowns_left():
    ops = [submit("k1", "r1"), submit("k2", "r2")]
    rec = reconcile(ops, {"r1": None})
    assert (rec["lost"], rec.get("unknown"), rec.get("verdict")) == (1, 1, "fail")
    assert reconcile([submit("k1", "r1")], {"r1": "completed"})["verdict"] == "pass"


def test_a_key_whose_first_request_was_lost_and_retried_is_lost_not_duplicated():
    """The phone retried after its acknowledged request vanished, and got a new one: the
    system lost a request (counted), but holds only one for the key."""
    ops = [attempt("k1", "r1"), attempt("k1", "r2")]
    rec = reconcile(ops, {"r1": None, "r2": "completed"})
    assert (rec["lost"], rec["duplicated"]) == (1, 0)


def test_rpo_counts_from_the_acknowledgement_not_the_invocation():
    late = Operation(
        "k1", "submit", 0, 2.5, 1000.0, "ok", None, None, {"device_id": "d1", "request_id": "r1"}
    )
    assert reconcile([late], {"r1": None})["lost_acked_walls"] == [1002.5]


def test_a_result_the_phone_stopped_too_early_for_is_not_never_notified():
    """After the run the read-back reads each device's event log (as an app resuming would): a
    completed request whose event is there was notified after the phone stopped; one whose event
    is missing was never notified; one whose log could not be read is unknown."""
    ops = [submit(f"k{i}", f"r{i}") for i in range(1, 5)] + [note("r1")]
    statuses = dict.fromkeys(("r1", "r2", "r3", "r4"), "completed")
    rec = reconcile(ops, statuses, events={"r2": True, "r3": False})
    assert rec["never_notified"] == 1
    assert rec["never_notified_ids"] == ["r3"]
    assert rec["notified_after_run"] == 1  # r2
    assert rec["notification_unknown"] == 1  # r4: its device's log could not be read
    # Without the catch-up, every completed request no phone heard of is never notified.
    assert reconcile(ops, statuses)["never_notified"] == 3


def test_a_completed_request_never_notified_fails_the_gate(tmp_path: Path):
    """Swallowed notifications alone (nothing lost) fail a run: the harness reports them, and a
    key objective reads them."""
    slo = next(s for s in load() if s.name == "requests-never-notified")
    assert slo.gate.key
    for count, status in ((0, "pass"), (2, "fail")):
        (tmp_path / "summary.json").write_text(
            json.dumps({"reconciliation": {"never_notified": count, "lost": 0}})
        )
        verdict = evaluate(slo, Context(Window(0, 60), None, RunData(tmp_path)))
        assert verdict.status == status, verdict


def test_results_owed_are_the_acknowledged_requests_older_than_the_cut_without_a_result():
    """What keeps a chaos fleet running after its paths recovered (`stop_fleet`): a job the
    system still owes a phone (a killed worker's, until its claim expires)."""
    ops = [submit("k1", "r1"), submit("k2", "r2"), submit("k3", "r3", "fail"), note("r1")]
    # Acknowledged at 1000.1 (invoked_wall 1000 + 0.1 s): owed when the cut is later.
    assert awaiting_results(ops, acked_before=1001.0) == ["r2"]
    assert awaiting_results(ops, acked_before=1000.0) == []  # acknowledged too recently to owe
    assert awaiting_results([*ops, note("r2")], acked_before=1001.0) == []
    # Lost: a read of it was answered 404, and no result will ever come.
    gone = Operation("read-r2", "read", 2, 2.1, 1002.0, "fail", "api1", "404", {"request_id": "r2"})
    assert awaiting_results([*ops, gone], acked_before=1001.0) == []
