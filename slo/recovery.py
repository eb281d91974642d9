"""Recovery checkers: RTO and RPO from the operation ledger. Pure functions, data in, verdict out.

Definitions (ARCHITECTURE.md):
- RTO, per path: from the fault's injection to the first of N consecutive successes.
- RPO: acknowledged writes reconciled against what the system holds after recovery. Lost means
  acknowledged (`ok`) and now missing; RPO in seconds is the fault time minus the earliest
  acknowledgement among lost writes (0 when none is lost). `info` writes are reported apart:
  they may or may not have happened, and either is correct.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from slo.ledger import Operation


def rto_s(
    ops: Sequence[Operation],
    fault_s: float,
    consecutive: int = 3,
    kind: str | None = None,
) -> float | None:
    """Seconds from `fault_s` (monotonic) to recovery, or None if not recovered in the ledger.

    Recovery is the first of `consecutive` successes in a row *after the last failure* among
    operations invoked after the fault. Successes that precede a delayed disruption (a client
    still talking to a dying primary until the load balancer notices) are not recovery. 0 when no
    operation after the fault failed and at least `consecutive` succeeded.

    Only operations of `kind` count when it is given; they are taken in invocation order.
    """
    if consecutive < 1:
        raise ValueError("consecutive must be >= 1")
    after = sorted(
        (o for o in ops if o.invoked_s >= fault_s and (kind is None or o.kind == kind)),
        key=lambda o: o.invoked_s,
    )
    last_bad = max((i for i, o in enumerate(after) if o.outcome != "ok"), default=None)
    if last_bad is None:
        return 0.0 if len(after) >= consecutive else None
    tail = after[last_bad + 1 :]
    if len(tail) < consecutive:
        return None
    return max(0.0, tail[0].completed_s - fault_s)


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
