"""The operation ledger (ARCHITECTURE.md): every operation the harness issues, and its outcome.

Three outcomes, as in Jepsen: `ok` (it happened), `fail` (it certainly did not), `info` (unknown:
a timeout or a connection lost mid-commit). Lost-write accounting is sound only with all three.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
    """

    op_id: str
    kind: str
    invoked_s: float
    completed_s: float
    invoked_wall: float
    outcome: Outcome
    server: str | None = None
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.completed_s - self.invoked_s

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
