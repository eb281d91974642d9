"""The fleet's view while it runs: its live ledger (each Locust process appends every second)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from experiments.settings import ChaosSettings
from slo.ledger import Operation, read_jsonl


class LedgerTail:
    """The live ledger files of a fleet, read incrementally: each `read` parses only the lines
    appended since the previous one (a line being written is left for the next), so a guard
    polling every second does not re-read the whole run each time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.offsets: dict[Path, int] = {}

    def read(self) -> list[Operation]:
        ops = []
        for path in sorted(self.folder.glob("ledger-*.jsonl")):
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                try:
                    ops.append(Operation(**json.loads(line)))
                except (ValueError, TypeError):
                    continue
        return ops


def ledger_ops(s: ChaosSettings) -> list[Operation]:
    """Every operation so far: the merged ledger once the fleet finished, else the live files."""
    out = s.run_dir
    if (out / "ledger.jsonl").exists():
        return read_jsonl(out / "ledger.jsonl")
    return LedgerTail(out / "fleet").read()


def failed_share(ops: Iterable[Operation], window_s: float, now: float) -> dict[str, Any]:
    """Share of the phones' submits, reads and syncs in the `window_s` seconds before `now`
    that did not succeed: how badly users are hurt right now."""
    recent = [
        o
        for o in ops
        if o.kind in ("submit", "read", "sync") and now - window_s <= o.invoked_wall <= now
    ]
    bad = sum(1 for o in recent if o.outcome != "ok")
    return {"operations": len(recent), "failed": bad, "share": bad / len(recent) if recent else 0.0}
