"""RTO per path and RPO, from the fleet's ledger and reconciliation: the numbers of a chaos run.

Called as the method's last probe (its output goes to the journal); it also writes `chaos.json`
into the run folder, where the SLO gate's `rto` and `rpo` objectives read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments import harness
from experiments.activities.fleet.probes import ledger_ops
from experiments.settings import Configuration
from slo.definitions import DEFAULT_DIR, load
from slo.ledger import write_atomic
from slo.recovery import recovery_report

#: The latency objective that bounds a good operation of each path (`slo/definitions`). Reads
#: have no objective of their own: they are held to the submits' (a read is no more work).
BOUND_SLOS = {"write": "submit-latency-p99", "notification": "time-to-result-p99"}
#: Seconds, when a definition is missing.
DEFAULT_BOUNDS_S = {"write": 1.0, "notification": 5.0}
UNIT_S = {"ms": 0.001, "s": 1.0}


def latency_bounds_s(definitions: Path = DEFAULT_DIR) -> dict[str, float]:
    """path -> seconds: how fast an operation of the path must be answered to count as good
    for RTO, from the paths' latency objectives."""
    slos = {s.name: s for s in load(definitions)}
    out = dict(DEFAULT_BOUNDS_S)
    for path, name in BOUND_SLOS.items():
        slo = slos.get(name)
        if slo is not None and slo.value is not None and slo.unit in UNIT_S:
            out[path] = slo.value * UNIT_S[slo.unit]
    out["read"] = out["write"]
    return out


def recovery(
    consecutive: int = 5,
    ttr_bound_s: float = 0,
    write_bound_s: float = 0,
    read_bound_s: float = 0,
    *,
    configuration: Configuration,
) -> dict[str, Any]:
    """RTO per path (write, read, notification) from the first fault's injection to the first
    of `consecutive` good operations in a row, and RPO from the reconciliation of every
    acknowledged request. Requires the fleet to have finished (`stop_fleet`).

    A good operation succeeded within its path's bound, in seconds: `write_bound_s`,
    `read_bound_s` and `ttr_bound_s` (time to result) when an experiment gives them (> 0), else
    the paths' latency objectives (`latency_bounds_s`). A stall is downtime."""
    s = harness.settings_of(configuration)
    out = s.run_dir
    journal = harness.fault_journal(s)
    injected = [e for e in journal if e["event"] == "inject"]
    if not injected:
        raise RuntimeError("no fault was injected: nothing to measure")
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"no fleet summary in {out}: did the fleet run and stop?")
    summary = json.loads(summary_path.read_text())
    given = {"write": write_bound_s, "read": read_bound_s, "notification": ttr_bound_s}
    bounds = {p: given[p] or v for p, v in latency_bounds_s().items()}
    report = recovery_report(
        ledger_ops(s),
        injected[0]["wall"],
        summary["reconciliation"],
        consecutive=consecutive,
        ttr_bound_s=bounds.pop("notification"),
        events=[e["wall"] for e in journal],
        bounds_s=bounds,
    )
    report["faults"] = journal
    write_atomic(out / "chaos.json", json.dumps(report, indent=2))
    return report
