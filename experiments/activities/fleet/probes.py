"""The fleet's view while it runs: its live ledger (each Locust process appends every second)."""

from __future__ import annotations

import json
import time
from typing import Any

from experiments import harness
from slo.ledger import Operation, read_jsonl


def ledger_ops() -> list[Operation]:
    """Every operation so far: the merged ledger once the fleet finished, else the live files
    (a line being written at this instant is skipped)."""
    out = harness.run_dir()
    if (out / "ledger.jsonl").exists():
        return read_jsonl(out / "ledger.jsonl")
    ops = []
    for path in sorted((out / "fleet").glob("ledger-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                ops.append(Operation(**json.loads(line)))
            except (ValueError, TypeError):
                continue
    return ops


def failed_share(window_s: float = 10.0, now: float | None = None) -> dict[str, Any]:
    """Share of the phones' submits, reads and syncs in the last `window_s` seconds that did
    not succeed: how badly users are hurt right now."""
    now = time.time() if now is None else now
    recent = [
        o
        for o in ledger_ops()
        if o.kind in ("submit", "read", "sync") and now - window_s <= o.invoked_wall <= now
    ]
    bad = sum(1 for o in recent if o.outcome != "ok")
    return {"operations": len(recent), "failed": bad, "share": bad / len(recent) if recent else 0.0}
