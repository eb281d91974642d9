"""The device fleet that uses the system while faults hit it: started in the background before
the fault, stopped (and reconciled) after recovery."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chaoslib.exceptions import InterruptExecution

from cwh.fleet import request_finish
from env.process import pid_alive, wait_until
from experiments import harness
from experiments.activities.fleet.probes import LedgerTail, ledger_ops
from experiments.activities.measure.probes import latency_bounds_s
from experiments.settings import ChaosSettings, Configuration
from slo.ledger import Operation
from slo.reconcile import awaiting_results
from slo.recovery import recovered_at

ROOT = Path(__file__).resolve().parents[3]


def _pid_file(s: ChaosSettings) -> Path:
    return harness.run_dir(s) / "fleet.pid"


def start_fleet(
    users: int = 20,
    duration_s: float = 90,
    spawn_rate: float = 10,
    min_ok: int = 20,
    offline_chance: float = 0.0,
    global_entry: bool = False,
    *,
    configuration: Configuration,
) -> dict[str, Any]:
    """Start the fleet (Locust, in its own process group) and return once `min_ok` submits
    were acknowledged: the fault must hit a system in use.

    `offline_chance`: the phones' chance of an offline spell (0 by default: a phone back from
    one gets its results late by its own doing, which the notification path's RTO must not
    blame on the fault). `global_entry`: the phones use the run's second region's global entry
    point (`region.json`, from `standby_region_up`), as phones do in a region failover. The
    fleet gets the environment's settings from the configuration; on the kubernetes runtime
    its phones go to `cwh_kube_target` (the cluster's Ingress)."""
    s = harness.settings_of(configuration)
    out = harness.run_dir(s)
    extra = {"CWH_OFFLINE_CHANCE": f"{offline_chance:g}"}
    if global_entry:
        extra.update(_through_global_entry(s))
    if s.env.runtime == "kubernetes":
        extra.update(_through_ingress(s))
    # `cwh load` on the local environment, into the run folder; the chaos run gates it later.
    cmd = [
        sys.executable,
        "-m",
        "cwh.cli",
        "load",
        "--out",
        str(out),
        "--no-gate",
        "--users",
        str(users),
        "--duration",
        f"{duration_s:g}",
        "--spawn-rate",
        f"{spawn_rate:g}",
        # A game day's plan may choose the shape (cwh chaos gameday --plan); steady otherwise.
        "--shape",
        fleet_shape(out),
    ]
    with open(out / "fleet.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own group: Ctrl-C on the experiment must not kill the fleet before the
            # rollbacks; stop_fleet ends it (and every Locust process of it) on purpose.
            start_new_session=True,
            env=harness.child_environ(s.env, **extra),
        )
    _pid_file(s).write_text(str(proc.pid))
    wait_until(
        lambda: (
            sum(o.kind == "submit" and o.outcome == "ok" for o in ledger_ops(s)) >= min_ok
            or proc.poll() is not None
        ),
        60,
        f"{min_ok} submits acknowledged by the fleet",
        interval_s=0.5,
    )
    if proc.poll() is not None:
        raise RuntimeError(f"the fleet exited early (code {proc.returncode}): see {out}/fleet.log")
    return {"pid": proc.pid, "users": users, "duration_s": duration_s}


#: In the run folder, the fleet's options that `cwh chaos run` was given beyond the
#: experiment's own (a game-day plan's shape): `{"shape": "storm"}`.
FLEET_OPTIONS = "fleet-options.json"


def fleet_shape(out: Path) -> str:
    path = out / FLEET_OPTIONS
    return str(json.loads(path.read_text()).get("shape") or "steady") if path.exists() else "steady"


def _through_global_entry(s: ChaosSettings) -> dict[str, str]:
    """`cwh load`'s target variables for phones that go through the second region's global
    entry point: its URL, the CA both regions share, the (shared) registration secret."""
    from env.region import global_entry_url
    from experiments.activities.region.actions import second_region

    env2 = second_region(s)
    if env2 is None:
        raise RuntimeError("global_entry: no second region in this run (run standby_region_up)")
    status = harness.environment(s).state()
    return {
        "TARGET": global_entry_url(env2.settings),
        "CA_FILE": str(status.tls_certificate),
        "REGISTRATION_SECRET": status.registration_secret or "",
    }


def _through_ingress(s: ChaosSettings) -> dict[str, str]:
    """`cwh load`'s target variables on the kubernetes runtime: the Ingress's URL and the
    registration secret the cluster's API pods hold (Secret `cloudwatcher-api`)."""
    from chaoslib.exceptions import ActivityFailed

    from experiments.kube.api import connect, secret_value

    if not s.env.kube_target:
        raise ActivityFailed(
            "no fleet on the kubernetes runtime without CWH_KUBE_TARGET (cwh_kube_target): "
            "the URL phones reach the cluster's Ingress at"
        )
    secret = secret_value(connect(s.env), "cloudwatcher-api", "registration-secret")
    return {"TARGET": s.env.kube_target, "REGISTRATION_SECRET": secret}


def stop_fleet(
    timeout_s: float = 240,
    interrupt: bool = False,
    end_when_recovered: bool = True,
    recovered_for_s: float = 15,
    consecutive: int = 5,
    owed_for_s: float = 60,
    *,
    configuration: Configuration,
) -> dict[str, Any]:
    """Let the fleet finish its run and reconcile (or interrupt it at once); always leaves no
    fleet process behind. Returns its summary's reconciliation.

    `end_when_recovered`: a steady fleet ends its run early once every path the phones use has
    recovered (`consecutive` good operations in a row, as the RTO probe counts them, from the
    first injection and since the journal's last event), has stayed so for `recovered_for_s`,
    and owes no phone a result
    acknowledged longer ago than that (a killed worker's job comes back when its claim
    expires). Owed results hold the finish for `owed_for_s` past the recovery at most: by then
    every claim has expired (30 s) and a result still owed is a lost request, which the
    fleet's read-back finds and the reconciliation counts whether the phones run on or not.
    What follows adds nothing to RTO or RPO but minutes to every trial. Its duration
    stays the bound; a later failure starts the wait again; a game day's storm, spike, ramp or
    diurnal shape runs whole (timed on the duration)."""
    s = harness.settings_of(configuration)
    path = s.run_dir / "fleet.pid"
    if not path.exists():
        return {"running": False}
    pid = int(path.read_text())
    deadline = time.monotonic() + timeout_s
    early_error = None
    if interrupt and pid_alive(pid):
        os.killpg(pid, signal.SIGINT)
    elif end_when_recovered and fleet_shape(s.run_dir) == "steady":
        try:
            _finish_when_recovered(s, pid, recovered_for_s, consecutive, owed_for_s, deadline)
        except InterruptExecution:
            raise  # Ctrl-C, SIGTERM, `cwh chaos stop`: the rollbacks interrupt the fleet
        except Exception as exc:  # the fleet runs to its bound; said in the journal, not lost
            early_error = f"{type(exc).__name__}: {exc}"
    try:
        wait_until(
            lambda: not pid_alive(pid),
            max(0.0, deadline - time.monotonic()),
            "the fleet finished",
            interval_s=0.5,
        )
    except TimeoutError:
        os.killpg(pid, signal.SIGKILL)
    finally:
        # Reap it when this process started it; a fleet of another process is only waited for.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        path.unlink(missing_ok=True)
    summary_path = s.run_dir / "summary.json"
    if not summary_path.exists():
        return {"running": False, "summary": None}
    summary = json.loads(summary_path.read_text())
    return {
        "running": False,
        "finished_early": summary.get("finished_early"),
        "early_finish_error": early_error,
        "reconciliation": summary["reconciliation"],
    }


def _finish_when_recovered(
    s: ChaosSettings, pid: int, hold_s: float, consecutive: int, owed_s: float, deadline: float
) -> None:
    """Ask the fleet to finish once every path has held its recovery (from the first injection
    and since the last fault event) for `hold_s` and nothing older than that is owed, or for
    `owed_s` whatever is owed (`stop_fleet`). Returns when it asked, or
    when the fleet ended or the deadline came first (or nothing was injected: then the whole
    run is the measurement). Polls its own loop, not `wait_until`: an error or an interrupt
    (Chaos Toolkit's, an exception) must not be taken for "not yet"."""
    journal = harness.fault_journal(s)
    injected = [e["wall"] for e in journal if e["event"] == "inject"]
    if not injected:
        return
    # Recovered as the RTO probe judges it (from the first injection: a request held across a
    # later event, an unlock, counts as the downtime it was), and again since the journal's last
    # event, so the fleet also sees 15 s of the system after its last change.
    first, last = min(injected), max(e["wall"] for e in journal)
    bounds = latency_bounds_s()
    ttr = bounds.pop("notification")
    tail = LedgerTail(s.run_dir / "fleet")
    ops: list[Operation] = []
    # The fleet's process outlives its phones while it reads back: the merged ledger marks
    # their end, and a finish asked then would be no finish.
    while (
        pid_alive(pid) and not (s.run_dir / "ledger.jsonl").exists() and time.monotonic() < deadline
    ):
        ops.extend(tail.read())
        ats = [recovered_at(ops, since, consecutive, ttr, bounds) for since in (first, last)]
        now = time.time()
        at = None if None in ats else max(a for a in ats if a is not None)
        if at is not None and now - at >= hold_s:
            owed = awaiting_results(ops, now - hold_s)
            if not owed or now - at >= owed_s:
                request_finish(s.run_dir, _finish_reason(at, first, last, now, owed, owed_s))
                return
        time.sleep(1.0)


def _finish_reason(
    at: float, first: float, last: float, now: float, owed: list[str], owed_s: float
) -> str:
    """Why `_finish_when_recovered` asked the fleet to finish, for its summary."""
    recovered = (
        f"every path had recovered {at - first:.1f} s after the first fault "
        f"({at - last:.1f} s after the last fault event), held for {now - at:.0f} s"
    )
    if not owed:
        return f"{recovered}, and no result was owed"
    return (
        f"{recovered}; {len(owed)} result(s) still owed, left to the read-back "
        f"(owed results hold the finish {owed_s:g} s past the recovery at most)"
    )
