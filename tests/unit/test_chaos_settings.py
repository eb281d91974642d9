"""Chaos activities take their settings from Chaos Toolkit's `configuration`: every experiment
declares the same `cwh_*` entries, Chaos Toolkit's own resolution (`type: env`, `--var`,
`--var-file`) turns them into one `ChaosSettings`, and no Python under `experiments/` reads the
process environment."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chaoslib import convert_vars, merge_vars
from chaoslib.configuration import load_configuration

from cwh.chaos import ChaosOptions, _var_file, catalogue
from env.settings import EnvSettings, SettingsError
from experiments import harness
from experiments.settings import (
    EXPERIMENTS_DIR,
    RUN_DIR_KEY,
    ChaosSettings,
    declared_configuration,
    with_declaration,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_cwh_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process environment without any `CWH_*` variable (as a scrubbed `chaos run` has)."""
    import os

    for key in list(os.environ):
        if key.startswith("CWH_"):
            monkeypatch.delenv(key)


def experiments() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, exp in catalogue().items():
        yield name, exp["doc"]


def resolve(
    doc: dict[str, Any], var: list[str] | None = None, var_files: list[str] | None = None
) -> dict[str, Any]:
    """The configuration as `chaos run [--var ...] [--var-file ...]` resolves it."""
    config_vars, _ = merge_vars(convert_vars(var or []), var_files or [])
    return load_configuration(doc["configuration"], config_vars)


def test_every_experiment_declares_the_same_harness_configuration():
    declared = declared_configuration()
    assert len(list(experiments())) == len(list(EXPERIMENTS_DIR.glob("*.yaml"))) >= 17
    for name, doc in experiments():
        mine = {k: v for k, v in doc["configuration"].items() if k.startswith("cwh_")}
        assert mine == declared, f"{name}: run `python -m experiments.settings --write`"
        text = (EXPERIMENTS_DIR / f"{name}.yaml").read_text()
        assert with_declaration(text) == text, name


def test_every_environment_setting_is_declared():
    """A field added to `EnvSettings` reaches the experiments (or this fails)."""
    keys = set(declared_configuration())
    assert {f"cwh_{k}" for k in EnvSettings.__dataclass_fields__} | {RUN_DIR_KEY} == keys


def test_the_declared_defaults_are_the_environment_defaults(no_cwh_variables, tmp_path):
    doc = next(d for n, d in experiments() if n == "kill-api")
    s = ChaosSettings.from_configuration(resolve(doc), default_run_dir=tmp_path)
    assert s.env == EnvSettings.from_environ({})
    assert s.run_dir == tmp_path


def test_a_bare_chaos_run_reads_the_cwh_variables(no_cwh_variables, monkeypatch, tmp_path):
    monkeypatch.setenv("CWH_BASE_PORT", "24100")
    monkeypatch.setenv("CWH_PG_SYNC_STRICT", "on")
    monkeypatch.setenv("CWH_TIMEOUT_SCALE", "2.5")
    monkeypatch.setenv("CWH_CHAOS_RUN_DIR", str(tmp_path))
    doc = next(d for n, d in experiments() if n == "storage-outage")
    s = ChaosSettings.from_configuration(resolve(doc))
    assert (s.env.base_port, s.env.pg_sync_strict, s.env.timeout_scale) == (24100, True, 2.5)
    assert s.env.run_dir == Path("/var/tmp/cwh-24100")
    assert s.run_dir == tmp_path


def test_var_overrides_the_variables(no_cwh_variables, monkeypatch, tmp_path):
    monkeypatch.setenv("CWH_BASE_PORT", "24100")  # a stale shell: --var wins
    doc = next(d for n, d in experiments() if n == "kill-api")
    config = resolve(
        doc,
        [
            "cwh_base_port:int=24000",
            "cwh_run_dir=/var/tmp/cwh-test-24000",
            "cwh_timeout_scale=3",
            "cwh_fault_proxy=0",
            f"{RUN_DIR_KEY}={tmp_path}",
            "users:int=7",
        ],
    )
    s = ChaosSettings.from_configuration(config)
    assert s.env.base_port == 24000
    assert s.env.run_dir == Path("/var/tmp/cwh-test-24000")
    assert (s.env.timeout_scale, s.env.fault_proxy) == (3.0, False)
    assert s.run_dir == tmp_path
    assert config["users"] == 7


def test_cwh_chaos_run_var_file_rebuilds_its_settings(no_cwh_variables, tmp_path):
    """What `cwh chaos run` writes for `--var-file`, resolved by Chaos Toolkit, is the
    environment it runs against, field for field."""
    env = EnvSettings(
        base_port=24000,
        run_dir=Path("/var/tmp/cwh-test-24000"),
        timeout_scale=3.0,
        pg_sync_strict=True,
        toxiproxy_url="http://127.0.0.1:8474",
        auth_rate_limit_per_s=50,
    )
    s = ChaosSettings(env=env, run_dir=tmp_path)
    path = _var_file(s, ChaosOptions("kill-api", users=9, fleet_s=33))
    doc = next(d for n, d in experiments() if n == "kill-api")
    config = resolve(doc, var_files=[str(path)])
    assert ChaosSettings.from_configuration(config) == s
    assert (config["users"], config["fleet_s"]) == (9, 33)
    assert json.loads(path.read_text())["configuration"]["cwh_base_port"] == 24000


def test_a_missing_or_bad_entry_is_named(tmp_path):
    config = ChaosSettings(EnvSettings(), tmp_path).to_configuration()
    with pytest.raises(SettingsError, match="cwh_timeout_scale"):
        ChaosSettings.from_configuration({k: v for k, v in config.items() if "timeout" not in k})
    with pytest.raises(SettingsError, match="CWH_BASE_PORT"):
        ChaosSettings.from_configuration({**config, "cwh_base_port": "seventeen"})
    with pytest.raises(SettingsError, match=RUN_DIR_KEY):
        ChaosSettings.from_configuration({**config, RUN_DIR_KEY: ""})


def test_a_bare_run_keeps_one_folder_named_by_the_control(monkeypatch, tmp_path):
    monkeypatch.setattr(harness, "_bare_run_dir", [])
    monkeypatch.chdir(tmp_path)
    named = harness.bare_run_dir("kill-api")
    config = {**ChaosSettings(EnvSettings(), tmp_path).to_configuration(), RUN_DIR_KEY: ""}
    assert harness.settings_of(config).run_dir == named
    assert harness.settings_of(config).run_dir == named  # every later activity: the same
    assert named.name.endswith("-chaos-kill-api")
    assert named.parent == tmp_path / "reports"


def test_the_fleet_child_gets_the_settings_and_nothing_inherited(monkeypatch):
    monkeypatch.setenv("CWH_BASE_PORT", "17000")
    monkeypatch.setenv("SOMETHING_ELSE", "x")
    child = harness.child_environ(EnvSettings(base_port=24000), CWH_OFFLINE_CHANCE="0")
    assert child["CWH_BASE_PORT"] == "24000"
    assert child["CWH_RUN_DIR"] == "/var/tmp/cwh-17000"  # EnvSettings' own default, not /var/tmp
    assert child["CWH_OFFLINE_CHANCE"] == "0"
    assert "SOMETHING_ELSE" not in child
    assert EnvSettings.from_environ(child) == EnvSettings(base_port=24000)


def activities(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from doc.get("steady-state-hypothesis", {}).get("probes", [])
    yield from doc.get("method", [])
    yield from doc.get("rollbacks", [])


def test_every_activity_and_the_control_take_the_configuration():
    """Chaos Toolkit passes `configuration` only to functions that declare it; required and
    keyword-only, so no caller can forget it and fall back to the default base port."""
    seen = set()
    for name, doc in experiments():
        funcs = [
            (a["provider"]["module"], a["provider"]["func"])
            for a in activities(doc)
            if a.get("provider", {}).get("type") == "python"
        ]
        for control in doc.get("controls", []):
            module = control["provider"]["module"]
            funcs += [(module, "before_experiment_control"), (module, "after_experiment_control")]
        for module, func in funcs:
            param = inspect.signature(
                getattr(importlib.import_module(module), func)
            ).parameters.get("configuration")
            assert param is not None, (name, module, func)
            assert param.kind is inspect.Parameter.KEYWORD_ONLY, (module, func)
            assert param.default is inspect.Parameter.empty, (module, func)
            seen.add(func)
    assert {"kill_service", "start_fleet", "stop_fleet", "slos_hold", "recovery"} <= seen


def _environ_reads(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in ("environ", "environb", "getenv", "getenvb", "putenv", "unsetenv")
        ):
            lines.append(node.lineno)
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and {a.name for a in node.names} & {"environ", "environb", "getenv", "getenvb"}
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_python_under_experiments_reads_the_process_environment():
    modules = sorted((ROOT / "experiments").rglob("*.py"))
    assert len(modules) > 20
    found = {
        str(path.relative_to(ROOT)): lines
        for path in modules
        if (lines := _environ_reads(ast.parse(path.read_text())))
    }
    assert found == {}, "read the configuration (experiments.settings), not os.environ"


def test_the_environ_check_sees_what_it_must():
    code = "import os\nfrom os import getenv\na = os.environ['X']\nb = os.getenv('Y')\n"
    assert _environ_reads(ast.parse(code)) == [2, 3, 4]


def test_the_yaml_declaration_is_one_line_per_entry():
    """The entries stay readable and the writer can find them: one flow mapping a line."""
    text = (EXPERIMENTS_DIR / "kill-api.yaml").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("  cwh_")]
    assert len(lines) == len(declared_configuration())
    assert all(yaml.safe_load(ln.strip()) for ln in lines)


def test_every_slo_an_experiment_is_gated_on_is_defined():
    """An experiment's `slos` (beside the chaos ones) name shipped definitions: a typo would make
    the gate skip the objective the experiment exists for."""
    from cwh.chaos import catalogue
    from slo.definitions import load

    defined = {s.name for s in load()}
    wanted = {name: exp["slos"] for name, exp in catalogue().items()}
    for name in ("api-scale-out", "worker-backlog", "rolling-update"):
        assert wanted[name], name
    for name, slos in wanted.items():
        assert set(slos) <= defined, (name, sorted(set(slos) - defined))


def test_an_experiment_waives_only_chaos_slos_and_says_why():
    """A waived name that is not a chaos SLO would waive nothing (a typo): the experiment would
    then fail its gate on the loss it causes by design, or the typo would hide the intent."""
    from cwh.chaos import CHAOS_SLOS, catalogue

    waived = {name: exp["waive"] for name, exp in catalogue().items() if exp["waive"]}
    assert set(waived) >= {"dr-restore-cluster", "dr-pitr"}
    for name, waive in waived.items():
        assert set(waive) <= set(CHAOS_SLOS), name
        assert all(len(why) > 20 for why in waive.values()), name


def test_a_method_activity_that_raised_fails_the_run():
    """Chaos Toolkit calls an experiment completed when one of its method's activities raised
    (a wait that timed out): `cwh chaos` reads the journal's runs."""
    from cwh.chaos import failed_activities

    journal = {
        "status": "completed",
        "run": [
            {"activity": {"name": "start-fleet"}, "status": "succeeded"},
            {"activity": {"name": "api-scaled-in"}, "status": "failed"},
        ],
    }
    assert failed_activities(journal) == ["api-scaled-in"]
    assert failed_activities({"status": "completed", "run": []}) == []
    assert failed_activities({}) == []


@pytest.mark.parametrize(
    ("rec", "plain", "waived"),
    [
        ({"verdict": "pass"}, 0, 0),
        ({"verdict": "fail", "lost": 3, "duplicated": 0}, 1, 0),
        ({"verdict": "fail", "lost": 3, "duplicated": 1}, 1, 1),  # a duplicate is never waived
        ({"verdict": "fail", "lost": 3, "duplicated": 0, "unknown": 2}, 1, 2),
        ({"verdict": "inconclusive", "unknown": 2}, 2, 2),
    ],
)
def test_a_waived_loss_leaves_duplicates_and_unknowns_in_the_exit_code(
    tmp_path, rec, plain, waived
):
    from cwh.chaos import _reconciliation_code

    (tmp_path / "summary.json").write_text(json.dumps({"reconciliation": rec}))
    assert _reconciliation_code(tmp_path) == plain
    assert _reconciliation_code(tmp_path, losses_waived=True) == waived


def test_a_loss_after_the_restore_ended_is_never_waived(tmp_path):
    from cwh.chaos import _reconciliation_code

    rec = {"verdict": "fail", "lost": 2, "duplicated": 0, "lost_acked_walls": [90.0, 95.0]}
    (tmp_path / "summary.json").write_text(json.dumps({"reconciliation": rec}))
    journal = [{"event": "inject", "wall": 100.0}, {"event": "restore", "wall": 130.0}]
    (tmp_path / "faults.jsonl").write_text("\n".join(json.dumps(e) for e in journal))
    assert _reconciliation_code(tmp_path, losses_waived=True) == 0  # lost by the restore
    rec["lost_acked_walls"] = [90.0, 160.0]  # acknowledged by the recovered system, then lost
    (tmp_path / "summary.json").write_text(json.dumps({"reconciliation": rec}))
    assert _reconciliation_code(tmp_path, losses_waived=True) == 1


def test_the_squeeze_says_how_the_replica_died_and_came_back():
    from cwh.chaos import _squeeze_lines

    base = {"replica": "api1", "limit_mb": 256, "leak_mb_per_s": 64}
    assert _squeeze_lines(None) == []
    killed = _squeeze_lines(
        {**base, "killed_after_s": 3.1, "oom_killed": True, "back_after_s": 9.4}
    )[1]
    assert "OOM-killed by the kernel at its limit at +3.1 s" in killed
    assert "new container at +9.4 s" in killed
    other = _squeeze_lines(
        {**base, "killed_after_s": 1.0, "oom_killed": False, "restart_reason": "exit 1"}
    )[1]
    assert "not by the OOM killer (exit 1)" in other
    assert "not healthy again" in other
    assert "never killed" in _squeeze_lines({**base, "killed_after_s": None})[1]
