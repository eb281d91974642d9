"""The safety control's stop conditions, on a run folder written by hand."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from env.settings import EnvSettings
from experiments import harness
from experiments.controls.safety import Watcher
from experiments.settings import ChaosSettings
from reference_impl.knobs import Knobs
from slo.ledger import Operation


@pytest.fixture
def s(tmp_path: Path) -> ChaosSettings:
    (tmp_path / "env").mkdir()
    (tmp_path / "run" / "fleet").mkdir(parents=True)
    return ChaosSettings(env=EnvSettings(run_dir=tmp_path / "env"), run_dir=tmp_path / "run")


@pytest.fixture
def run(s: ChaosSettings) -> Path:
    return s.run_dir


def ledger(run: Path, outcomes: list[str], now: float, worker: int = 1) -> None:
    with open(run / "fleet" / f"ledger-{worker}.jsonl", "w") as f:
        for i, outcome in enumerate(outcomes):
            wall = now - 9 + i * 0.5
            op = Operation(f"op{i}", "submit", 0.0, 0.1, wall, outcome)  # type: ignore[arg-type]
            f.write(json.dumps(op.to_json()) + "\n")
        f.write('{"op_id": "half a li')  # a line being written right now: skipped


def test_nothing_wrong_nothing_stops(s: ChaosSettings, run: Path):
    ledger(run, ["ok"] * 10, time.time())
    assert Watcher(s, 0.9, 5, 300).check(None) == (None, None)


def test_the_stop_file_stops(s: ChaosSettings):
    harness.stop_file(s.env).write_text("now")
    reason, _ = Watcher(s, 0.9, 5, 300).check(None)
    assert reason is not None
    assert "cwh chaos stop" in reason


def test_users_hurt_for_too_long_stops_and_not_before(s: ChaosSettings, run: Path):
    now = time.time()
    ledger(run, ["fail"] * 9 + ["ok"], now)
    w = Watcher(s, 0.9, 5, 300)
    reason, since = w.check(None)
    assert reason is None  # hurt, but only since now
    assert since is not None
    reason, _ = w.check(since - 6)  # hurt for 6 s already, bound 5 s
    assert reason is not None
    assert "90%" in reason
    # Below the share, the clock resets (another worker's successes dilute it).
    ledger(run, ["fail"] * 5 + ["ok"] * 5, now, worker=2)
    assert w.check(now - 60) == (None, None)


def test_a_fault_held_too_long_stops(s: ChaosSettings):
    harness.mark(s, "inject", "toxic-x-y", proxy="x")
    with open(harness.faults_path(s), "a") as f:
        f.write(json.dumps({"event": "inject", "fault": "old", "wall": time.time() - 400}) + "\n")
    reason, _ = Watcher(s, 0.9, 5, 300).check(None)
    assert reason is not None
    assert "old" in reason
    harness.mark(s, "restore", "old")
    assert Watcher(s, 0.9, 5, 300).check(None)[0] is None


def test_the_restore_sends_the_knobs_whole_default_object():
    """A knob the restore leaves out would stay as the experiment set it."""
    assert Knobs().public() == harness.CLEAN_KNOBS
