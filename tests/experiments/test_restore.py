"""The restore after a chaos run undoes everything even when one of its steps fails: here the
fleet's stop raises (its pid file is corrupt, as a crash mid-write leaves it), and the toxic,
the disabled proxy, the held component, the knobs and the planted faults are undone all the
same, each checked from outside, and the failure is reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from env.local import LocalEnvironment
from experiments import harness
from experiments.settings import ChaosSettings
from tests.experiments.test_chaos import assert_restored, child_env
from tests.helpers import port_of, wait_healthy

pytestmark = [pytest.mark.env, pytest.mark.fault]

CWH = str(Path(sys.executable).with_name("cwh"))


@pytest.fixture
def chaos(local_env: LocalEnvironment, tmp_path: Path) -> ChaosSettings:
    """The harness's settings as a chaos run has them, its run folder `tmp_path`."""
    return ChaosSettings(env=local_env.settings, run_dir=tmp_path)


def inject_everything(env: LocalEnvironment, chaos: ChaosSettings) -> dict:
    status = wait_healthy(env)
    api = env.settings.fault_api_url
    requests.post(
        f"{api}/proxies/postgres-read/toxics",
        json={"name": "slow", "type": "latency", "attributes": {"latency": 100}},
        timeout=5,
    ).raise_for_status()
    requests.post(f"{api}/proxies/gdrive", json={"enabled": False}, timeout=5).raise_for_status()
    llm = f"http://127.0.0.1:{port_of(status, 'llm')}/admin/knobs"
    # Knobs the old partial reset left as they were.
    knobs = {"latency_ms": 50, "latency_dist": "exponential", "retry_after_s": 3}
    requests.post(llm, json=knobs, timeout=5).raise_for_status()
    planted = f"http://127.0.0.1:{port_of(status, 'api1')}/admin/planted"
    requests.post(planted, json={"lose_acks": 5}, timeout=5).raise_for_status()
    env.hold("scheduler2", 300)
    harness.mark(chaos, "inject", "everything")
    return {"llm": llm, "planted": planted}


def test_every_restore_step_runs_when_stopping_the_fleet_fails(local_env, chaos, tmp_path):
    urls = inject_everything(local_env, chaos)
    (tmp_path / "fleet.pid").write_text("not a pid")
    restored = harness.restore_all(chaos, wait_s=120, stop_fleet=True)
    # The fleet's stop failed, and said so; every other step ran and succeeded.
    assert set(restored["errors"]) == {"fleet_stopped"}, restored
    assert "ValueError" in restored["errors"]["fleet_stopped"]
    assert restored["released"] == ["scheduler2"]
    assert restored["faults_closed"] == ["everything"]
    assert restored["healthy"] is True
    # Checked from outside: the knobs are the whole defaults, nothing is planted or held, no
    # toxic is left.
    assert requests.get(urls["llm"], timeout=5).json() == harness.CLEAN_KNOBS
    planted = requests.get(urls["planted"], timeout=5).json()
    assert not any(planted["armed"].values()), planted
    assert_restored(local_env)


def test_cwh_chaos_stop_reports_a_failed_step_and_restores_the_rest(local_env, tmp_path):
    status = wait_healthy(local_env)
    llm = f"http://127.0.0.1:{port_of(status, 'llm')}/admin/knobs"
    requests.post(llm, json={"error_rate": 0.5}, timeout=5).raise_for_status()
    (tmp_path / "fleet.pid").write_text("not a pid")
    proc = subprocess.run(
        [CWH, "chaos", "stop", "--run", str(tmp_path)],
        env=child_env(local_env),
        capture_output=True,
        text=True,
        timeout=400,
    )
    out = " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines
    assert proc.returncode == 1, out
    assert "restore step fleet_stopped failed" in out
    assert requests.get(llm, timeout=5).json() == harness.CLEAN_KNOBS
    assert_restored(local_env)
