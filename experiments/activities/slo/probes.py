"""SLO probes for steady-state hypotheses: the shipped SLO definitions, evaluated against the
environment's Prometheus over the last seconds."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from experiments import harness
from experiments.settings import ChaosSettings, Configuration
from slo.definitions import DEFAULT_DIR, load
from slo.gate import Context, evaluate
from slo.sources import Prometheus, RunData, Window

#: After recovery, seconds before the SLOs are expected to hold again (retries settle).
SETTLE_S = 3.0


def recovered_at(s: ChaosSettings) -> float | None:
    """When the run's faults were over: the last restoration, or the fault plus the measured
    RTO, whichever is later; None before any fault."""
    journal = harness.fault_journal(s)
    if not journal:
        return None
    ends: list[float] = [float(e["wall"]) for e in journal]
    chaos = s.run_dir / "chaos.json"
    if chaos.exists():
        measured = json.loads(chaos.read_text())
        if measured["rto_s"]["max"] is not None:
            ends.append(measured["fault_wall"] + measured["rto_s"]["max"])
    return max(ends)


def slo_verdicts(
    names: list[str],
    window_s: float = 30.0,
    after_recovery: bool = False,
    *,
    configuration: Configuration,
) -> dict[str, dict[str, Any]]:
    """name -> {status, measured, objective, reason} of the named SLOs over the last
    `window_s` seconds (Prometheus SLOs only: a run's own data exists only after the run).
    With `after_recovery`, the window starts no earlier than the faults' end (plus a few
    seconds): "holds again" is judged on what came after, not on the fault itself."""
    s = harness.settings_of(configuration)
    recovered = recovered_at(s) if after_recovery else None
    return evaluate_slos(harness.prometheus(s.env), names, window_s, recovered)


def evaluate_slos(
    prometheus: Prometheus, names: list[str], window_s: float, recovered: float | None = None
) -> dict[str, dict[str, Any]]:
    """`slo_verdicts` from `prometheus` (`experiments.harness.prometheus`: the runtime's), the
    faults over at `recovered` (wall clock; None: no fault)."""
    by_name = {s.name: s for s in load(DEFAULT_DIR)}
    if missing := sorted(set(names) - set(by_name)):
        raise ValueError(f"no such SLO: {', '.join(missing)} (see slo/definitions/)")
    now = time.time()
    start = now - window_s
    if recovered is not None:
        start = max(start, min(now - 1.0, recovered + SETTLE_S))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        slo = by_name[name]
        window = Window(start, now)
        if recovered is not None and slo.timeslice_s:
            # Whole slices only, and none that began before the recovery: the gate widens a
            # window to whole slices, which would bring the fault back in.
            step = slo.timeslice_s
            first = math.ceil((recovered + SETTLE_S) / step) * step
            last = math.floor(now / step) * step
            if last <= first:
                out[name] = {
                    "status": "no_data",
                    "measured": None,
                    "objective": "",
                    "reason": f"no whole {step:g} s slice since the recovery yet",
                }
                continue
            window = Window(first, last)
        ctx = Context(window=window, prometheus=prometheus, run=RunData(None))
        v = evaluate(slo, ctx)
        out[name] = {
            "status": v.status,
            "measured": v.measured,
            "objective": v.objective,
            "reason": v.reason,
        }
    return out


def slos_hold(names: list[str], window_s: float = 30.0, *, configuration: Configuration) -> bool:
    """True when none of the named SLOs fails over the last `window_s` seconds, after the
    faults' end when there were faults ("no data", as before any traffic, is not a failure).
    Each evaluation is kept in the run folder."""
    verdicts = slo_verdicts(names, window_s, after_recovery=True, configuration=configuration)
    entry = {"wall": time.time(), "window_s": window_s, "verdicts": verdicts}
    run_dir = harness.run_dir(harness.settings_of(configuration))
    with open(run_dir / "slo-probes.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    return not any(v["status"] == "fail" for v in verdicts.values())
