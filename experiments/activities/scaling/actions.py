"""Elastic topology under load: CPU pressure that makes the API's HPA act, rolling updates, and
the autoscaler switched on for the experiment (and back as it was, by the rollbacks).

Each change is recorded in the run's fault journal like a fault (`inject` when it starts,
`restore` when it is over), so RTO and RPO are measured over it as over any fault: a rolling
update or a scale-out is a disruption the phones must not notice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from env.process import pid_alive, wait_until
from experiments import harness
from experiments.settings import ChaosSettings, Configuration
from scenarios.pressure import SECRET_VAR

ROOT = Path(__file__).resolve().parents[3]


def _pressure_pid(s: ChaosSettings) -> Path:
    return harness.run_dir(s) / "pressure.pid"


def start_pressure(
    peak: float = 250, up_s: float = 30, hold_s: float = 240, *, configuration: Configuration
) -> dict[str, Any]:
    """Start `scenarios.pressure` (reads at up to `peak` a second through HAProxy, stairs over
    `up_s`, then held `hold_s` at most) in its own process group; `stop_pressure` ends it."""
    s = harness.settings_of(configuration)
    status = harness.environment(s).state()
    out = harness.run_dir(s)
    cmd = [
        sys.executable,
        "-m",
        "scenarios.pressure",
        "--url",
        status.urls["https"],
        "--ca",
        status.tls_certificate,
        "--peak",
        f"{peak:g}",
        "--up",
        f"{up_s:g}",
        "--hold",
        f"{hold_s:g}",
        "--out",
        str(out / "pressure.json"),
    ]
    # The secret goes through the environment, never the command line (`ps` shows that).
    secret = status.registration_secret or ""
    with open(out / "pressure.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=harness.child_environ(s.env, **{SECRET_VAR: secret}),
        )
    _pressure_pid(s).write_text(str(proc.pid))
    entry = harness.mark(s, "inject", "cpu-pressure", pid=proc.pid, peak=peak)
    return {"pid": proc.pid, "peak": peak, "injected_wall": entry["wall"]}


def stop_pressure(*, configuration: Configuration) -> dict[str, Any]:
    """End the pressure (SIGTERM to its group, SIGKILL after 15 s); its tally, when written.
    Safe to call when none runs (a rollback)."""
    s = harness.settings_of(configuration)
    pid_file = _pressure_pid(s)
    if not pid_file.exists():
        return {"stopped": False}
    pid = int(pid_file.read_text())
    pid_file.unlink(missing_ok=True)
    # Our process still (a pid can be reused): its group leader runs scenarios.pressure.
    if pid_alive(pid) and "scenarios.pressure" in " ".join(_cmdline(pid)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not pid_alive(pid), 15, "the pressure stopped")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    if any(f["fault"] == "cpu-pressure" for f in harness.open_faults(s)):
        harness.mark(s, "restore", "cpu-pressure")
    tally_file = harness.run_dir(s) / "pressure.json"
    tally = json.loads(tally_file.read_text()) if tally_file.exists() else None
    return {"stopped": True, "tally": tally}


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _autoscale_file(s: ChaosSettings) -> Path:
    return harness.run_dir(s) / "autoscale-before.json"


def set_autoscale(enabled: bool, *, configuration: Configuration) -> dict[str, Any]:
    """Switch the local autoscaler on or off (`cwh env autoscale`); what it was is kept for
    `restore_autoscale` (a rollback)."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    was = bool(env.workloads()["autoscaler"]["enabled"])
    if not _autoscale_file(s).exists():  # the state before the experiment, not a later one
        _autoscale_file(s).write_text(json.dumps({"enabled": was}))
    return env.autoscale(enabled)


def restore_autoscale(*, configuration: Configuration) -> dict[str, Any]:
    """The autoscaler as it was before `set_autoscale` (nothing when it was not called)."""
    s = harness.settings_of(configuration)
    if not _autoscale_file(s).exists():
        return {"restored": False}
    was = json.loads(_autoscale_file(s).read_text())["enabled"]
    return {"restored": True, **harness.environment(s).autoscale(bool(was))}


def rollout(workload: str = "api", *, configuration: Configuration) -> dict[str, Any]:
    """Replace every replica of `workload` one by one (surge 1, unavailable 0), under the
    fleet; journaled as a fault from its first step to its last."""
    s = harness.settings_of(configuration)
    harness.mark(s, "inject", f"rollout-{workload}")
    try:
        out = harness.environment(s).rollout(workload)
    finally:
        harness.mark(s, "restore", f"rollout-{workload}")
    if out.get("refused"):
        raise RuntimeError(f"rollout of {workload} stopped: {out['refused']}")
    return out
