"""SLO probes for steady-state hypotheses: the shipped SLO definitions, evaluated against the
environment's Prometheus over the last seconds."""

from __future__ import annotations

import json
import time
from typing import Any

from experiments import harness
from slo.definitions import DEFAULT_DIR, load
from slo.gate import Context, evaluate
from slo.sources import Prometheus, RunData, Window


def slo_verdicts(names: list[str], window_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """name -> {status, measured, objective, reason} of the named SLOs over the last
    `window_s` seconds (Prometheus SLOs only: a run's own data exists only after the run)."""
    by_name = {s.name: s for s in load(DEFAULT_DIR)}
    if missing := sorted(set(names) - set(by_name)):
        raise ValueError(f"no such SLO: {', '.join(missing)} (see slo/definitions/)")
    prometheus = Prometheus(harness.environment().status()["urls"]["prometheus"])
    now = time.time()
    ctx = Context(window=Window(now - window_s, now), prometheus=prometheus, run=RunData(None))
    out = {}
    for name in names:
        v = evaluate(by_name[name], ctx)
        out[name] = {
            "status": v.status,
            "measured": v.measured,
            "objective": v.objective,
            "reason": v.reason,
        }
    return out


def slos_hold(names: list[str], window_s: float = 30.0) -> bool:
    """True when none of the named SLOs fails over the last `window_s` seconds ("no data", as
    before any traffic, is not a failure). Each evaluation is kept in the run folder."""
    verdicts = slo_verdicts(names, window_s)
    with open(harness.run_dir() / "slo-probes.jsonl", "a") as f:
        f.write(
            json.dumps({"wall": time.time(), "window_s": window_s, "verdicts": verdicts}) + "\n"
        )
    return not any(v["status"] == "fail" for v in verdicts.values())
