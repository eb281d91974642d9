"""RTO per path and RPO of a chaos run, from a ledger: pure, known answers."""

from __future__ import annotations

from typing import Any

from slo.ledger import Operation
from slo.recovery import path_ops, recovery_report

FAULT = 1_000.0


def op(
    kind: str, wall: float, outcome: str = "ok", latency: float = 0.05, **detail: Any
) -> Operation:
    # Monotonic times from another process's clock: the report must use the wall clock.
    return Operation(f"{kind}{wall}", kind, 5.0, 5.0 + latency, wall, outcome, detail=detail)  # type: ignore[arg-type]


def ledger() -> list[Operation]:
    ops = [op("submit", FAULT - 5 + i * 0.5) for i in range(8)]
    ops += [op("submit", FAULT + 0.5, "fail"), op("submit", FAULT + 1.0, "info")]
    ops += [op("submit", FAULT + 2 + i) for i in range(5)]  # recovered: first done at +2.05
    ops += [op("read", FAULT + 0.2 + i) for i in range(6)]  # never failed: RTO 0
    # notifications: one late through a sync, one slow, then five good ones (one by a sync)
    ops += [op("time_to_result", FAULT + 0.1, latency=6.0, via="sync")]
    ops += [op("time_to_result", FAULT + 0.5, latency=9.0, via="socket")]
    ops += [op("time_to_result", FAULT + 3 + i, latency=0.2, via="socket") for i in range(4)]
    ops += [op("time_to_result", FAULT + 7, latency=0.2, via="sync")]
    return ops


def test_paths_use_the_wall_clock_and_judge_notifications():
    paths = path_ops(ledger(), ttr_bound_s=5.0)
    assert {p: len(v) for p, v in paths.items()} == {"write": 15, "read": 6, "notification": 7}
    assert paths["write"][0].invoked_s == FAULT - 5
    outcomes = [o.outcome for o in paths["notification"]]
    assert outcomes == ["fail", "fail", "ok", "ok", "ok", "ok", "ok"]


def test_rto_per_path_and_no_loss():
    rec = {"lost": 0, "acknowledged": 13, "duplicated": 0, "never_notified": 0, "info_submits": 1}
    r = recovery_report(ledger(), FAULT, rec, consecutive=5)
    assert r["rto_s"]["write"] == 2.05
    assert r["rto_s"]["read"] == 0.0
    assert r["rto_s"]["notification"] == 3.2
    assert r["rto_s"]["max"] == 3.2
    assert r["recovered"] == {"write": True, "read": True, "notification": True}
    assert r["unrecovered_paths"] == 0
    assert r["rpo_s"]["max"] == 0.0
    assert r["not_ok_after_fault"] == {"write": 2, "read": 0, "notification": 2}


def test_a_path_that_never_recovers_is_a_lower_bound_and_counted():
    ops = [op("submit", FAULT + i, "fail") for i in range(6)] + [op("read", FAULT + 1)]
    r = recovery_report(ops, FAULT, {"lost": 0}, consecutive=5)
    assert r["recovered"]["write"] is False
    assert r["rto_s"]["write"] == 5.05  # observed until the last failure completed
    assert r["recovered"]["read"] is None  # one read: too few to say
    assert r["rto_s"]["read"] is None
    assert r["unrecovered_paths"] == 1


def test_rpo_is_the_age_of_the_oldest_lost_acknowledgement():
    rec = {"lost": 2, "lost_acked_walls": [FAULT - 3.5, FAULT - 1.0], "lost_ids": ["a", "b"]}
    r = recovery_report(ledger(), FAULT, rec)
    assert r["rpo_s"] == {"write": 3.5, "max": 3.5}
    assert r["lost"] == 2
    # a cascade: acknowledged by the interim primary 1 s after the first fault, lost with it
    # at the second fault 9 s later; RPO is that window, not 0
    rec = {"lost": 1, "lost_acked_walls": [FAULT + 1]}
    r = recovery_report(ledger(), FAULT, rec, events=[FAULT, FAULT + 10, FAULT + 30])
    assert (r["rpo_s"]["max"], r["lost"]) == (9.0, 1)
    # lost after every fault event: counted up to the end of the run
    r = recovery_report(ledger(), FAULT, {"lost": 1, "lost_acked_walls": [FAULT + 7.5]})
    assert r["rpo_s"]["max"] == 2.0  # the last operation (the 9 s notification) ended at +9.5
    # recorded a moment after the fault (the phone read the answer late): acknowledged as it
    # struck, not counted to the recovery 20 s later
    rec = {"lost": 1, "lost_acked_walls": [FAULT + 0.2]}
    r = recovery_report(ledger(), FAULT, rec, events=[FAULT, FAULT + 20])
    assert r["rpo_s"]["max"] == 0.0


def test_unknown_read_backs_are_reported_apart_from_losses():
    rec = {"lost": 0, "unknown": 4, "lost_acked_walls": [], "info_submits": 1}
    r = recovery_report(ledger(), FAULT, rec)
    assert (r["lost"], r["unknown"], r["info"], r["rpo_s"]["max"]) == (0, 4, 1, 0.0)


def stalled_ledger(stall_s: float = 3.0) -> list[Operation]:
    """Submits every 0.25 s; those invoked in the stall wait (none fails) and are all answered
    when it ends, as when pgBouncer pauses; reads go on untouched."""
    ops = []
    for i in range(-20, 40):
        wall = FAULT + i * 0.25
        done = FAULT + stall_s + 0.01 if FAULT <= wall < FAULT + stall_s else wall + 0.05
        ops.append(op("submit", wall, latency=done - wall))
        ops.append(op("read", wall + 0.1))
    return ops


def test_a_stall_is_downtime_not_availability():
    r = recovery_report(
        stalled_ledger(3.0), FAULT, {"lost": 0}, consecutive=5, bounds_s={"write": 1.0}
    )
    # Nothing failed, yet no submit was answered for 3 s: the write path was down that long.
    assert r["not_ok_after_fault"]["write"] == 0
    assert r["rto_s"]["write"] >= 3.0, r["rto_s"]
    assert r["rto_s"]["write"] == 3.01  # when the stalled submits were answered
    assert r["slow_after_fault"]["write"] == 9  # ok, but over the 1 s bound
    assert r["recovered"]["write"] is True
    assert r["rto_s"]["read"] == 0.0  # the reads never stalled
    assert r["bound_s"]["write"] == 1.0
    # The longest window with no submit answered: from the fault to the end of the stall.
    silence = r["longest_silence"]["write"]
    assert silence["s"] == 3.01
    assert (silence["from"], silence["to"]) == (FAULT, FAULT + 3.01)
    assert r["longest_silence"]["read"]["s"] <= 0.25 + 1e-9


def test_slow_answers_in_a_row_are_a_stall_an_isolated_one_is_not():
    # Six answers over the bound in a row (a stall), then fast ones; later one slow straggler.
    ops = [op("submit", FAULT + i, latency=4.0 if i < 6 or i == 12 else 0.05) for i in range(18)]
    assert recovery_report(ops, FAULT, {}, bounds_s={})["rto_s"]["write"] == 0.0  # no bound
    r = recovery_report(ops, FAULT, {}, consecutive=5, bounds_s={"write": 2.0})
    # The first two waited through 3-4 s with no answer (a stall); from the third on, each
    # saw answers at most 2 s apart while it waited (slow, not stalled): recovery counts from
    # the earliest answer among the five after the last stalled one (the third's, at 6.0).
    assert r["rto_s"]["write"] == 6.0
    assert r["slow_after_fault"]["write"] == 7
    # A slow one while the others were answered is the latency's tail, not downtime.
    tail = [op("submit", FAULT + i / 4, latency=4.0 if i == 12 else 0.05) for i in range(40)]
    assert recovery_report(tail, FAULT, {}, bounds_s={"write": 2.0})["rto_s"]["write"] == 0.0


def test_the_bounds_are_the_paths_latency_objectives():
    from experiments.activities.measure.probes import latency_bounds_s

    # submit-latency-p99 (1000 ms) for writes and reads, time-to-result-p99 (5000 ms).
    assert latency_bounds_s() == {"write": 1.0, "read": 1.0, "notification": 5.0}


def test_slow_answers_while_others_flow_are_degradation_not_downtime():
    """A loaded machine: submits take 1.5 s, over the 1 s bound, before and after the fault,
    but answers keep coming: no stall. Answers held 4 s while none came are one."""
    before = [op("submit", FAULT - 12.5 + i * 0.5, latency=1.5) for i in range(25)]
    same = [op("submit", FAULT + i * 0.5, latency=1.5) for i in range(20)]
    r = recovery_report(before + same, FAULT, {}, bounds_s={"write": 1.0})
    assert r["rto_s"]["write"] == 0.0
    assert r["slow_after_fault"]["write"] == 20
    # How quiet a stall must be, within an answer's own wait: the bound.
    assert (r["bound_s"]["write"], r["stall_quiet_s"]["write"]) == (1.0, 1.0)
    worse = [op("submit", FAULT + i * 0.5, latency=4.0 if i < 10 else 1.5) for i in range(20)]
    r = recovery_report(before + worse, FAULT, {}, bounds_s={"write": 1.0})
    assert r["rto_s"]["write"] == 6.5  # the first answer after those that waited through it


def test_a_2_5_s_stall_in_a_small_fleet_is_downtime():
    """From the outside review: a small fleet (an answer every 1.3 s before the fault) and a
    2.5 s write stall. The old rule needed a silence of twice the ordinary pause (2.6 s) and
    said RTO 0; the writes that waited through the stall are bad."""
    fault = 1000.0
    ops, t, i = [], fault - 40.0, 0
    while t < fault - 0.5:
        ops.append(op("submit", t, latency=0.05))
        t, i = t + 1.3, i + 1
    ops += [op("submit", fault + d, latency=2.5 - d) for d in (0.2, 0.9, 1.6, 2.3)]
    t = fault + 2.6
    while t < fault + 20:
        ops.append(op("submit", t, latency=0.05))
        t += 0.3
    r = recovery_report(ops, fault, {}, bounds_s={"write": 1.0, "read": 1.0})
    assert r["longest_silence_s"]["write"] == 2.5
    assert r["slow_after_fault"]["write"] == 2
    assert r["rto_s"]["write"] >= 2.5, r


def _read(wall: float, outcome: str = "ok", rid: str = "r", error: str | None = None) -> Operation:
    return Operation(
        f"read{wall}{rid}", "read", 5.0, 5.05, wall, outcome, None, error, {"request_id": rid}
    )


def test_reads_answered_404_for_lost_requests_are_the_rpos_not_the_read_paths_downtime():
    reads = [_read(FAULT + i, "fail", error="503") for i in range(3)]  # the outage
    reads += [_read(FAULT + 3 + i) for i in range(5)]  # recovered at +3.05
    reads += [_read(FAULT + 20, "fail", rid="gone", error="404")]  # a lost request asked for
    rec = {"lost": 1, "lost_request_ids": ["gone"], "lost_acked_walls": [FAULT - 1]}
    r = recovery_report(reads, FAULT, rec, consecutive=5)
    assert r["rto_s"]["read"] == 3.05
    assert r["reads_of_lost"] == 1
    # A 404 for a request the system still holds is a failure of the read path.
    r = recovery_report(
        [*reads, _read(FAULT + 21, "fail", rid="kept", error="404")], FAULT, rec, consecutive=5
    )
    assert r["recovered"]["read"] is False
