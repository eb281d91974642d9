"""RTO per path and RPO, from the fleet's ledger and reconciliation: the numbers of a chaos run.

Called as the method's last probe (its output goes to the journal); it also writes `chaos.json`
into the run folder, where the SLO gate's `rto` and `rpo` objectives read it.
"""

from __future__ import annotations

import json
from typing import Any

from experiments import harness
from experiments.activities.fleet.probes import ledger_ops
from slo.recovery import recovery_report


def recovery(consecutive: int = 5, ttr_bound_s: float = 5.0) -> dict[str, Any]:
    """RTO per path (write, read, notification) from the first fault's injection to the first
    of `consecutive` successes in a row, and RPO from the reconciliation of every acknowledged
    request. Requires the fleet to have finished (`stop_fleet`)."""
    out = harness.run_dir()
    injected = [e for e in harness.fault_journal() if e["event"] == "inject"]
    if not injected:
        raise RuntimeError("no fault was injected: nothing to measure")
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"no fleet summary in {out}: did the fleet run and stop?")
    summary = json.loads(summary_path.read_text())
    report = recovery_report(
        ledger_ops(),
        injected[0]["wall"],
        summary["reconciliation"],
        consecutive=consecutive,
        ttr_bound_s=ttr_bound_s,
        events=[e["wall"] for e in harness.fault_journal()],
    )
    report["faults"] = harness.fault_journal()
    (out / "chaos.json").write_text(json.dumps(report, indent=2))
    return report
