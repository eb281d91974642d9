"""A plain `chaos run` finds the environment through its configuration alone: no `CWH_*`
variable in its process environment, only `--var` naming the base port, the run directory and
the run folder, and its fault lands on that environment and is restored there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chaoslib import convert_vars
from chaoslib.configuration import load_configuration
from rich.console import Console

from cwh.chaos import _wait_steady, catalogue
from env.local import LocalEnvironment
from env.process import pid_alive
from experiments.settings import ChaosSettings
from tests.experiments.test_chaos import assert_restored, load_lines
from tests.helpers import wait_healthy

pytestmark = [pytest.mark.env, pytest.mark.fault]

ROOT = Path(__file__).resolve().parents[2]
CHAOS = str(Path(sys.executable).with_name("chaos"))
#: A short run: a small fleet, a short baseline.
NAME = "kill-api.yaml"
QUICK = ["users:int=10", "baseline_s:int=8", "fleet_s:int=35"]


def vars_for(s: ChaosSettings) -> list[str]:
    """`--var key=value` for every harness entry: text, parsed as the variables are."""
    return [f"{k}={v}" for k, v in s.to_configuration().items()] + QUICK


def test_a_plain_chaos_run_reaches_the_environment_its_vars_name(
    local_env: LocalEnvironment, tmp_path: Path
):
    before = wait_healthy(local_env)
    run = tmp_path / "run"
    s = ChaosSettings(env=local_env.settings, run_dir=run)
    var = vars_for(s)
    # Guard before anything is killed: Chaos Toolkit's own resolution of these --var gives
    # this environment (the defaults would name another, on base 17000).
    doc = catalogue()["kill-api"]["doc"]
    assert (
        ChaosSettings.from_configuration(
            load_configuration(doc["configuration"], convert_vars(var))
        )
        == s
    )
    # As `cwh chaos run` does (and test_chaos's plain runs): the previous test's fault may
    # still show in the last 30 s of SLOs the hypothesis reads, now that a chaos fleet ends
    # 15 s after the system recovered (seen: the stall test's lock refused this run).
    assert _wait_steady(catalogue()["kill-api"], local_env.settings, Console(quiet=True))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CWH_")}
    environ["PYTHONPATH"] = str(ROOT)  # this checkout's experiments, whatever is installed
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cmd = [CHAOS, "--log-file", str(tmp_path / "chaostoolkit.log"), "run"]
    cmd += [a for v in var for a in ("--var", v)]
    cmd += ["--journal-path", str(tmp_path / "journal.json"), str(ROOT / "experiments" / NAME)]
    proc = subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=600)
    journal = json.loads((tmp_path / "journal.json").read_text())
    assert journal["status"] == "completed", (proc.returncode, proc.stderr[-3000:])
    outputs = {r["activity"]["name"]: r["output"] for r in journal["run"]}
    kill, (back,) = outputs["kill-api-replica"], outputs["wait-restarted"]
    # The killed process was this environment's API replica, and this environment's
    # supervisor brought it back as a new process.
    was = next(c for c in before["components"] if c["component"] == kill["component"])
    assert (was["kind"], was["pid"]) == ("api", kill["pid"])
    assert not pid_alive(kill["pid"])
    now = next(c for c in local_env.status()["components"] if c["component"] == kill["component"])
    assert back["component"] == kill["component"]
    assert now["pid"] == back["pid"] != kill["pid"]
    # The run folder came from the configuration too: the fault journal, the fleet's summary
    # and the control's restore are there, and no `reports/` folder was made for a bare run.
    faults = [(f["event"], f["fault"]) for f in load_lines(run / "faults.jsonl")]
    fault = f"kill-{kill['component']}"
    assert faults[:2] == [("inject", fault), ("restore", fault)]
    assert json.loads((run / "summary.json").read_text())["reconciliation"]["acknowledged"] > 0
    assert json.loads((run / "restored.json").read_text())["healthy"] is True
    assert list(cwd.iterdir()) == []
    assert_restored(local_env)
