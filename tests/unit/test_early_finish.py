"""When `stop_fleet` asks a chaos fleet to finish (`_finish_when_recovered`): once every path has
held its recovery and no result is owed, or, whatever is owed, once `owed_for_s` has passed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from env.settings import EnvSettings
from experiments.activities.fleet.actions import _finish_when_recovered
from experiments.settings import ChaosSettings
from slo.ledger import Operation, write_jsonl

#: Seconds before now: the fault, and the one request whose result never comes.
FAULT_AGO, OWED_ACKED_AGO = 100.0, 90.0


def chaos_run(tmp_path: Path, owed: bool) -> ChaosSettings:
    """A chaos run folder as a fleet leaves it mid-run: the fault journal, and the phones'
    ledger with a submit a second since before the fault, each notified half a second later
    (but one, when `owed`)."""
    now = time.time()
    s = ChaosSettings(env=EnvSettings(run_dir=tmp_path / "env"), run_dir=tmp_path / "run")
    (s.run_dir / "fleet").mkdir(parents=True)
    (s.run_dir / "faults.jsonl").write_text(
        json.dumps({"event": "inject", "fault": "f", "wall": now - FAULT_AGO}) + "\n"
    )
    ops = []
    for i in range(110):
        wall = now - 110 + i
        rid = f"r{i}"
        detail = {"request_id": rid, "device_id": "d", "key": f"k{i}"}
        ops.append(Operation(f"s{i}", "submit", wall, wall + 0.05, wall, "ok", detail=detail))
        if owed and abs(wall - (now - OWED_ACKED_AGO)) < 0.5:
            continue
        note = {"request_id": rid, "event_id": i, "via": "socket"}
        ops.append(
            Operation(
                f"n{i}", "notification", wall + 0.5, wall + 0.5, wall + 0.5, "ok", detail=note
            )
        )
    write_jsonl(s.run_dir / "fleet" / "ledger-1.jsonl", ops)
    return s


def finish(s: ChaosSettings) -> dict | None:
    path = s.run_dir / "fleet" / "finish"
    return json.loads(path.read_text()) if path.exists() else None


def test_nothing_owed_finishes_once_recovery_has_held(tmp_path: Path) -> None:
    s = chaos_run(tmp_path, owed=False)
    _finish_when_recovered(s, os.getpid(), 15, 5, 60, time.monotonic() + 10)
    asked = finish(s)
    assert asked is not None
    assert "and no result was owed" in asked["reason"]


def test_an_owed_result_holds_the_finish_until_owed_for_s_has_passed(tmp_path: Path) -> None:
    s = chaos_run(tmp_path, owed=True)
    # Recovered 100 s ago (no write failed after the fault); owed for up to 200 s: not yet.
    started = time.monotonic()
    _finish_when_recovered(s, os.getpid(), 15, 5, 200, started + 1.5)
    assert finish(s) is None
    assert time.monotonic() - started >= 1.5  # it waited for its deadline, asking nothing
    # Owed for up to 60 s, and the recovery is 100 s old: finished, the owed result said.
    _finish_when_recovered(s, os.getpid(), 15, 5, 60, time.monotonic() + 10)
    asked = finish(s)
    assert asked is not None
    assert "1 result(s) still owed, left to the read-back" in asked["reason"]
