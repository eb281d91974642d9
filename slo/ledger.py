"""The operation ledger (ARCHITECTURE.md): every operation the harness issues, and its outcome.

Three outcomes, as in Jepsen: `ok` (it happened), `fail` (it certainly did not), `info` (unknown:
a timeout or a connection lost mid-commit). Lost-write accounting is sound only with all three.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Outcome = Literal["ok", "fail", "info"]


@dataclass(frozen=True)
class Operation:
    """One operation.

    Attributes:
        op_id: unique id (for writes, the key the system stores, so it can be read back).
        kind: submit, read, sync, notification, write, ...
        invoked_s: monotonic time the operation started, in seconds.
        completed_s: monotonic time its outcome was known, in seconds.
        invoked_wall: UTC wall-clock time it started (seconds since the epoch), for reports.
        outcome: ok, fail or info.
        server: which server answered (e.g. the PostgreSQL member), when known.
        error: the error's text for fail and info.
        detail: what reconciliation needs to know of it (for a submit: device, request id and
            idempotency key; for a notification: request id, event id, socket or sync).
    """

    op_id: str
    kind: str
    invoked_s: float
    completed_s: float
    invoked_wall: float
    outcome: Outcome
    server: str | None = None
    error: str | None = None
    detail: dict[str, Any] | None = None

    @property
    def latency_s(self) -> float:
        return self.completed_s - self.invoked_s

    def to_json(self) -> dict[str, Any]:
        """The operation as JSON types; `detail` is copied one level deep (its values are JSON
        scalars or are not changed after the operation is recorded)."""
        # Not dataclasses.asdict: its recursive deep copy was 4 % of a flat-out phone's CPU.
        return {
            "op_id": self.op_id,
            "kind": self.kind,
            "invoked_s": self.invoked_s,
            "completed_s": self.completed_s,
            "invoked_wall": self.invoked_wall,
            "outcome": self.outcome,
            "server": self.server,
            "error": self.error,
            "detail": None if self.detail is None else dict(self.detail),
        }


def merge(ledgers: Iterable[Iterable[Operation]]) -> list[Operation]:
    """One ledger from the ledgers of several load workers, in invocation order (wall clock:
    monotonic clocks of different processes do not compare).

    Raises:
        ValueError: an operation id appears twice (two workers must never share ids).
    """
    out: list[Operation] = []
    seen: set[tuple[str, str]] = set()
    for ledger in ledgers:
        for op in ledger:
            key = (op.kind, op.op_id)
            if key in seen:
                raise ValueError(f"operation {op.kind} {op.op_id} is in two ledgers")
            seen.add(key)
            out.append(op)
    out.sort(key=lambda o: (o.invoked_wall, o.op_id))
    return out


def write_atomic(path: Path, text: str) -> None:
    """Write a run's record whole or not at all: a temporary file beside it, renamed over it,
    so a reader (the gate, a report) never sees half a file, even when the writer dies."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: Path, ops: Iterable[Operation]) -> int:
    """Write a ledger as JSON lines (atomically); returns how many operations."""
    lines = [json.dumps(op.to_json()) + "\n" for op in ops]
    write_atomic(path, "".join(lines))
    return len(lines)


def read_jsonl(path: Path) -> list[Operation]:
    """Read a ledger written by `write_jsonl`; a malformed line is an error naming it."""
    ops = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                ops.append(Operation(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a ledger operation ({exc})") from None
    return ops
