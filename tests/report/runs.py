"""Run folders for the report's tests: real ones, recorded from `cwh chaos run` (kill-lb on the
lead's environment, kill-api on base port 22000 with its Prometheus answers saved), their
ledgers gzipped to keep the repository small."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: Nothing listens on the discard port: a Prometheus that cannot be reached, at once.
NO_PROMETHEUS = "http://127.0.0.1:9"


def run_folder(name: str, dest: Path) -> Path:
    """A copy of the recorded run `name` under `dest`, its ledger unpacked."""
    folder = dest / name
    shutil.copytree(FIXTURES / name, folder)
    packed = folder / "ledger.jsonl.gz"
    (folder / "ledger.jsonl").write_bytes(gzip.decompress(packed.read_bytes()))
    packed.unlink()
    return folder


def load(folder: Path, name: str) -> Any:
    return json.loads((folder / name).read_text())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def fault_pairs(folder: Path) -> list[tuple[str, float, float]]:
    """(fault, injected, restored) straight from faults.jsonl, each fault injected once."""
    events = lines(folder / "faults.jsonl")
    out = []
    for inject in (e for e in events if e["event"] == "inject"):
        restore = next(
            e for e in events if e["event"] == "restore" and e["fault"] == inject["fault"]
        )
        out.append((inject["fault"], inject["wall"], restore["wall"]))
    return out


def ledger_span(folder: Path) -> tuple[float, float]:
    """The earliest invocation and the latest completion in the ledger (wall clock)."""
    ops = lines(folder / "ledger.jsonl")
    first = min(o["invoked_wall"] for o in ops)
    last = max(o["invoked_wall"] + o["completed_s"] - o["invoked_s"] for o in ops)
    return first, last
