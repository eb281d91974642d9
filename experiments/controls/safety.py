"""The harness's Chaos Toolkit control: the run folder, the stop conditions, and the restore
that runs after everything else, whatever happened.

Declared in every experiment (`controls`), with arguments:
    max_failed_share, max_hurt_s: interrupt when at least this share of the phones' operations
        failed over the last 10 s, for longer than `max_hurt_s` (users badly hurt);
    max_fault_s: interrupt when a fault has been injected for longer than this;
and always interrupts when the stop file exists (`cwh chaos stop`). It refuses, before anything
runs, an experiment whose `cwh` extension does not declare the settings' runtime. Its settings
come from the experiment's `configuration`, as every activity's (`experiments.settings`).

Interrupting sends the experiment's process SIGUSR1, which Chaos Toolkit turns into an
interruption that still plays the rollbacks; after them, `after_experiment_control` restores
whatever a rollback could not (toxics, held components, knobs) and waits for full health.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from chaoslib.exceptions import InterruptExecution
from chaoslib.exit import exit_gracefully

from experiments import harness
from experiments.activities.fleet.probes import LedgerTail, failed_share
from experiments.settings import ChaosSettings, Configuration, runtimes_of
from slo.ledger import Operation, write_atomic

log = logging.getLogger("cwh.chaos.safety")

HURT_WINDOW_S = 10.0
CHECK_EVERY_S = 1.0

_watcher: Watcher | None = None
#: This process's file in `chaos-running` (removed by `cleanup_control`, which Chaos Toolkit
#: calls without the configuration).
_running: Path | None = None


class Watcher(threading.Thread):
    def __init__(
        self, s: ChaosSettings, max_failed_share: float, max_hurt_s: float, max_fault_s: float
    ) -> None:
        super().__init__(name="cwh-safety", daemon=True)
        self.s = s
        self.max_failed_share = max_failed_share
        self.max_hurt_s = max_hurt_s
        self.max_fault_s = max_fault_s
        self.done = threading.Event()
        self.reason: str | None = None
        self.tail = LedgerTail(s.run_dir / "fleet")
        self.recent: list[Operation] = []  # the last HURT_WINDOW_S of the fleet's operations

    def check(self, hurt_since: float | None) -> tuple[str | None, float | None]:
        now = time.time()
        if harness.stop_file(self.s.env).exists():
            return "stopped from outside (cwh chaos stop)", hurt_since
        for fault in harness.open_faults(self.s):
            if now - fault["wall"] > self.max_fault_s:
                return f"fault {fault['fault']} injected for over {self.max_fault_s:g} s", None
        self.recent = [
            o for o in [*self.recent, *self.tail.read()] if o.invoked_wall >= now - HURT_WINDOW_S
        ]
        hurt = failed_share(self.recent, HURT_WINDOW_S, now)
        if hurt["operations"] >= 5 and hurt["share"] >= self.max_failed_share:
            hurt_since = hurt_since or now
            if now - hurt_since > self.max_hurt_s:
                return (
                    f"{hurt['share']:.0%} of the phones' operations failing for over "
                    f"{self.max_hurt_s:g} s",
                    hurt_since,
                )
            return None, hurt_since
        return None, None

    def run(self) -> None:
        hurt_since: float | None = None
        while not self.done.wait(CHECK_EVERY_S):
            try:
                self.reason, hurt_since = self.check(hurt_since)
            except Exception as exc:  # a probe's hiccup must not kill the guard
                log.warning("safety check failed: %s", exc)
                continue
            if self.reason:
                log.error("stop condition: %s: interrupting, rollbacks will play", self.reason)
                write_atomic(
                    harness.run_dir(self.s) / "safety.json",
                    json.dumps({"stopped_wall": time.time(), "reason": self.reason}),
                )
                exit_gracefully()
                return


def before_experiment_control(
    context: dict[str, Any],
    *,
    configuration: Configuration,
    max_failed_share: float = 0.9,
    max_hurt_s: float = 120.0,
    max_fault_s: float = 300.0,
    **_: Any,
) -> None:
    global _watcher, _running
    name = next(
        (e.get("experiment") for e in context.get("extensions", []) if e.get("name") == "cwh"),
        None,
    )
    harness.bare_run_dir(name or "experiment")  # a bare `chaos run`'s folder, named first
    s = harness.settings_of(configuration)
    if s.env.runtime not in (runtimes := runtimes_of(context)):
        # A bare `chaos run` of an experiment on a runtime it does not declare: refused up
        # front, as `cwh chaos run` refuses it, before any fault.
        raise InterruptExecution(
            f"{name} needs the {' or '.join(runtimes)} runtime, not {s.env.runtime}"
        )
    running = harness.running_dir(s.env)
    running.mkdir(parents=True, exist_ok=True)
    if not any(running.iterdir()):
        harness.stop_file(s.env).unlink(missing_ok=True)  # left by a stop when nothing ran
    _running = running / str(os.getpid())
    _running.write_text(str(harness.run_dir(s)))
    _watcher = Watcher(s, max_failed_share, max_hurt_s, max_fault_s)
    _watcher.start()


def after_experiment_control(
    context: dict[str, Any],
    *,
    configuration: Configuration,
    state: Any = None,
    **_: Any,
) -> None:
    """After the rollbacks: nothing may stay injected, whatever happened before."""
    if _watcher is not None:
        _watcher.done.set()
    s = harness.settings_of(configuration)
    restored = harness.restore_all(s, wait_s=180, stop_fleet=True)
    write_atomic(harness.run_dir(s) / "restored.json", json.dumps(restored))
    if isinstance(state, dict):  # the journal: what restoring did, and any step that failed
        state["cwh_restore"] = restored


def cleanup_control() -> None:
    if _watcher is not None:
        _watcher.done.set()
    if _running is not None:
        _running.unlink(missing_ok=True)
