"""The point-in-time restore's checker: from the ledger, row by row, did the restore bring back
exactly what it should? Pure: data in, verdict out.

Acknowledged requests fall in four windows around the mistake (`began` .. `committed`) and the
restore (the cluster replaced at `replaced`, serving again at `restored`):
- before: acknowledged before the mistake began: must all be back;
- during: acknowledged while the mistake ran: either is correct (it raced the mistake);
- window: acknowledged after the mistake committed and before the cluster was replaced: must
  all be gone (recovery stopped before the mistake, so before them: the restore's data loss,
  which the RPO reports);
- after: acknowledged once the restored cluster served: must all be kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def pitr_check(
    acked_walls: Mapping[str, float],
    present: Iterable[str],
    began: float,
    committed: float,
    replaced: float,
    restored: float,
) -> dict[str, Any]:
    """Counts per window, what is wrong in each (ids, the first 10), and `wrong`: their total.

    Args:
        acked_walls: request id -> when its acknowledgement arrived (epoch s).
        present: the ids the restored database holds.
        began, committed: when the mistake's transaction began and committed.
        replaced, restored: when the cluster was replaced, and when the restored one served.
    """
    have = set(present)
    windows: dict[str, list[str]] = {"before": [], "during": [], "window": [], "after": []}
    for rid, at in acked_walls.items():
        if at < began:
            windows["before"].append(rid)
        elif at <= committed:
            windows["during"].append(rid)
        elif at < replaced:
            windows["window"].append(rid)
        elif at >= restored:
            windows["after"].append(rid)
    missing_before = sorted(r for r in windows["before"] if r not in have)
    present_window = sorted(r for r in windows["window"] if r in have)
    missing_after = sorted(r for r in windows["after"] if r not in have)
    return {
        **{k: len(v) for k, v in windows.items()},
        "during_present": sum(1 for r in windows["during"] if r in have),
        "missing_before": len(missing_before),
        "present_window": len(present_window),
        "missing_after": len(missing_after),
        "wrong": len(missing_before) + len(present_window) + len(missing_after),
        "wrong_ids": (missing_before + present_window + missing_after)[:10],
    }
