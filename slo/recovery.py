"""Recovery checkers: RTO and RPO from the operation ledger. Pure functions, data in, verdict out.

Definitions (ARCHITECTURE.md):
- RTO, per path: from the fault's injection to the first of N consecutive operations after the
  last bad one, bad meaning failed or stalled (answered later than the path's latency bound,
  having waited while the path answered nobody): a stall is downtime, not availability.
- The longest silence, per path: the longest window after the fault in which no operation of
  the path completed at all (what `chaos.png` shows as a gap).
- RPO: acknowledged writes reconciled against what the system holds after recovery. Lost means
  acknowledged (`ok`) and now missing; RPO in seconds is the fault time minus the earliest
  acknowledgement among lost writes (0 when none is lost). `info` writes are reported apart:
  they may or may not have happened, and either is correct.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from itertools import pairwise
from typing import Any

from slo.ledger import Operation


def good(op: Operation, bound_s: float | None = None) -> bool:
    """`ok`, and answered within `bound_s` seconds when a bound is given."""
    return op.outcome == "ok" and (bound_s is None or op.latency_s <= bound_s)


def rto_s(
    ops: Sequence[Operation],
    fault_s: float,
    consecutive: int = 3,
    kind: str | None = None,
    bound_s: float | None = None,
    quiet_s: float | None = None,
) -> float | None:
    """Seconds from `fault_s` (monotonic) to recovery, or None if not recovered in the ledger.

    Among operations invoked after the fault, in invocation order, an operation is bad when it
    failed, or when it waited out a stall (`stalled`: answered later than `bound_s`, and while
    it waited the path answered nobody for longer than `quiet_s`, `bound_s` when not given):
    waiting is as bad as failing. A slow answer while others flowed is degradation, for the
    latency objectives to judge, not downtime. Recovery is the first of `consecutive`
    operations in a row *after the last bad one*, at the earliest answer among them: good ones
    that precede a delayed disruption (a client still talking to a dying primary until the load
    balancer notices) are not recovery. 0 when no operation after the fault was bad and at
    least `consecutive` were invoked.

    Only operations of `kind` count when it is given.
    """
    if consecutive < 1:
        raise ValueError("consecutive must be >= 1")
    mine = [o for o in ops if kind is None or o.kind == kind]
    after = sorted((o for o in mine if o.invoked_s >= fault_s), key=lambda o: o.invoked_s)
    answered = sorted(o.completed_s for o in mine)
    quiet = quiet_s if quiet_s is not None else bound_s
    bad = [
        i for i, o in enumerate(after) if o.outcome != "ok" or stalled(o, bound_s, answered, quiet)
    ]
    if not bad:
        return 0.0 if len(after) >= consecutive else None
    tail = after[bad[-1] + 1 :]
    if len(tail) < consecutive:
        return None
    return max(0.0, min(o.completed_s for o in tail[:consecutive]) - fault_s)


def longest_wait_unanswered(op: Operation, answered: Sequence[float]) -> float:
    """The longest stretch of `op`'s own wait in which the path answered nobody else:
    `answered` are the path's completion times, sorted (`op`'s own among them or not)."""
    inside = answered[bisect_right(answered, op.invoked_s) : bisect_left(answered, op.completed_s)]
    edges = [op.invoked_s, *inside, op.completed_s]
    return max(b - a for a, b in pairwise(edges))


def stalled(
    op: Operation, bound_s: float | None, answered: Sequence[float], quiet_s: float | None = None
) -> bool:
    """`op` was answered `ok` but later than `bound_s`, and during its own wait the path
    answered nobody for longer than `quiet_s` (`bound_s` when not given): it waited out a
    stall. Judged on the operation's own wait alone: a pause of a small fleet in which nobody
    asked is nobody's wait, and a slow answer while others were answered is degradation."""
    if bound_s is None or op.outcome != "ok" or op.latency_s <= bound_s:
        return False
    quiet = bound_s if quiet_s is None else quiet_s
    return longest_wait_unanswered(op, answered) > quiet


def reconcile_writes(
    ops: Iterable[Operation], present: Iterable[str], fault_wall: float | None = None
) -> dict[str, Any]:
    """Compare acknowledged writes with the ids the system holds after recovery.

    Args:
        ops: write operations from the ledger.
        present: ids found in the system when read back after recovery.
        fault_wall: wall-clock time of the fault (epoch seconds), for the RPO in seconds.

    Returns:
        `valid` (nothing acknowledged was lost), counts of acknowledged, lost, info and
        info-present writes, the lost ids (first 20), and `rpo_s`.
    """
    ops = list(ops)
    have = set(present)
    acked = [o for o in ops if o.outcome == "ok"]
    lost = [o for o in acked if o.op_id not in have]
    info = [o for o in ops if o.outcome == "info"]
    rpo = 0.0
    if lost and fault_wall is not None:
        rpo = max(0.0, fault_wall - min(o.invoked_wall for o in lost))
    return {
        "valid": not lost,
        "acknowledged": len(acked),
        "lost": len(lost),
        "lost_ids": [o.op_id for o in lost[:20]],
        "info": len(info),
        "info_present": sum(1 for o in info if o.op_id in have),
        "failed": sum(1 for o in ops if o.outcome == "fail"),
        "rpo_s": rpo,
    }


#: The paths a phone depends on, and the ledger kinds each is made of.
PATH_KINDS = {"write": ("submit",), "read": ("read", "sync")}


def _on_wall_clock(op: Operation) -> Operation:
    """The operation with wall-clock times in its monotonic fields: ledgers of several processes
    (Locust workers) compare only on the wall clock."""
    return replace(op, invoked_s=op.invoked_wall, completed_s=op.invoked_wall + op.latency_s)


def path_ops(ops: Iterable[Operation], ttr_bound_s: float = 5.0) -> dict[str, list[Operation]]:
    """The ledger split by path, on the wall clock.

    write: submits (resubmits too: they run the same insert); read: reads and syncs;
    notification: one entry per result that reached a phone, from its acknowledgement to its
    arrival, `ok` when it came within `ttr_bound_s` (by socket, or by a sync that happened to
    ask first) and `fail` when it came later; a result that waited for a phone gone offline
    meanwhile is left out (the phone, not the system, was unreachable).
    """
    out: dict[str, list[Operation]] = {"write": [], "read": [], "notification": []}
    for op in ops:
        for path, kinds in PATH_KINDS.items():
            if op.kind in kinds:
                out[path].append(_on_wall_clock(op))
        if op.kind == "time_to_result" and not (op.detail or {}).get("phone_offline"):
            in_time = op.latency_s <= ttr_bound_s
            out["notification"].append(
                replace(_on_wall_clock(op), outcome="ok" if in_time else "fail")
            )
    return out


def recovered_at(
    ops: Iterable[Operation],
    since: float,
    consecutive: int = 5,
    ttr_bound_s: float = 5.0,
    bounds_s: Mapping[str, float] | None = None,
) -> float | None:
    """The wall time from which every path in use has recovered from what happened at `since`
    (wall clock): the latest of their recoveries as `rto_s` finds them, or None while one has
    not, or has had fewer than `consecutive` operations since. A path in use had operations
    before `since`. Judged as `recovery_report` judges (`bounds_s` per path, the notification
    path by `ttr_bound_s`); asked again as the ledger grows, a later failure moves it on. A
    read answered 404 is an answer (what `read_of_lost` leaves out once the losses are known:
    a run that lost data would otherwise never count as recovered before its end)."""
    bounds = {**(bounds_s or {}), "notification": ttr_bound_s}
    answered = [o for o in ops if not (o.kind == "read" and o.error == "404")]
    latest = None
    for path, mine in path_ops(answered, ttr_bound_s).items():
        if not any(o.invoked_s < since for o in mine):
            continue
        value = rto_s(mine, since, consecutive, bound_s=bounds.get(path))
        if value is None:
            return None
        latest = max(latest or 0.0, since + value)
    return latest


def longest_silence(ops: Iterable[Operation], since: float) -> dict[str, float] | None:
    """The longest window from `since` on in which none of `ops` completed (whatever its
    outcome): {"s", "from", "to"}, or None when none completed after `since`. The window from
    `since` to the first completion counts: a stall that begins with the fault shows whole."""
    done = sorted(o.completed_s for o in ops if o.completed_s >= since)
    if not done:
        return None
    edges = [since, *done]
    gap, start = max((b - a, a) for a, b in pairwise(edges))
    return {"s": round(gap, 3), "from": start, "to": start + gap}


#: How late a phone may record an acknowledgement that the system sent before the fault: the
#: phone timestamps the answer when its (loaded) process reads it.
ACK_CLOCK_SLACK_S = 0.5


def rpo_s(
    lost_acked: Iterable[float],
    events: Iterable[float],
    end: float,
    fault_wall: float | None = None,
) -> float:
    """The window of acknowledged data lost: for each lost request, from its acknowledgement
    to the first fault event (injection or restoration) at or after it, the run's `end` when
    none; the largest. With every loss acknowledged before a single fault this is the
    ARCHITECTURE's "fault time minus the oldest lost acknowledgement"; after a cascade, a
    request acknowledged by an interim primary and lost with it counts too, not as 0.

    A loss recorded as acknowledged less than `ACK_CLOCK_SLACK_S` after `fault_wall` (the
    first injection) was acknowledged as the fault struck: 0, not the time to the next event
    (a recovery tens of seconds later)."""
    marks = sorted(events)
    worst = 0.0
    for acked in lost_acked:
        if fault_wall is not None and fault_wall <= acked < fault_wall + ACK_CLOCK_SLACK_S:
            continue
        nxt = next((m for m in marks if m >= acked), end)
        worst = max(worst, nxt - acked)
    return worst


def read_of_lost(op: Operation, gone: set[str]) -> bool:
    """A read the system answered 404 for a request it lost: an answer (the service was up),
    and a loss the RPO already counts, so not the read path's downtime. Without this, the read
    path of a run that lost data would "recover" only once every phone had asked for each of
    its lost requests."""
    return op.kind == "read" and op.error == "404" and (op.detail or {}).get("request_id") in gone


def recovery_report(
    ops: Sequence[Operation],
    fault_wall: float,
    reconciliation: dict[str, Any],
    consecutive: int = 5,
    ttr_bound_s: float = 5.0,
    events: Sequence[float] = (),
    bounds_s: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """RTO per path and RPO of one fault, as `chaos.json` records them (the SLO gate reads
    `rto_s.max` and `rpo_s.max`).

    `bounds_s`: path -> the latency bound of a good write or read (the path's latency
    objective, or the experiment's); a path without one counts every `ok` as good. An answer
    later than the bound is bad when, during its own wait, the path answered nobody for longer
    than the bound (`stalled`): it waited out a stall. (A pause of a small fleet in which
    nobody asked is nobody's wait, so no baseline of ordinary pauses is needed.) The
    notification path is judged by `ttr_bound_s` (`path_ops`). A path with fewer than
    `consecutive` operations after the fault has no RTO (no data). A path that had them but
    never recovered gets, as RTO, the time it was observed after the fault (a lower bound) and
    counts in `unrecovered_paths`: never a pass by omission. Beside RTO: per path, the longest
    window after the fault with no operation completed (`longest_silence`), and the operations
    that were `ok` but over the bound (`slow_after_fault`).
    RPO (`rpo_s` above, over `events`, the fault journal's times; the fault alone when not
    given) is 0 when nothing acknowledged was lost; lost, duplicated, never-notified and
    unknown counts come with it.
    """
    gone = set(reconciliation.get("lost_request_ids", ()))
    lost_reads = [o for o in ops if read_of_lost(o, gone)]
    by_path = path_ops([o for o in ops if not read_of_lost(o, gone)], ttr_bound_s)
    bounds: dict[str, float | None] = {p: b for p, b in (bounds_s or {}).items() if p in by_path}
    bounds["notification"] = ttr_bound_s
    quiet = {p: b for p, b in bounds.items() if b is not None}
    rto: dict[str, float | None] = {}
    recovered: dict[str, bool | None] = {}
    for path, path_ops_ in by_path.items():
        after = [o for o in path_ops_ if o.invoked_s >= fault_wall]
        value = rto_s(
            path_ops_,
            fault_wall,
            consecutive=consecutive,
            bound_s=bounds.get(path),
            quiet_s=quiet.get(path),
        )
        if value is not None:
            rto[path], recovered[path] = round(value, 3), True
        elif len(after) >= consecutive:
            rto[path] = round(max(o.completed_s for o in after) - fault_wall, 3)
            recovered[path] = False
        else:
            rto[path], recovered[path] = None, None
    measured = [v for v in rto.values() if v is not None]
    lost_acked = reconciliation.get("lost_acked_walls", [])
    end = max((o.completed_s for p in by_path.values() for o in p), default=fault_wall)
    rpo = rpo_s(lost_acked, [fault_wall, *events], end, fault_wall)
    after_fault = {p: [o for o in v if o.invoked_s >= fault_wall] for p, v in by_path.items()}
    silences = {p: longest_silence(v, fault_wall) for p, v in by_path.items()}
    return {
        "fault_wall": fault_wall,
        "consecutive": consecutive,
        "bound_s": {p: bounds.get(p) for p in by_path},
        "stall_quiet_s": {p: quiet.get(p) for p in by_path},
        "rto_s": {**rto, "max": max(measured) if measured else None},
        "recovered": recovered,
        "unrecovered_paths": sum(1 for v in recovered.values() if v is False),
        "longest_silence": silences,
        "longest_silence_s": {p: v["s"] if v else None for p, v in silences.items()},
        "rpo_s": {"write": round(rpo, 3), "max": round(rpo, 3)},
        "lost": reconciliation.get("lost", 0),
        "lost_ids": reconciliation.get("lost_ids", []),
        "duplicated": reconciliation.get("duplicated", 0),
        "never_notified": reconciliation.get("never_notified", 0),
        "unknown": reconciliation.get("unknown", 0),
        "info": reconciliation.get("info_submits", 0),
        "acknowledged": reconciliation.get("acknowledged", 0),
        "reads_of_lost": len(lost_reads),
        "not_ok_after_fault": {
            p: sum(1 for o in v if o.outcome != "ok") for p, v in after_fault.items()
        },
        "slow_after_fault": {
            p: sum(1 for o in v if o.outcome == "ok" and not good(o, bounds.get(p)))
            for p, v in after_fault.items()
        },
    }
