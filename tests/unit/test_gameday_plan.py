"""Game-day plans (cwh/gameday.py): what a plan may say, the errors that name the file and line,
the trials' order and pauses, the resilience score, and the state a resumed day reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from cwh.gameday import (
    DONE,
    Day,
    Item,
    Plan,
    PlanError,
    load_plan,
    score,
    trials,
)

KNOWN = ["kill-api", "kill-lb", "pg-kill-primary"]
SHAPES = ["steady", "storm"]


def plan_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gameday.yaml"
    path.write_text(text)
    return path


def test_a_full_plan_reads_as_written(tmp_path: Path) -> None:
    path = plan_file(
        tmp_path,
        "name: weekly\n"
        "fleet: {users: 15, duration: 1m30s, shape: storm}\n"
        "gate: false\n"
        "repeats: 2\n"
        "jitter: 30s\n"
        "seed: 7\n"
        "experiments:\n"
        "  - kill-api\n"
        "  - {name: pg-kill-primary, repeats: 3, weight: 2.5}\n",
    )
    plan = load_plan(path, KNOWN, SHAPES)
    assert plan == Plan(
        "weekly",
        (Item("kill-api", 2, 1.0), Item("pg-kill-primary", 3, 2.5)),
        users=15,
        fleet_s=90,
        shape="storm",
        gate=False,
        jitter_s=30.0,
        seed=7,
    )


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("experiments: [kill-api]\nfleet: {users: -1}\n", 2, "fleet.users"),
        ("experiments:\n  - kill-api\n  - nope\n", 3, "no experiment 'nope'"),
        ("experiments: [kill-api]\nrepeats: 0\n", 2, "repeats: an integer from 1"),
        ("experiments: [kill-api]\njitter: soon\n", 2, "jitter: a duration"),
        ("experiments: [kill-api]\nfleet: {shape: wavy}\n", 2, "fleet.shape 'wavy'"),
        ("experiments: [kill-api]\nrepats: 2\n", 2, "unknown key 'repats'"),
        ("name: x\n", 1, "experiments: a list"),
        ("experiments:\n  - {name: kill-api, weight: 0}\n", 2, "weight: a number above 0"),
        ("experiments:\n  - {name: kill-api, times: 2}\n", 2, "unknown times"),
        ("experiments: [kill-api\n", 2, "not YAML"),
        ("experiments: [kill-api]\ngate: maybe\n", 2, "gate: true or false"),
        ("experiments:\n  - kill-api\n  - {name: kill-api, weight: 5}\n", 3, "kill-api twice"),
        ("name: ''\nexperiments: [kill-api]\n", 1, "1 to 40 letters"),
        (f"name: {'x' * 41}\nexperiments: [kill-api]\n", 1, "1 to 40 letters"),
        ("experiments: [kill-api]\nfleet: 0\n", 2, "fleet: a mapping"),
        ("experiments: [kill-api]\nfleet: {duration: 5s}\n", 2, "30 s at least"),
    ],
)
def test_a_bad_plan_names_its_file_and_line(
    tmp_path: Path, text: str, line: int, says: str
) -> None:
    path = plan_file(tmp_path, text)
    with pytest.raises(PlanError) as err:
        load_plan(path, KNOWN, SHAPES)
    assert str(err.value).startswith(f"{path}:{line}: "), str(err.value)
    assert says in str(err.value)


def test_a_missing_plan_says_so(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="No such file"):
        load_plan(tmp_path / "absent.yaml", KNOWN, SHAPES)


def test_trials_run_in_the_plans_order_with_seeded_pauses_within_the_jitter() -> None:
    plan = Plan("d", (Item("kill-api", 2), Item("kill-lb", 1)), jitter_s=20, seed=3)
    got = trials(plan)
    assert [(t.experiment, t.index) for t in got] == [
        ("kill-api", 1),
        ("kill-api", 2),
        ("kill-lb", 1),
    ]
    assert all(0 <= t.pause_s <= 20 for t in got)
    assert [t.pause_s for t in trials(plan)] == [t.pause_s for t in got]  # the same day again
    other = trials(Plan("d", plan.items, jitter_s=20, seed=4))
    assert [t.pause_s for t in other] != [t.pause_s for t in got]


def test_the_score_weighs_experiments_not_trials() -> None:
    plan = Plan("d", (Item("kill-api", 4, 1.0), Item("pg-kill-primary", 1, 3.0), Item("kill-lb")))
    done = trials(plan)[:5]  # kill-lb has not run
    for t, code in zip(done, (0, 0, 0, 1, 0), strict=True):
        t.status, t.code = DONE, code
    got = score(plan, done)
    # kill-api passed 3 of 4 (weight 1), pg-kill-primary 1 of 1 (weight 3): (0.75 + 3) / 4.
    assert got["score"] == 93.8
    assert got["experiments"]["kill-api"] == {
        "trials": 4,
        "passed": 3,
        "failed": 1,
        "inconclusive": 0,
        "weight": 1.0,
        "pass_rate": 0.75,
    }
    assert got["not_run"] == ["kill-lb"]


def test_an_inconclusive_trial_does_not_count_as_held() -> None:
    plan = Plan("d", (Item("kill-api", 2),))
    done = trials(plan)
    for t, code in zip(done, (0, 2), strict=True):
        t.status, t.code = DONE, code
    got = score(plan, done)
    assert got["score"] == 50.0
    assert got["experiments"]["kill-api"]["inconclusive"] == 1


def test_nothing_run_has_no_score() -> None:
    assert score(Plan("d", (Item("kill-api"),)), [])["score"] is None


def test_a_day_resumes_from_its_saved_state(tmp_path: Path) -> None:
    plan = Plan("d", (Item("kill-api", 2), Item("kill-lb")), users=10, jitter_s=5, seed=1)
    day = Day(tmp_path, plan, trials(plan))
    day.trials[0].status, day.trials[0].code, day.trials[0].folder = DONE, 0, "x-chaos-kill-api"
    day.save()
    again = Day.load(tmp_path)
    assert again.plan == plan
    assert [(t.experiment, t.index) for t in again.pending()] == [("kill-api", 2), ("kill-lb", 1)]
    assert again.trials[0].folder == "x-chaos-kill-api"


def test_resuming_a_folder_that_is_not_a_game_day_says_so(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not a game day's folder"):
        Day.load(tmp_path)


def test_the_example_plan_is_a_valid_plan() -> None:
    from cwh.chaos import catalogue
    from scenarios.profiles import SHAPE_NAMES

    root = Path(__file__).resolve().parents[2]
    plan = load_plan(root / "examples" / "gameday.yaml", list(catalogue()), SHAPE_NAMES)
    assert plan.name == "weekly"
    assert len(trials(plan)) == sum(i.repeats for i in plan.items)


def test_an_experiment_of_another_runtime_is_refused_before_the_day(tmp_path: Path) -> None:
    path = plan_file(tmp_path, "experiments:\n  - kill-api\n  - kill-lb\n")
    with pytest.raises(PlanError) as err:
        load_plan(path, KNOWN, SHAPES, lambda n: "needs kubernetes" if n == "kill-lb" else None)
    assert str(err.value) == f"{path}:3: needs kubernetes"


def test_a_damaged_state_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "gameday-state.json").write_text('{"plan": {"name": "x"}, "trials": []}')
    with pytest.raises(PlanError, match="not a game day's state"):
        Day.load(tmp_path)
