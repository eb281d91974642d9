"""Reconciliation of a load run: what the phones were told against what the system holds.

Pure: the ledger and the read-back statuses in, counts out. Definitions (ARCHITECTURE.md):
- lost: a submit was acknowledged (`ok`), and the API now says its request is not there (a 404
  for its own device);
- unknown: acknowledged, and the read-back got no answer for it (5xx, timeout, connection
  error, 429 to the end, no token for its device): neither present nor lost;
- duplicated: one idempotency key acknowledged with two different request ids that the system
  still holds (a key whose request was lost, then created afresh by a retry, counts as lost);
- completed: the request reached `completed`;
- never notified: completed, but no notification for it reached the phone, by socket or sync,
  and its device's event log has none either (a result the phone stopped too early for, but
  whose event is there, was notified after the run).
`info` submits (outcome unknown) are counted apart: present or absent, both are correct.

The verdict: `fail` when anything was lost or duplicated, else `inconclusive` while unknowns
are left (never a pass: they may be lost), else `pass`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from slo.ledger import Operation

#: The exit code of each verdict, as the SLO gate's (0 pass, 1 fail, 2 inconclusive).
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}


def worst_exit(*codes: int) -> int:
    """One exit code from several verdicts': a failure wins, then inconclusive, then pass."""
    return 1 if 1 in codes else max(codes, default=0)


def submit_key(op: Operation) -> str:
    """A submit's idempotency key: in its detail (one entry per attempt), else its id."""
    return str((op.detail or {}).get("key", op.op_id))


def acknowledged(ops: Iterable[Operation]) -> dict[str, dict[str, Any]]:
    """request id -> {device_id, key, acked_wall} of every acknowledged submit; `acked_wall` is
    when the acknowledgement arrived (RPO's clock), on the wall clock."""
    out: dict[str, dict[str, Any]] = {}
    for op in ops:
        if op.kind == "submit" and op.outcome == "ok" and op.detail:
            out.setdefault(
                op.detail["request_id"],
                {
                    "device_id": op.detail["device_id"],
                    "key": submit_key(op),
                    "acked_wall": op.invoked_wall + op.latency_s,
                },
            )
    return out


def notified_ids(ops: Iterable[Operation]) -> set[str]:
    """The request ids whose result reached a phone during the run, by socket or sync."""
    return {
        op.detail["request_id"]
        for op in ops
        if op.kind == "notification" and op.outcome == "ok" and op.detail
    }


def awaiting_results(ops: Iterable[Operation], acked_before: float) -> list[str]:
    """Request ids acknowledged before `acked_before` (wall clock) whose result has not reached
    a phone yet: work the system still owes (a killed worker's job waits for its claim to
    expire). A request a read was answered 404 for is owed nothing more: the system says it
    does not have it (lost, for the reconciliation to count), and no result will come."""
    done = notified_ids(ops) | {
        op.detail["request_id"]
        for op in ops
        if op.kind == "read" and op.error == "404" and op.detail and "request_id" in op.detail
    }
    return [
        rid
        for rid, ack in acknowledged(ops).items()
        if ack["acked_wall"] < acked_before and rid not in done
    ]


def reconcile(
    ops: list[Operation],
    statuses: Mapping[str, str | None],
    events: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Args:
        ops: the merged ledger.
        statuses: request id -> status read back after the run (None: the API said it is not
            there); a request id left out could not be read back (unknown).
        events: what the devices' event logs said after the run, for completed requests no
            phone heard of: request id -> whether its event is there (True: notified after the
            phone stopped; False: never notified); left out: the log could not be read
            (unknown). None: no such catch-up, each of them is never notified.

    Returns `valid` (nothing lost, nothing duplicated), `verdict` and the counts.
    """
    acked = acknowledged(ops)
    ids_by_key: dict[str, set[str]] = defaultdict(set)
    for op in ops:
        if op.kind == "submit" and op.outcome == "ok" and op.detail:
            ids_by_key[submit_key(op)].add(op.detail["request_id"])
    duplicated = sorted(
        k for k, ids in ids_by_key.items() if sum(statuses.get(i) is not None for i in ids) > 1
    )
    notified = notified_ids(ops)
    lost = sorted(rid for rid in acked if rid in statuses and statuses[rid] is None)
    unknown = sorted(rid for rid in acked if rid not in statuses)
    completed = [rid for rid in acked if statuses.get(rid) == "completed"]
    unheard = [rid for rid in completed if rid not in notified]
    if events is None:
        events = dict.fromkeys(unheard, False)
    never_notified = sorted(rid for rid in unheard if events.get(rid) is False)
    by_status: dict[str, int] = defaultdict(int)
    for rid in acked:
        by_status["unknown" if rid not in statuses else statuses[rid] or "missing"] += 1
    valid = not lost and not duplicated
    return {
        "valid": valid,
        "verdict": "fail" if not valid else "inconclusive" if unknown else "pass",
        "acknowledged": len(acked),
        "lost": len(lost),
        "lost_ids": lost[:20],
        # Every one: the read path's RTO leaves out the reads the system answered 404 for them.
        "lost_request_ids": lost,
        "unknown": len(unknown),
        "unknown_ids": unknown[:20],
        "duplicated": len(duplicated),
        "duplicated_keys": duplicated[:20],
        "completed": len(completed),
        "never_notified": len(never_notified),
        "never_notified_ids": never_notified[:20],
        "notified_after_run": sum(1 for rid in unheard if events.get(rid) is True),
        "notification_unknown": sum(1 for rid in unheard if rid not in events),
        "info_submits": sum(1 for o in ops if o.kind == "submit" and o.outcome == "info"),
        # RPO's clock: when each lost request was acknowledged.
        "lost_acked_walls": sorted(acked[r]["acked_wall"] for r in lost),
        "by_status": dict(by_status),
    }
