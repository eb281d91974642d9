"""`cwh load` whose read-back meets a failing API: PostgreSQL cut off by the fault proxy right
after the fleet stopped, for the whole settle time. The acknowledged requests are then unknown,
not lost, and the run ends inconclusive (exit code 2), not as a pass and not as a loss."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from env.local import LocalEnvironment
from slo.definitions import DEFAULT_DIR
from tests.helpers import poll, wait_healthy

pytestmark = [pytest.mark.env, pytest.mark.fault]

ROOT = Path(__file__).resolve().parents[2]
CWH = str(Path(sys.executable).with_name("cwh"))
#: What the fault proxy stands between: the services and PostgreSQL, both paths.
PG_PROXIES = ("postgres-write", "postgres-read")


def set_proxies(env: LocalEnvironment, enabled: bool) -> None:
    for proxy in PG_PROXIES:
        resp = requests.post(
            f"{env.settings.fault_api_url}/proxies/{proxy}", json={"enabled": enabled}, timeout=5
        )
        assert resp.ok, resp.text


def test_a_read_back_the_api_cannot_answer_is_inconclusive_not_lost(local_env, tmp_path):
    wait_healthy(local_env)
    # The gate with the data objectives only: a pass there is what unknowns must overturn.
    defs = tmp_path / "defs"
    defs.mkdir()
    for name in ("requests-lost.yaml", "requests-duplicated.yaml"):
        shutil.copy(DEFAULT_DIR / name, defs / name)
    out = tmp_path / "run"
    log = tmp_path / "cwh-load.log"
    with open(log, "w") as output:  # a file, not a pipe nobody reads until the end
        proc = subprocess.Popen(
            [
                *(CWH, "load", "--users", "4", "--duration", "30", "--spawn-rate", "4"),
                *("--settle-s", "12", "--out", str(out), "--definitions", str(defs)),
            ],
            cwd=ROOT,
            env={**os.environ, **local_env.settings.to_environ(), "CWH_OFFLINE_CHANCE": "0"},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        # The merged ledger is written when Locust has stopped, right before the read-back.
        poll(
            lambda: (out / "ledger.jsonl").exists() or proc.poll() is not None,
            240,
            "the fleet finished",
            interval_s=0.05,
        )
        set_proxies(local_env, enabled=False)
        proc.wait(timeout=180)
    finally:
        set_proxies(local_env, enabled=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output_text = log.read_text()
    summary = json.loads((out / "summary.json").read_text())
    rec = summary["reconciliation"]
    assert rec["acknowledged"] > 5, rec
    # The API could not answer the read-back (503: its database is gone): nothing is lost,
    # everything is unknown, and the run is neither a pass nor a loss.
    assert (rec["lost"], rec["duplicated"]) == (0, 0), rec
    assert rec["unknown"] == rec["acknowledged"], rec
    assert summary["verdict"] == "inconclusive"
    assert proc.returncode == 2, output_text[-3000:]
    assert "Inconclusive" in (out / "summary.md").read_text()
    gate = json.loads((out / "slo.json").read_text())
    assert gate["counts"]["fail"] == 0  # the data objectives themselves held
    assert gate["verdict"] == "inconclusive"
    wait_healthy(local_env, timeout_s=120)
