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

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from locust.dispatch import UsersDispatcher
from locust.runners import (
    STATE_MISSING,
    STATE_RUNNING,
    STATE_SPAWNING,
    LocalRunner,
    MasterRunner,
    WorkerNode,
    WorkerNodes,
    WorkerRunner,
)

from scenarios.shipping import ACK, BATCH, BYE, DRAIN, REFUSE, Collector, Outbox

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


def _workers_now(nodes: WorkerNodes) -> list[WorkerNode]:
    """The master's workers as they are now: a list, not Locust's live view of them."""
    return [n for n in (nodes.get(k) for k in nodes) if n is not None]


# Locust's master walks `clients.all`, a live view, in its heartbeat loop, and rebalances when
# it finds a worker missing, which yields to the other greenlets; a worker quitting meanwhile
# is deleted, and the loop dies on its id with KeyError, an unhandled greenlet exception that
# makes Locust exit 2 and fails the run (seen: a worker stopped a quarter second after the
# master noticed another one was lost). Walking the workers of the loop's start instead, a
# worker removed meanwhile only has its heartbeat counted down once more.
WorkerNodes.all = property(_workers_now)  # type: ignore[assignment]


# Locust's dispatcher says a dispatch is in progress until its generator passes its last line,
# and the generator of a dispatch that only rebalances (a worker lost or joined, the user count
# already at its target) returns before it: the flag stays set until the next ramp. Every
# master path that rebalances checks it (a worker joining, quitting or healing) and did nothing
# meanwhile. Seen: a worker restarted 40 ms into the rebalance of a lost one's phones got none
# for 60 s, until Locust removed the dead worker and dispatched again. The flag is cleared
# when the current dispatch's generator is exhausted, whichever way it ended.
_locust_next = UsersDispatcher.__next__


def _next_dispatch(self: UsersDispatcher) -> dict[str, dict[str, int]]:
    try:
        return _locust_next(self)
    except StopIteration:
        self._dispatch_in_progress = False
        raise


UsersDispatcher.__next__ = _next_dispatch  # type: ignore[method-assign]


def run_config() -> dict[str, Any]:
    return {k: os.environ.get(k, "") for k in RUN_SETTINGS}


#: Take: the operations recorded since the last call (as JSON) and the histograms' snapshot.
Take = Callable[[], tuple[list[dict[str, Any]], dict[str, str]]]


class Link:
    """One per Locust process; `attach` at Locust's init event decides the role."""

    def __init__(
        self, take: Take, folder: Path, quiesce: Callable[[], None] = lambda: None
    ) -> None:
        #: `quiesce` stops whatever records apart from the phones (their socket readers), so
        #: that the final batch is final.
        self.take, self.folder, self.quiesce = take, folder, quiesce
        self.outbox = Outbox(run_config())
        self.collector: Collector | None = None
        self.runner: Any = None
        self.source = f"{socket.gethostname()}_{os.getpid()}"
        self._lock = threading.Lock()  # gevent's, once Locust has patched the process
        #: Master: every worker ever heard from, those connected at the stop, and the greenlet
        #: that delivers workers' messages (blocking that one would stop the messages awaited).
        self.known: set[str] = set()
        self.present_at_stop: set[str] | None = None
        #: Master: workers that connected while a spawn was being dispatched (`_on_connect`).
        self.joined_while_spawning: set[str] = set()
        self._delivery: Any = None
        #: Worker: its phones are stopping for good (drained, or quitting); from then on a
        #: spawn message the master sent meanwhile (a rebalance) starts no phone.
        self.finishing = False

    def attach(self, environment: Any) -> None:
        runner = self.runner = environment.runner
        if isinstance(runner, MasterRunner | LocalRunner):
            self.collector = Collector(self.folder, run_config(), uuid.uuid4().hex)
        if isinstance(runner, MasterRunner):
            runner.register_message(BATCH, self._on_batch)
            runner.register_message(BYE, self._on_bye)
            environment.events.worker_connect.add_listener(self._on_connect)
            environment.events.spawning_complete.add_listener(self._rebalance_late_joiners)
        elif isinstance(runner, WorkerRunner):
            self.source = runner.client_id
            runner.register_message(ACK, self._on_ack)
            runner.register_message(DRAIN, self._on_drain, concurrent=True)
            runner.register_message(REFUSE, self._on_refuse)
            # Added after Locust's own quitting listener, so (the event fires in reverse) before
            # it tells the master it quits: the phones stop and the last records arrive first.
            environment.events.quitting.add_listener(self._worker_quitting)
            self._refuse_spawns_when_finishing(runner)
            # The worker's own folder says which source it is (what the master's files name).
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "source").write_text(self.source)

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
        self.quiesce()
        self.ship(final=True)
        deadline = time.monotonic() + wait_s
        while not self.outbox.settled and time.monotonic() < deadline:
            gevent.sleep(0.2)  # acknowledgements arrive meanwhile; polled against the deadline
            self.ship()
        return self.outbox.settled

    def _on_ack(self, environment: Any, msg: Any, **_: Any) -> None:
        seq = int(msg.data["seq"])
        if msg.data.get("refused"):
            # Meant for a master that is gone: this one's run is another.
            log.error("batch %s belonged to another master's run: dropped", seq)
        self.outbox.ack(seq, msg.data.get("run"))

    def _on_refuse(self, environment: Any, msg: Any, **_: Any) -> None:
        log.error(
            "the master runs other settings (%s): this worker quits; start it with the master's",
            ", ".join(msg.data["differs"]),
        )
        environment.process_exit_code = 2
        gevent.spawn(environment.runner.quit)

    def _on_drain(self, environment: Any, msg: Any, **_: Any) -> None:
        self._stop_and_finish(environment)

    def _worker_quitting(self, environment: Any, **_: Any) -> None:
        self._stop_and_finish(environment)
        try:
            self.runner.send_message(BYE, {"operations": self.outbox.shipped_ops})
        except Exception as e:  # the master is gone: it will count this worker lost
            log.warning("goodbye not sent: %s", e)

    def _refuse_spawns_when_finishing(self, runner: WorkerRunner) -> None:
        """Wrap the worker's message handler: a spawn that arrives once this worker finishes is
        dropped. The master does not know a worker quits until Locust's `quit` message, which
        goes after our final batch; a rebalance meanwhile (another worker lost or joined) would
        start phones whose records come after the final batch (seen: 7 operations late, from a
        worker SIGTERMed while the master rebalanced a lost worker's phones)."""
        handle = runner.handle_message

        def handle_unless_finishing(msg: Any) -> None:
            if msg.type == "spawn" and self.finishing:
                log.info("spawn message after this worker began to finish: no phone started")
                return
            handle(msg)

        runner.handle_message = handle_unless_finishing  # type: ignore[method-assign]

    def _stop_and_finish(self, environment: Any) -> None:
        self.finishing = True  # before the stop: no spawn may slip in after it
        environment.runner.stop()  # phones stop (bounded by the stop timeout), then finish
        if not self.finish(DRAIN_MARGIN_S):
            log.error("the master did not acknowledge every batch in %.0f s", DRAIN_MARGIN_S)
        # What this worker recorded, in its own folder: what the master must have received.
        (self.folder / "recorded.json").write_text(
            json.dumps({"source": self.source, "operations": self.outbox.shipped_ops})
        )

    # -- collecting (master and local) -----------------------------------------------------

    def _on_connect(self, client_id: str, **_: Any) -> None:
        self.known.add(client_id)
        # Locust's master gives a worker that connects mid-run its share of the phones only
        # when no spawn is being dispatched at that moment, and nothing gives it one later: a
        # worker restarted just as the master rebalanced a lost one's phones sat idle until
        # the shape's next change (seen in CI: connected 62 ms after that rebalance began, no
        # phone in the next 60 s). Such a worker is rebalanced in once the spawn completes.
        dispatcher = getattr(self.runner, "_users_dispatcher", None)
        if dispatcher is not None and (
            self.runner.state == STATE_SPAWNING or dispatcher.dispatch_in_progress
        ):
            self.joined_while_spawning.add(client_id)

    def _rebalance_late_joiners(self, **_: Any) -> None:
        """At the end of a spawn: a worker that joined during it gets its share, once the
        master runs (it fires this before the workers' reports may have made it RUNNING)."""
        if not self.joined_while_spawning or not self.runner.rebalancing_enabled():
            return
        joined = sorted(self.joined_while_spawning)
        self.joined_while_spawning.clear()
        # Not from inside the event: the master fires it from the greenlet that dispatched.
        gevent.spawn(self._rebalance_when_running, joined)

    def _rebalance_when_running(self, joined: list[str], wait_s: float = 10.0) -> None:
        runner = self.runner
        deadline = time.monotonic() + wait_s
        while runner.state == STATE_SPAWNING and time.monotonic() < deadline:
            gevent.sleep(0.1)  # the workers' spawn reports arrive meanwhile
        dispatcher = getattr(runner, "_users_dispatcher", None)
        if runner.state != STATE_RUNNING or dispatcher is None or dispatcher.dispatch_in_progress:
            return  # stopping (nothing to give), or a newer dispatch that includes them
        log.info("worker(s) %s joined while phones were being spawned: rebalancing", joined)
        runner.start(runner.target_user_count, runner.spawn_rate)

    def _on_batch(self, environment: Any, msg: Any, **_: Any) -> None:
        self._delivery = gevent.getcurrent()
        assert self.collector is not None
        source, batch = msg.node_id, msg.data
        if source not in self.known and source not in self.runner.clients:
            # Not a worker of this master (one of a master that was here before, a stray on
            # the same port): its records are not this run's.
            log.warning("records from %s, not a worker of this run: ignored", source)
            return
        run = self.collector.run
        if self.collector.foreign(batch):
            self.runner.send_message(
                ACK, {"seq": batch["seq"], "run": run, "refused": True}, client_id=source
            )
            return
        first = source not in self.collector.sources
        seq = self.collector.receive(source, batch)
        self.runner.send_message(ACK, {"seq": seq, "run": run}, client_id=source)
        if first and (differs := self.collector.mismatched(source)):
            log.error("worker %s runs other settings (%s)", source, ", ".join(differs))
            self.runner.send_message(REFUSE, {"differs": differs}, client_id=source)

    def _on_bye(self, environment: Any, msg: Any, **_: Any) -> None:
        if self.collector is not None:
            self.collector.departed.add(msg.node_id)

    def on_test_stop(self, environment: Any) -> None:
        if self.role == "local":
            self.quiesce()
            self.ship(final=True)
            self.present_at_stop = {self.source}
            self.write_manifest()
        elif self.role == "master":
            self.drain(environment)
        else:
            self.quiesce()
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
        # A worker's own quitting listener (_worker_quitting) has stopped and finished.
        if self.role == "local":
            self.quiesce()
            self.ship(final=True)
            self.present_at_stop = {self.source}
        self.write_manifest()

    def write_manifest(self) -> None:
        if self.collector is None:
            return
        present = self.present_at_stop if self.present_at_stop is not None else set()
        lost = (self.known | set(self.collector.sources)) - present
        if self.role == "local":
            lost = set()
        self.collector.write_manifest(present, lost)
