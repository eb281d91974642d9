"""Getting every phone process's records to the one process that reconciles the run, with no
shared folder: Locust's own worker-to-master messages carry them, so workers may run on other
machines (`cwh load --worker --master-host H`).

What travels, per Locust process that runs phones (a *source*, named by Locust's worker id):
the operation ledger, the identities the phones registered (the read-back logs in as them), the
HDR histograms, and when the first ramp ended there. Records go in numbered batches:

- a batch carries what was recorded since the last one, and the whole of the histograms (adding
  two snapshots would count twice; the newest snapshot replaces the older);
- the master acknowledges each batch by its number; a batch unacknowledged after `RESEND_S` is
  sent again (a lost message, a worker reconnected to a master that restarted its socket); the
  master keeps each number once, so a batch sent twice counts once;
- the last batch is marked final and says how many batches and operations came before it: the
  master knows it has everything from a source when it holds every number up to it and the
  operations add up. A worker killed mid-run never sends it; what it shipped still counts, and
  the run says that source ended incomplete.

Pure: no Locust, no gevent. `Outbox` is the sending side, `Collector` the receiving side, which
writes the fleet folder that `cwh/fleet.py` reads (`ledger-<source>.jsonl`, `hdr-<source>.json`,
`identities-<source>.jsonl`, `ramped-<source>.json`, `sources.json`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slo.ledger import write_atomic

#: Locust message types: a batch (worker to master), its acknowledgement (master to worker),
#: and the master's request that a worker stop its phones and send its final batch.
BATCH = "cwh-batch"
ACK = "cwh-ack"
DRAIN = "cwh-drain"
#: Master to worker: its run settings differ from the master's (it quits, naming them).
REFUSE = "cwh-refuse"
#: Worker to master: its phones stopped and every batch was acknowledged; it quits now.
BYE = "cwh-bye"
#: A batch not acknowledged after this long is sent again.
RESEND_S = 3.0
#: Operations per batch at most: a worker that fell behind catches up in several messages
#: rather than one of many megabytes.
BATCH_OPS = 2000
#: The manifest of the sources, beside their files.
MANIFEST = "sources.json"


def file_part(source: str) -> str:
    """A source's name as a file name part (Locust's worker ids hold the host name)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", source)


@dataclass
class Outbox:
    """A phone process's records on their way to the master.

    `config` is what the process runs with (shape, mix, rates): the master refuses to merge a
    source whose run is not its own."""

    config: dict[str, Any]
    ops: list[dict[str, Any]] = field(default_factory=list)
    identities: list[list[str]] = field(default_factory=list)
    ramped: float | None = None
    next_seq: int = 0
    shipped_ops: int = 0
    final_sent: bool = False
    #: The master's run, from its first acknowledgement: a batch carries it, so another
    #: master (one restarted on the same port) refuses what was meant for the first.
    run: str | None = None
    #: seq -> (when last sent, the batch)
    unacked: dict[int, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def add_ops(self, ops: list[dict[str, Any]]) -> None:
        self.ops.extend(ops)

    def add_identity(self, device_id: str, client_id: str, secret: str) -> None:
        self.identities.append([device_id, client_id, secret])

    def batches(
        self, hdr: Mapping[str, str], now: float, final: bool = False
    ) -> list[dict[str, Any]]:
        """The new batches to send now: what was recorded since the last, at most `BATCH_OPS`
        operations each; none when nothing changed, unless `final` and no final batch went yet.
        Once the final batch has gone, anything later goes out final too (it supersedes the
        earlier final)."""
        closing = final or self.final_sent
        # An empty final batch only when none has gone yet: a flush after the end has nothing
        # to say.
        empty_final = final and not self.final_sent
        out: list[dict[str, Any]] = []
        while self.ops or self.identities or (empty_final and not out):
            ops, self.ops = self.ops[:BATCH_OPS], self.ops[BATCH_OPS:]
            idents, self.identities = self.identities[:BATCH_OPS], self.identities[BATCH_OPS:]
            last = closing and not self.ops and not self.identities
            self.shipped_ops += len(ops)
            batch: dict[str, Any] = {
                "seq": self.next_seq,
                "run": self.run,
                "config": self.config,
                # Recorded after the final batch went: the phones had not all stopped then.
                "late": self.final_sent,
                "ops": ops,
                "identities": idents,
                "hdr": dict(hdr),
                "ramped": self.ramped,
                "final": last,
            }
            if last:
                # Everything up to here: batches 0..seq and this many operations in all.
                batch["batches"] = self.next_seq + 1
                batch["total_ops"] = self.shipped_ops
                self.final_sent = True
            self.unacked[self.next_seq] = (now, batch)
            self.next_seq += 1
            out.append(batch)
        return out

    def ack(self, seq: int, run: str | None = None) -> None:
        self.unacked.pop(seq, None)
        if self.run is None and run is not None:
            self.run = run

    def due(self, now: float, resend_s: float = RESEND_S) -> list[dict[str, Any]]:
        """Batches sent but not acknowledged for `resend_s`, to send again (their send time is
        reset)."""
        out = []
        for seq, (sent, batch) in sorted(self.unacked.items()):
            if now - sent >= resend_s:
                self.unacked[seq] = (now, batch)
                out.append(batch)
        return out

    @property
    def settled(self) -> bool:
        """Everything sent has been acknowledged."""
        return not self.unacked


@dataclass
class SourceState:
    """What the master holds from one source."""

    config: dict[str, Any] = field(default_factory=dict)
    seqs: set[int] = field(default_factory=set)
    ops: int = 0
    identities: int = 0
    hdr_seq: int = -1
    batches: int | None = None
    total_ops: int | None = None
    resent: int = 0
    late_ops: int = 0

    @property
    def complete(self) -> bool:
        return (
            self.batches is not None
            and self.seqs == set(range(self.batches))
            and self.ops == self.total_ops
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "batches_received": len(self.seqs),
            "batches_final": self.batches,
            "operations": self.ops,
            "operations_final": self.total_ops,
            "identities": self.identities,
            "duplicates_ignored": self.resent,
            "late_operations": self.late_ops,
            "complete": self.complete,
        }


class Collector:
    """The master's side: keeps each source's batches once, in the fleet folder."""

    def __init__(self, folder: Path, config: dict[str, Any], run: str = "") -> None:
        self.folder, self.config, self.run = folder, config, run
        self.sources: dict[str, SourceState] = {}
        #: Sources that said goodbye (stopped their phones, delivered, then quit).
        self.departed: set[str] = set()
        folder.mkdir(parents=True, exist_ok=True)

    def foreign(self, batch: Mapping[str, Any]) -> bool:
        """A batch acknowledged before by another master's run: not this run's records."""
        return batch.get("run") not in (None, self.run)

    def receive(self, source: str, batch: Mapping[str, Any]) -> int:
        """Keep a batch (once) and return its number, to acknowledge. A batch seen before is
        acknowledged again and kept no second time."""
        state = self.sources.setdefault(source, SourceState())
        seq = int(batch["seq"])
        if seq in state.seqs:
            state.resent += 1
            return seq
        part = file_part(source)
        state.config = dict(batch.get("config") or {})
        if batch["ops"]:
            with open(self.folder / f"ledger-{part}.jsonl", "a") as f:
                f.writelines(json.dumps(op) + "\n" for op in batch["ops"])
        if batch["identities"]:
            with open(self.folder / f"identities-{part}.jsonl", "a") as f:
                f.writelines(json.dumps(i) + "\n" for i in batch["identities"])
        if seq > state.hdr_seq:
            # Snapshots: the newest replaces the older (a resent old batch must not win).
            state.hdr_seq = seq
            write_atomic(self.folder / f"hdr-{part}.json", json.dumps(batch["hdr"]))
            if batch.get("ramped") is not None:
                write_atomic(
                    self.folder / f"ramped-{part}.json", json.dumps({"wall": batch["ramped"]})
                )
        state.seqs.add(seq)
        state.ops += len(batch["ops"])
        if batch.get("late"):
            state.late_ops += len(batch["ops"])
        state.identities += len(batch["identities"])
        if batch.get("final") and (state.batches is None or seq + 1 > state.batches):
            state.batches, state.total_ops = int(batch["batches"]), int(batch["total_ops"])
        return seq

    def complete(self, source: str) -> bool:
        state = self.sources.get(source)
        return state is not None and state.complete

    def mismatched(self, source: str) -> list[str]:
        """The run settings a source ran with that differ from the master's (as numbers when
        both are: `2` and `2.0` agree)."""
        got = self.sources[source].config
        keys = set(self.config) | set(got)
        return sorted(k for k in keys if _setting(self.config.get(k)) != _setting(got.get(k)))

    def write_manifest(self, present: set[str], lost: set[str]) -> dict[str, Any]:
        """`sources.json`: every source, what arrived, whether it is complete; `present` are
        the workers still connected at the end (an incomplete one of those is an error), `lost`
        those the master had stopped hearing (killed, cut off)."""
        doc = {
            "config": self.config,
            "sources": {
                name: {
                    **state.to_json(),
                    "file": file_part(name),
                    "connected_at_end": name in present,
                    "departed": name in self.departed,
                    "lost": name in lost and name not in self.departed,
                    "config_differs": self.mismatched(name),
                }
                for name, state in sorted(self.sources.items())
            },
            # Workers the master knew that sent nothing at all: still connected (an error), or
            # lost before their first batch.
            "silent": sorted(present - set(self.sources)),
            "lost_silent": sorted(lost - set(self.sources)),
        }
        write_atomic(self.folder / MANIFEST, json.dumps(doc, indent=2))
        return doc


def _setting(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def problems(manifest: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """(errors, warnings) of a fleet's manifest. Errors: no manifest (the master never wrote
    one), a source that ran another run's settings, a source still connected at the end whose
    records did not all arrive, a connected worker that sent nothing. Warnings: a source lost
    mid-run (its records up to the loss are in)."""
    if manifest is None:
        return ["no sources.json: the fleet's master recorded nothing"], []
    errors, warnings = [], []
    for name, s in manifest["sources"].items():
        if s["config_differs"]:
            errors.append(f"worker {name} ran other settings ({', '.join(s['config_differs'])})")
        if s.get("late_operations"):
            errors.append(
                f"worker {name} recorded {s['late_operations']} operation(s) after its final "
                "batch: its phones had not all stopped when it said it was done"
            )
        if s["complete"]:
            continue
        got = f"{s['batches_received']} batches, {s['operations']} operations"
        if s["lost"]:
            warnings.append(
                f"worker {name} was lost mid-run: its records up to then are in ({got})"
            )
        else:
            errors.append(
                f"worker {name} did not deliver all its records ({got}; final batch "
                f"{'received' if s['batches_final'] is not None else 'missing'})"
            )
    for name in manifest.get("silent", []):
        errors.append(f"worker {name} was connected but sent no records")
    for name in manifest.get("lost_silent", []):
        warnings.append(f"worker {name} was lost before it sent any record")
    return errors, warnings
