"""A planned game day as a user runs it: `cwh chaos gameday --plan`, Ctrl-C in the middle of a
trial (its rollbacks play, it stays to be run), then `--resume` runs what was left, and the day
ends with one folder, its trials, the resilience score and one report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from env.local import LocalEnvironment
from env.process import wait_until
from slo.reconcile import worst_exit
from tests.experiments.test_chaos import CWH, ROOT, assert_restored, child_env, injected, load
from tests.helpers import wait_healthy

pytestmark = pytest.mark.env

PLAN = """\
name: drill
fleet: {users: 8, duration: 60s}
repeats: 2
jitter: 3s
seed: 5
experiments: [kill-api]
"""


def _state(day: Path) -> dict:
    return json.loads((day / "gameday-state.json").read_text())


def _resume(
    local_env: LocalEnvironment, day: Path, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """`cwh chaos gameday --resume DAY` as a user runs it."""
    return subprocess.run(
        [CWH, "chaos", "gameday", "--resume", str(day)],
        cwd=ROOT,
        env=child_env(local_env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _faulted(reports: Path) -> bool:
    return any(injected(f.parent) for f in reports.glob("*-gameday-drill/*-chaos-*/faults.jsonl"))


def test_a_planned_game_day_interrupted_and_resumed(local_env: LocalEnvironment, tmp_path: Path):
    wait_healthy(local_env)
    plan, reports = tmp_path / "gameday.yaml", tmp_path / "reports"
    plan.write_text(PLAN)
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(
            [CWH, "chaos", "gameday", "--plan", str(plan), "--reports", str(reports)],
            cwd=ROOT,
            env=child_env(local_env),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_until(lambda: _faulted(reports) or proc.poll() is not None, 300, "a trial's fault")
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it to the group
        assert proc.wait(400) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (day,) = reports.glob("*-gameday-drill")
    trials = _state(day)["trials"]
    pending = [t for t in trials if t["status"] == "pending"]
    # The interrupted trial stays to be run; its rollbacks played and the system is whole.
    interrupted = pending[0]
    (attempt,) = interrupted["aborted"]  # kept, named, not counted
    journal = load(day / attempt, "journal.json")
    assert journal["status"] == "interrupted"
    assert all(r["status"] == "succeeded" for r in journal["rollbacks"])
    assert_restored(local_env)
    before = set(day.glob("*-chaos-*"))

    resumed = _resume(local_env, day, timeout_s=900)
    out = resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = _state(day)["trials"]
    assert [t["status"] for t in trials] == ["done", "done"], out
    # Exactly what was left ran, each into a folder of its own inside the day's.
    assert len(set(day.glob("*-chaos-*")) - before) == len(pending), out
    codes = [t["code"] for t in trials]
    assert resumed.returncode == worst_exit(*codes), out  # the whole day's, not the resume's
    doc = load(day, "gameday.json")
    assert [e["experiment"] for e in doc["experiments"]] == ["kill-api #1", "kill-api #2"]
    assert [e["code"] for e in doc["experiments"]] == codes
    assert doc["score"]["score"] == 100 * sum(c == 0 for c in codes) / 2
    assert doc["pending"] == 0
    assert (day / "report.html").stat().st_size > 0
    assert "Resilience score" in (day / "gameday.md").read_text()
    assert_restored(local_env)
    # Nothing left to resume.
    again = _resume(local_env, day, timeout_s=60)
    assert again.returncode == 0
    assert "nothing to resume" in again.stdout + again.stderr
