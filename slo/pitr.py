"""The point-in-time restore's checker: from the ledger, row by row, did the restore bring back
exactly what it should? Pure: data in, verdict out.

Acknowledged requests fall in windows around the mistake (`began` .. `committed`) and the
restore (the cluster replaced at `replaced`). An acknowledgement arrives a little after its
commit, so each edge has a grace of `GRACE_S` in which either outcome is correct:
- before: acknowledged before the mistake began: must all be back;
- during: acknowledged while the mistake ran or within the grace after it (it may have
  committed before the mistake): either;
- window: acknowledged after that and before the cluster was replaced: must all be gone
  (recovery stopped before the mistake, so before them: the restore's data loss, which the RPO
  reports);
- gap: acknowledged within the grace after the replacement (committed before it): either;
- after: acknowledged later, so by the restored cluster: must all be kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Seconds an acknowledgement may trail its commit (the submit's answer on its way back).
GRACE_S = 1.0


def pitr_check(
    acked_walls: Mapping[str, float],
    present: Iterable[str],
    began: float,
    committed: float,
    replaced: float,
) -> dict[str, Any]:
    """Counts per window, what is wrong in each (ids, the first 10), and `wrong`: their total.

    Args:
        acked_walls: request id -> when its acknowledgement arrived (epoch s).
        present: the ids the restored database holds.
        began, committed: when the mistake's transaction began and committed.
        replaced: when the cluster was replaced by the restore.
    """
    have = set(present)
    windows: dict[str, list[str]] = {k: [] for k in ("before", "during", "window", "gap", "after")}
    for rid, at in acked_walls.items():
        if at < began:
            windows["before"].append(rid)
        elif at < committed + GRACE_S:
            windows["during"].append(rid)
        elif at < replaced:
            windows["window"].append(rid)
        elif at < replaced + GRACE_S:
            windows["gap"].append(rid)
        else:
            windows["after"].append(rid)
    missing_before = sorted(r for r in windows["before"] if r not in have)
    present_window = sorted(r for r in windows["window"] if r in have)
    missing_after = sorted(r for r in windows["after"] if r not in have)
    return {
        **{k: len(v) for k, v in windows.items()},
        "during_present": sum(1 for r in windows["during"] if r in have),
        "gap_present": sum(1 for r in windows["gap"] if r in have),
        "missing_before": len(missing_before),
        "present_window": len(present_window),
        "missing_after": len(missing_after),
        "wrong": len(missing_before) + len(present_window) + len(missing_after),
        "wrong_ids": (missing_before + present_window + missing_after)[:10],
    }
