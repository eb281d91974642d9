"""Game-day plans (`gameday.yaml`, `cwh chaos gameday --plan FILE`): which experiments, in which
order, how many trials of each, the pause between them, the fleet, and whether to gate; and the
game day's progress (`gameday-state.json`), so an interrupted day resumes where it stopped.

A plan:

    name: weekly                  # the run folder is reports/<UTC>-gameday-<name>
    fleet: {users: 20, duration: 90s, shape: steady}
    gate: true                    # each trial's SLO gate decides its verdict
    repeats: 1                    # trials of each experiment unless it says otherwise
    jitter: 30s                   # a random pause of 0 to 30 s before each trial
    seed: 7                       # the pauses' random sequence (the same plan, the same day)
    experiments:
      - kill-api
      - {name: pg-kill-primary, repeats: 3, weight: 3}

The **resilience score** is the weighted share of trials that passed, per experiment averaged,
in percent: `sum(w_e * passed_e / trials_e) / sum(w_e)`. Per experiment, so an experiment
repeated ten times does not drown the others; weighted, so the plan says which failures matter
more (a lost primary against a slow cache); a trial counts only when it passed (an
inconclusive one showed nothing held). Experiments that did not run yet are left out of it and
counted apart, so a resumed day's score is the same as an uninterrupted one's.

Pure apart from reading the plan and writing the state.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cwh.durations import parse_duration
from slo.ledger import write_atomic

STATE = "gameday-state.json"
#: The shortest fleet a plan may give: an experiment's baseline, fault and recovery fit in it.
MIN_FLEET_S = 30
#: A trial's states: to run, run (with its exit code), or stopped by an interrupt (run again on
#: resume: half a trial measures nothing).
PENDING, DONE = "pending", "done"


class PlanError(ValueError):
    """A plan that cannot be run: the message names the file and line."""


@dataclass(frozen=True)
class Item:
    name: str
    repeats: int = 1
    weight: float = 1.0


@dataclass(frozen=True)
class Plan:
    name: str
    items: tuple[Item, ...]
    users: int = 0
    fleet_s: int = 0
    shape: str = "steady"
    gate: bool = True
    jitter_s: float = 0.0
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "items": [asdict(i) for i in self.items]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Plan:
        return cls(**{**doc, "items": tuple(Item(**i) for i in doc["items"])})


@dataclass
class Trial:
    experiment: str
    index: int  # 1-based, per experiment
    pause_s: float
    status: str = PENDING
    code: int | None = None
    folder: str | None = None
    #: Folders of attempts interrupted half-way (kept, not counted).
    aborted: list[str] = field(default_factory=list)


def plan_of_names(
    names: Sequence[str], users: int = 0, fleet_s: int = 0, gate: bool = True
) -> Plan:
    """The plan `cwh chaos gameday NAME...` runs: each once, in the order given."""
    return Plan("gameday", tuple(Item(n) for n in names), users=users, fleet_s=fleet_s, gate=gate)


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def load_plan(
    path: Path,
    known: Sequence[str],
    shapes: Sequence[str],
    refuse: Callable[[str], str | None] = lambda _: None,
) -> Plan:
    """Read and check a plan; `known` are the experiment names, `shapes` the fleet's shapes,
    `refuse` says why an experiment cannot run here (another runtime's), or None."""

    def fail(node: yaml.Node | None, what: str) -> PlanError:
        return PlanError(f"{path}:{_line(node)}: {what}")

    try:
        root = yaml.compose(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise PlanError(f"{path}:{line}: not YAML: {getattr(exc, 'problem', exc)}") from None
    except OSError as exc:
        raise PlanError(f"{path}: {exc.strerror}") from None
    if not isinstance(root, yaml.MappingNode):
        raise fail(root, "a plan is a mapping (name, experiments, ...)")
    nodes = {k.value: v for k, v in root.value}
    data = yaml.safe_load(path.read_text())
    allowed = {"name", "fleet", "gate", "repeats", "jitter", "seed", "experiments"}
    for key_node, _ in root.value:
        if key_node.value not in allowed:
            raise fail(
                key_node, f"unknown key {key_node.value!r}; one of {', '.join(sorted(allowed))}"
            )

    def integer(value: Any, node: yaml.Node | None, what: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise fail(node, f"{what}: an integer from {low} to {high}, not {value!r}")
        return value

    def seconds(value: Any, node: yaml.Node | None, what: str, high: float) -> float:
        try:
            s = parse_duration(str(value))
        except ValueError:
            raise fail(node, f"{what}: a duration like 30s, 5m or 1h30m, not {value!r}") from None
        if not 0 <= s <= high:
            raise fail(node, f"{what}: 0 to {high:g} seconds")
        return s

    name = data.get("name", "gameday")
    if not isinstance(name, str) or not 1 <= len(name) <= 40:
        raise fail(nodes.get("name"), f"name {name!r}: 1 to 40 letters, digits, - and _")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise fail(nodes.get("name"), f"name {name!r}: letters, digits, - and _ only")
    fleet = data.get("fleet", {})
    fleet_node = nodes.get("fleet")
    if not isinstance(fleet, dict):
        raise fail(fleet_node, "fleet: a mapping (users, duration, shape)")
    fleet_nodes = (
        {k.value: v for k, v in fleet_node.value}
        if isinstance(fleet_node, yaml.MappingNode)
        else {}
    )
    if unknown := set(fleet) - {"users", "duration", "shape"}:
        raise fail(
            fleet_node, f"fleet: unknown {', '.join(sorted(unknown))}; users, duration, shape"
        )
    users = integer(fleet.get("users", 0), fleet_nodes.get("users"), "fleet.users", 0, 100_000)
    fleet_s = 0
    if "duration" in fleet:
        fleet_s = int(
            seconds(fleet["duration"], fleet_nodes.get("duration"), "fleet.duration", 86_400)
        )
        if fleet_s < MIN_FLEET_S:
            # Shorter, the fleet ends before an experiment's fault acts: nothing measured.
            raise fail(fleet_nodes.get("duration"), f"fleet.duration: {MIN_FLEET_S} s at least")
    shape = str(fleet.get("shape", "steady"))
    if shape not in shapes:
        raise fail(fleet_nodes.get("shape"), f"fleet.shape {shape!r}: one of {', '.join(shapes)}")
    gate = data.get("gate", True)
    if not isinstance(gate, bool):
        raise fail(nodes.get("gate"), f"gate: true or false, not {gate!r}")
    repeats = integer(data.get("repeats", 1), nodes.get("repeats"), "repeats", 1, 100)
    jitter_s = seconds(data.get("jitter", 0), nodes.get("jitter"), "jitter", 3600)
    seed = integer(data.get("seed", 0), nodes.get("seed"), "seed", 0, 2**31)
    exp_node = nodes.get("experiments")
    entries = data.get("experiments")
    if not isinstance(entries, list) or not entries or not isinstance(exp_node, yaml.SequenceNode):
        raise fail(exp_node or root, "experiments: a list of at least one experiment")
    items: list[Item] = []
    for entry, node in zip(entries, exp_node.value, strict=True):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise fail(node, "an experiment: its name, or {name, repeats, weight}")
        if unknown := set(entry) - {"name", "repeats", "weight"}:
            raise fail(node, f"unknown {', '.join(sorted(unknown))}; name, repeats, weight")
        sub = {k.value: v for k, v in node.value} if isinstance(node, yaml.MappingNode) else {}
        exp = str(entry["name"])
        if exp not in known:
            raise fail(node, f"no experiment {exp!r} (cwh chaos list)")
        if refusal := refuse(exp):
            raise fail(node, refusal)
        if exp in {i.name for i in items}:
            raise fail(node, f"{exp} twice: give it repeats instead")
        weight = entry.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 100:
            raise fail(
                sub.get("weight", node), f"weight: a number above 0, at most 100, not {weight!r}"
            )
        n = integer(entry.get("repeats", repeats), sub.get("repeats", node), "repeats", 1, 100)
        items.append(Item(exp, n, float(weight)))
    return Plan(name, tuple(items), users, fleet_s, shape, gate, jitter_s, seed)


def trials(plan: Plan) -> list[Trial]:
    """Every trial in order: each experiment's repeats one after another, in the plan's order;
    the pause before each drawn from the plan's seed."""
    rng = random.Random(plan.seed)
    out = []
    for item in plan.items:
        for i in range(1, item.repeats + 1):
            out.append(Trial(item.name, i, round(rng.uniform(0, plan.jitter_s), 1)))
    return out


@dataclass
class Day:
    """A game day in progress: its plan and trials, kept in `<folder>/gameday-state.json`."""

    folder: Path
    plan: Plan
    trials: list[Trial] = field(default_factory=list)

    def save(self) -> None:
        doc = {"plan": self.plan.to_json(), "trials": [asdict(t) for t in self.trials]}
        write_atomic(self.folder / STATE, json.dumps(doc, indent=2))

    @classmethod
    def load(cls, folder: Path) -> Day:
        path = folder / STATE
        if not path.exists():
            raise PlanError(f"{folder}: no {STATE}: not a game day's folder")
        try:
            doc = json.loads(path.read_text())
            return cls(folder, Plan.from_json(doc["plan"]), [Trial(**t) for t in doc["trials"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanError(
                f"{path}: not a game day's state ({type(exc).__name__}: {exc})"
            ) from None

    def pending(self) -> list[Trial]:
        return [t for t in self.trials if t.status != DONE]


def score(plan: Plan, done: Sequence[Trial]) -> dict[str, Any]:
    """The resilience score (module docstring) of the trials run so far, and its parts."""
    per: dict[str, dict[str, Any]] = {}
    for item in plan.items:
        mine = [t for t in done if t.experiment == item.name and t.status == DONE]
        if not mine:
            continue
        passed = sum(1 for t in mine if t.code == 0)
        per[item.name] = {
            "trials": len(mine),
            "passed": passed,
            "failed": sum(1 for t in mine if t.code == 1),
            "inconclusive": sum(1 for t in mine if t.code not in (0, 1)),
            "weight": item.weight,
            "pass_rate": passed / len(mine),
        }
    total_w = sum(p["weight"] for p in per.values())
    value = (
        round(100 * sum(p["weight"] * p["pass_rate"] for p in per.values()) / total_w, 1)
        if total_w
        else None
    )
    not_run = [i.name for i in plan.items if i.name not in per]
    planned = sum(i.repeats for i in plan.items)
    ran = sum(p["trials"] for p in per.values())
    # How much of the plan the score covers: a day cut short scores only what it reached.
    return {
        "score": value,
        "experiments": per,
        "not_run": not_run,
        "trials_planned": planned,
        "trials_run": ran,
        "coverage": round(ran / planned, 3) if planned else None,
    }
