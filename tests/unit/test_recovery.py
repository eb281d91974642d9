"""RTO and RPO checkers, property-tested."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slo.ledger import Operation
from slo.recovery import (
    longest_wait_unanswered,
    reconcile_writes,
    recovered_at,
    rto_s,
    stalled,
)


def op(i: int, t: float, outcome: str, wall: float | None = None) -> Operation:
    return Operation(str(i), "write", t, t + 0.01, wall if wall is not None else 1000 + t, outcome)  # type: ignore[arg-type]


def test_rto_is_first_of_n_successes_after_the_last_failure():
    ops = [
        op(0, 0.0, "ok"),
        op(1, 1.0, "ok"),
        op(2, 1.5, "ok"),
        op(3, 2.0, "fail"),
        op(4, 3.0, "info"),
        op(5, 4.0, "ok"),
        op(6, 5.0, "ok"),
        op(7, 6.0, "ok"),
    ]
    # Successes right after the fault (1.0, 1.5) precede a delayed disruption: not recovery.
    assert rto_s(ops, fault_s=0.5, consecutive=3) == 4.01 - 0.5
    assert rto_s(ops, fault_s=0.5, consecutive=4) is None
    assert rto_s(ops[:3], fault_s=0.5, consecutive=2) == 0.0
    assert rto_s(ops[:3], fault_s=0.5, consecutive=3) is None


outcomes = st.lists(st.sampled_from(["ok", "fail", "info"]), min_size=1, max_size=60)


@given(outcomes, st.integers(min_value=1, max_value=5))
def test_rto_properties(seq, n):
    ops = [op(i, float(i), o) for i, o in enumerate(seq)]
    rto = rto_s(ops, fault_s=0.0, consecutive=n)
    if rto is None:
        return
    # Recovery: at least n successes from there on and no failure after.
    after = [o for o in ops if o.completed_s >= rto]
    assert len(after) >= n
    assert all(o.outcome == "ok" for o in after)
    # Never earlier than the last failure.
    bad = [o for o in ops if o.outcome != "ok"]
    if bad:
        assert rto > bad[-1].invoked_s


@given(outcomes, st.sets(st.integers(min_value=0, max_value=59)))
def test_reconciliation_counts_only_acknowledged_losses(seq, present_idx):
    ops = [op(i, float(i), o) for i, o in enumerate(seq)]
    present = {str(i) for i in present_idx}
    result = reconcile_writes(ops, present, fault_wall=2000.0)
    acked = [o for o in ops if o.outcome == "ok"]
    lost = [o for o in acked if o.op_id not in present]
    assert result["acknowledged"] == len(acked)
    assert result["lost"] == len(lost)
    assert result["valid"] == (not lost)
    assert result["rpo_s"] == (
        max(0.0, 2000.0 - min(o.invoked_wall for o in lost)) if lost else 0.0
    )
    assert result["info"] + result["failed"] + result["acknowledged"] == len(ops)


timed = st.lists(
    st.tuples(st.sampled_from(["ok", "ok", "ok", "fail"]), st.floats(0.0, 3.0)),
    min_size=1,
    max_size=60,
)


def timed_ops(seq: list[tuple[str, float]]) -> list[Operation]:
    return [
        Operation(str(i), "write", i * 0.5, i * 0.5 + lat, 1000.0 + i * 0.5, o)  # type: ignore[arg-type]
        for i, (o, lat) in enumerate(seq)
    ]


@given(timed, st.floats(0.1, 2.0))
def test_a_late_answer_is_a_stall_only_when_the_path_went_quiet_while_it_waited(seq, bound):
    ops = timed_ops(seq)
    answered = sorted(o.completed_s for o in ops)
    for op in ops:
        late = op.outcome == "ok" and op.latency_s > bound
        # Each stretch of its own wait between answers to others, brute force.
        others = sorted(o.completed_s for o in ops if op.invoked_s < o.completed_s < op.completed_s)
        edges = [op.invoked_s, *others, op.completed_s]
        went_quiet = any(b - a > bound for a, b in pairwise(edges))
        assert stalled(op, bound, answered) == (late and went_quiet)
        assert longest_wait_unanswered(op, answered) <= op.latency_s + 1e-9


def test_a_short_stall_in_a_small_fleet_is_downtime():
    """Four phones, answers every ~1.5 s before the fault (ordinary pauses longer than the
    1 s bound); a 2.5 s stall: the writes that waited through it are bad, RTO is not 0."""
    before = [
        Operation(str(i), "write", i * 1.5, i * 1.5 + 0.05, 1000 + i * 1.5, "ok") for i in range(10)
    ]
    fault = 15.0
    held = [Operation(f"h{i}", "write", fault + i * 0.5, fault + 2.5, 0, "ok") for i in range(3)]
    after = [
        Operation(f"a{i}", "write", fault + 3 + i * 1.5, fault + 3.05 + i * 1.5, 0, "ok")
        for i in range(5)
    ]
    rto = rto_s(before + held + after, fault, consecutive=3, bound_s=1.0)
    assert rto == pytest.approx(3.05)
    # The ordinary pauses alone (nobody waiting through them) are no downtime.
    assert rto_s(before + after, fault, consecutive=3, bound_s=1.0) == 0.0


@given(timed, st.integers(min_value=1, max_value=5), st.floats(0.1, 2.0))
def test_recovery_comes_after_every_failure_and_every_stall(seq, n, bound):
    ops = timed_ops(seq)
    rto = rto_s(ops, fault_s=0.0, consecutive=n, bound_s=bound)
    answered = sorted(o.completed_s for o in ops)
    bad = [o for o in ops if o.outcome != "ok" or stalled(o, bound, answered)]
    if not bad:
        assert rto == (0.0 if len(ops) >= n else None)
        return
    if rto is None:
        return
    # At least n operations invoked after the last bad one, the earliest answered at `rto`.
    later = [o for o in ops if o.invoked_s > bad[-1].invoked_s]
    assert len(later) >= n
    assert rto == min(o.completed_s for o in later[:n])


def test_a_result_that_waited_for_an_offline_phone_is_not_a_late_notification():
    """The phone had no network between the acknowledgement and the result: the system could
    not deliver, so it is neither a time to result nor a late notification (it made the
    default load run's p99 5.7 s in CI: three phones offline for 5-13 s)."""
    from slo.recovery import path_ops

    def ttr(i: int, latency: float, offline: bool) -> Operation:
        detail = {"request_id": str(i), "via": "sync", "phone_offline": offline}
        return Operation(
            f"ttr:{i}", "time_to_result", 0.0, latency, 100.0, "ok", None, None, detail
        )

    notified = path_ops([ttr(1, 0.3, False), ttr(2, 13.0, True), ttr(3, 9.0, False)])[
        "notification"
    ]
    assert [(o.op_id, o.outcome) for o in notified] == [("ttr:1", "ok"), ("ttr:3", "fail")]


def path_op(i: int, kind: str, wall: float, outcome: str, latency_s: float = 0.05) -> Operation:
    return Operation(f"{kind}{i}", kind, wall, wall + latency_s, wall, outcome)  # type: ignore[arg-type]


def test_recovered_at_waits_for_every_path_in_use_and_moves_on_with_a_later_failure():
    """What ends a chaos fleet early (`stop_fleet`): every path in use recovered after the
    fault, as `rto_s` counts it; a path nobody used before the fault is not waited for."""
    fault = 100.0
    writes = [path_op(i, "submit", 90 + i, "ok") for i in range(5)]
    writes += [path_op(10 + i, "submit", 101 + i, "fail") for i in range(3)]
    writes += [path_op(20 + i, "submit", 104 + i, "ok") for i in range(5)]
    reads = [path_op(i, "read", 95 + i * 2, "ok") for i in range(5)]
    # Reads were in use and have only two operations after the fault: not yet known.
    assert recovered_at(writes + reads, fault, consecutive=5) is None
    reads += [path_op(10 + i, "read", 106 + i, "ok") for i in range(3)]
    # Writes recovered at their first good answer after the last failure (104.05); reads never
    # failed, so theirs is the fault itself: the later of the two counts.
    assert recovered_at(writes + reads, fault, consecutive=5) == pytest.approx(104.05)
    # One more failure: recovery starts again after it, and needs five good writes.
    late = [path_op(30, "submit", 110, "fail")]
    assert recovered_at(writes + reads + late, fault, consecutive=5) is None
    late += [path_op(40 + i, "submit", 111 + i, "ok") for i in range(5)]
    assert recovered_at(writes + reads + late, fault, consecutive=5) == pytest.approx(111.05)
    # A path with no operation before the fault (no results were awaited) is not in use.
    assert recovered_at(writes, fault, consecutive=5) == pytest.approx(104.05)


def test_recovered_at_takes_a_read_answered_404_for_an_answer():
    """A read of a request the system lost is answered 404: the read path is up (the RTO probe
    leaves such reads out once the losses are known), so it must not hold the fleet."""
    fault = 100.0
    writes = [path_op(i, "submit", 95 + i, "ok") for i in range(10)]
    reads = [path_op(i, "read", 95 + i, "ok") for i in range(10)]
    lost = Operation("read-lost", "read", 106.5, 106.6, 106.5, "fail", None, "404")
    assert recovered_at([*writes, *reads, lost], fault, consecutive=5) == pytest.approx(100.0)
    refused = Operation("read-503", "read", 106.5, 106.6, 106.5, "fail", None, "503")
    assert recovered_at([*writes, *reads, refused], fault, consecutive=5) is None
