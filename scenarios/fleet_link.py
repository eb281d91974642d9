"""Locust's side of shipping records (`scenarios/shipping.py`): what role this process has in the
fleet and the messages that role sends and answers.

- **Local** (one process, `LocalRunner`): its phones' batches go straight into its own collector.
- **Worker** (`--worker`, here or on another machine): batches go to the master as Locust
  messages and are resent until acknowledged. When the master asks (`DRAIN`) it stops its phones
  and sends its final batch, then waits (bounded) for the acknowledgements.
- **Master** (`--master`, or the parent of `--processes`): runs no phone; collects, and at the
  test's stop asks every connected worker for its final batch and waits (bounded) until each
  source is complete before Locust goes on to quit (Locust's own quit gives workers half a
  second, far too little for their phones to stop and their last records to arrive).

Imported by the locustfile's phone module only: Locust monkey-patches the process it runs in.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from locust.runners import STATE_MISSING, LocalRunner, MasterRunner, WorkerRunner

from scenarios.shipping import ACK, BATCH, DRAIN, Collector, Outbox

log = logging.getLogger("cwh.fleet")

#: The environment variables that make a run what it is: a worker with other values than its
#: master's would run another fleet, and its records are refused (the run fails, naming them).
RUN_SETTINGS = (
    "CWH_SHAPE",
    "CWH_MIX",
    "CWH_USERS",
    "CWH_DURATION_S",
    "CWH_SPAWN_RATE",
    "CWH_ARRIVAL_RATE",
    "CWH_WORKERS",
    "CWH_THINK_MEAN_S",
    "CWH_THINK_CAP_S",
    "CWH_OFFLINE_CHANCE",
    "CWH_RESUBMIT_CHANCE",
)
#: Beyond Locust's stop timeout (phones finishing their task), how long the master waits for
#: every worker's final batch, and a worker for the acknowledgement of its own.
DRAIN_MARGIN_S = 20.0


def run_config() -> dict[str, Any]:
    return {k: os.environ.get(k, "") for k in RUN_SETTINGS}


#: Take: the operations recorded since the last call (as JSON) and the histograms' snapshot.
Take = Callable[[], tuple[list[dict[str, Any]], dict[str, str]]]


class Link:
    """One per Locust process; `attach` at Locust's init event decides the role."""

    def __init__(self, take: Take, folder: Path) -> None:
        self.take, self.folder = take, folder
        self.outbox = Outbox(run_config())
        self.collector: Collector | None = None
        self.runner: Any = None
        self.source = f"{socket.gethostname()}_{os.getpid()}"
        self._lock = threading.Lock()  # gevent's, once Locust has patched the process
        #: Master: every worker ever heard from, those connected at the stop, and the greenlet
        #: that delivers workers' messages (blocking that one would stop the messages awaited).
        self.known: set[str] = set()
        self.present_at_stop: set[str] | None = None
        self._delivery: Any = None

    def attach(self, environment: Any) -> None:
        runner = self.runner = environment.runner
        if isinstance(runner, MasterRunner | LocalRunner):
            self.collector = Collector(self.folder, run_config())
        if isinstance(runner, MasterRunner):
            runner.register_message(BATCH, self._on_batch)
            environment.events.worker_connect.add_listener(
                lambda client_id, **_: self.known.add(client_id)
            )
        elif isinstance(runner, WorkerRunner):
            self.source = runner.client_id
            runner.register_message(ACK, lambda msg, **_: self.outbox.ack(int(msg.data["seq"])))
            runner.register_message(DRAIN, self._on_drain, concurrent=True)

    @property
    def role(self) -> str:
        if isinstance(self.runner, MasterRunner):
            return "master"
        return "worker" if isinstance(self.runner, WorkerRunner) else "local"

    # -- sending (local and worker) --------------------------------------------------------

    def ship(self, final: bool = False) -> None:
        """Send what is new (and what is overdue for an acknowledgement). Never raises: a
        batch that could not go stays unacknowledged and is sent again."""
        if self.role == "master":
            return
        with self._lock:
            ops, hdr = self.take()
            self.outbox.add_ops(ops)
            now = time.monotonic()
            batches = self.outbox.due(now) + self.outbox.batches(hdr, now, final)
            for batch in batches:
                self._send(batch)

    def _send(self, batch: dict[str, Any]) -> None:
        if self.collector is not None:  # local: the collector is ours
            self.outbox.ack(self.collector.receive(self.source, batch))
            return
        try:
            self.runner.send_message(BATCH, batch)
        except Exception as e:  # the connection to the master: resent later
            log.warning("batch %s not sent (%s): will be resent", batch["seq"], e)

    def finish(self, wait_s: float) -> bool:
        """The final batch, then (bounded) its acknowledgement and every earlier one's."""
        self.ship(final=True)
        deadline = time.monotonic() + wait_s
        while not self.outbox.settled and time.monotonic() < deadline:
            gevent.sleep(0.2)  # acknowledgements arrive meanwhile; polled against the deadline
            self.ship()
        return self.outbox.settled

    def _on_drain(self, environment: Any, msg: Any, **_: Any) -> None:
        environment.runner.stop()  # phones stop (bounded by the stop timeout), then finish
        if not self.finish(DRAIN_MARGIN_S):
            log.error("the master did not acknowledge every batch in %.0f s", DRAIN_MARGIN_S)

    # -- collecting (master and local) -----------------------------------------------------

    def _on_connect(self, client_id: str, **_: Any) -> None:
        self.known.add(client_id)

    def _on_batch(self, environment: Any, msg: Any, **_: Any) -> None:
        self._delivery = gevent.getcurrent()
        assert self.collector is not None
        self.known.add(msg.node_id)
        seq = self.collector.receive(msg.node_id, msg.data)
        self.runner.send_message(ACK, {"seq": seq}, client_id=msg.node_id)

    def on_test_stop(self, environment: Any) -> None:
        if self.role == "local":
            self.ship(final=True)
            self.present_at_stop = {self.source}
            self.write_manifest()
        elif self.role == "master":
            self.drain(environment)
        else:
            self.ship(final=True)  # a worker told to stop by Locust itself

    def drain(self, environment: Any) -> None:
        """Ask every connected worker for its final batch; wait until each source is complete
        or the deadline passes, then write the manifest."""
        runner = self.runner
        present = {c.id for c in runner.clients.all if c.state != STATE_MISSING}
        self.present_at_stop = present
        self.known |= present
        if gevent.getcurrent() is self._delivery:
            # Stopped from inside message delivery (the last worker quit): nothing can arrive
            # while this waits, and nobody is left to drain.
            self.write_manifest()
            return
        for client_id in present:
            try:
                runner.send_message(DRAIN, None, client_id=client_id)
            except Exception as e:
                log.warning("drain request to %s not sent: %s", client_id, e)
        assert self.collector is not None
        deadline = time.monotonic() + environment.stop_timeout + DRAIN_MARGIN_S
        waiting = present
        while waiting and time.monotonic() < deadline:
            gevent.sleep(0.1)  # batches arrive on the delivery greenlet; polled to the deadline
            gone = {c.id for c in runner.clients.all if c.state == STATE_MISSING}
            waiting = {c for c in present - gone if not self.collector.complete(c)}
        if waiting:
            log.error("no complete records from %s", ", ".join(sorted(waiting)))
        self.present_at_stop = present - {
            c.id for c in runner.clients.all if c.state == STATE_MISSING
        }
        self.write_manifest()

    def on_quitting(self) -> None:
        if self.role == "local":
            self.ship(final=True)
            self.present_at_stop = {self.source}
        elif self.role == "worker":
            self.ship(final=True)  # best effort: the master may be gone
        self.write_manifest()

    def write_manifest(self) -> None:
        if self.collector is None:
            return
        present = self.present_at_stop if self.present_at_stop is not None else set()
        lost = (self.known | set(self.collector.sources)) - present
        if self.role == "local":
            lost = set()
        self.collector.write_manifest(present, lost)
