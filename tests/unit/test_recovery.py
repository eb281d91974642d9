"""RTO and RPO checkers, property-tested."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from slo.ledger import Operation
from slo.recovery import reconcile_writes, rto_s


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


@given(timed, st.integers(min_value=1, max_value=5), st.floats(0.1, 2.0))
def test_with_a_bound_recovery_follows_every_failure_and_every_stall(seq, n, bound):
    ops = [
        Operation(str(i), "write", float(i), i + lat, 1000.0 + i, o)  # type: ignore[arg-type]
        for i, (o, lat) in enumerate(seq)
    ]
    rto = rto_s(ops, fault_s=0.0, consecutive=n, bound_s=bound)
    if rto is None:
        return
    if not stall_or_failure(ops, n, bound):
        assert rto == 0.0
        return
    # The recovery: n good ones in a row, after which nothing failed and nothing stalled.
    assert any(
        o.completed_s == rto
        and all(x.outcome == "ok" and x.latency_s <= bound for x in ops[k : k + n])
        and not stall_or_failure(ops[k:], n, bound)
        for k, o in enumerate(ops)
    )


def stall_or_failure(ops: list[Operation], n: int, bound: float) -> bool:
    run = 0
    for o in ops:
        if o.outcome != "ok":
            return True
        run = run + 1 if o.latency_s > bound else 0
        if run >= n:
            return True
    return False
