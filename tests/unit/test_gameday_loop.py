"""The game day's loop (cwh.chaos.gameday) with its trials' outcomes scripted: the day's exit code
over every trial (resumed runs included), trials that could not start or were interrupted stay
pending, `cwh chaos stop` interrupts, an unhealthy system stops the day, one process per day."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cwh import chaos
from cwh.gameday import Day, Item, Plan, trials
from env.settings import EnvSettings

SETTINGS = EnvSettings(base_port=20000)  # nothing is started: the trials are scripted


class Script:
    """Outcomes in turn: an exit code, "refused" (no run folder), "interrupt" (Ctrl-C reached
    the experiment), "stopped" (cwh chaos stop), "unhealthy" (code 1, the system not whole)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes: Iterator[Any] = iter(outcomes)
        self.ran: list[str] = []

    def __call__(self, opts: chaos.ChaosOptions, console: Console, settings: EnvSettings):
        outcome = next(self.outcomes)
        self.ran.append(opts.experiment)
        if outcome == "refused":
            return 2, None
        n = len(list(opts.reports.glob("*-chaos-*"))) + 1  # as the day's folders accumulate
        out = opts.reports / f"{n:02d}-chaos-{opts.experiment}"
        out.mkdir()
        healthy = outcome != "unhealthy"
        (out / "restored-after.json").write_text(json.dumps({"healthy": healthy}))
        if outcome == "interrupt":
            chaos.INTERRUPTS.set()
            return 1, out
        if outcome == "stopped":
            reason = "stopped from outside (cwh chaos stop)"
            (out / "safety.json").write_text(json.dumps({"reason": reason}))
            return 1, out
        return (1 if outcome == "unhealthy" else outcome), out


def new_day(tmp_path: Path, *items: Item) -> Day:
    plan = Plan("t", items)
    day = Day(tmp_path, plan, trials(plan))
    day.save()
    return day


def play(day: Day, script: Script) -> int:
    return chaos.gameday(day, Console(quiet=True), SETTINGS, script)


def states(tmp_path: Path) -> list[tuple[str, Any]]:
    return [(t.status, t.code) for t in Day.load(tmp_path).trials]


def test_a_failure_wins_over_an_inconclusive_trial(tmp_path: Path) -> None:
    day = new_day(tmp_path, Item("kill-api"), Item("kill-lb"))
    assert play(day, Script(1, 2)) == 1
    doc = json.loads((tmp_path / "gameday.json").read_text())
    assert doc["score"]["score"] == 0.0
    assert doc["score"]["coverage"] == 1.0


def test_a_resumed_day_remembers_the_trials_it_ran_before(tmp_path: Path) -> None:
    day = new_day(tmp_path, Item("kill-api", repeats=2))
    script = Script(1, "interrupt")
    assert play(day, script) == chaos.INTERRUPTED_EXIT
    assert states(tmp_path) == [("done", 1), ("pending", None)]
    # The interrupted attempt's folder is kept and named, but not counted.
    assert Day.load(tmp_path).trials[1].aborted == ["02-chaos-kill-api"]
    resumed = Script(0)
    assert play(Day.load(tmp_path), resumed) == 1  # the first run's failure still counts
    assert resumed.ran == ["kill-api"]
    assert states(tmp_path) == [("done", 1), ("done", 0)]


def test_a_trial_that_could_not_start_stays_pending(tmp_path: Path) -> None:
    day = new_day(tmp_path, Item("kill-api"), Item("kill-lb"), Item("kill-worker"))
    assert play(day, Script(0, "refused")) == 2  # trials left: not a pass
    assert states(tmp_path) == [("done", 0), ("pending", None), ("pending", None)]
    doc = json.loads((tmp_path / "gameday.json").read_text())
    assert (doc["pending"], doc["score"]["trials_run"], doc["score"]["trials_planned"]) == (2, 1, 3)
    resumed = Script(0, 0)
    assert play(Day.load(tmp_path), resumed) == 0
    assert resumed.ran == ["kill-lb", "kill-worker"]


def test_cwh_chaos_stop_interrupts_the_day(tmp_path: Path) -> None:
    day = new_day(tmp_path, Item("kill-api"), Item("kill-lb"))
    script = Script("stopped")
    assert play(day, script) == chaos.INTERRUPTED_EXIT
    assert script.ran == ["kill-api"]  # the next trial did not start
    assert states(tmp_path) == [("pending", None), ("pending", None)]


def test_an_unhealthy_system_stops_the_day_with_the_trial_counted(tmp_path: Path) -> None:
    day = new_day(tmp_path, Item("kill-api"), Item("kill-lb"))
    script = Script("unhealthy")
    assert play(day, script) == 1
    assert script.ran == ["kill-api"]
    assert states(tmp_path) == [("done", 1), ("pending", None)]


def test_one_process_at_a_time_runs_a_day(tmp_path: Path) -> None:
    day = new_day(tmp_path, Item("kill-api"))

    def nested(opts: chaos.ChaosOptions, console: Console, settings: EnvSettings):
        # A second cwh resuming the same folder while this one runs a trial.
        with pytest.raises(chaos.DayBusy):
            chaos.gameday(Day.load(tmp_path), console, settings, Script(0))
        return Script(0)(opts, console, settings)

    assert chaos.gameday(day, Console(quiet=True), SETTINGS, nested) == 0
