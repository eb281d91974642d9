"""What a restore brought back, checked against the fleet's ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from experiments import harness
from experiments.activities.backup.actions import REPLACE_CLUSTER
from experiments.activities.fleet.probes import ledger_ops
from experiments.settings import Configuration
from slo.ledger import write_atomic
from slo.pitr import pitr_check
from slo.reconcile import acknowledged


def pitr_verified(table: str = "requests", *, configuration: Configuration) -> dict[str, Any]:
    """Row by row from the ledger (`slo.pitr`): every request acknowledged before the mistake
    is back, none acknowledged between the mistake and the restore is, every one acknowledged
    after it is kept. Reads the database directly (not the API: a read would not tell a lost
    row from one the API hides). Requires the fleet to have finished; adds `pitr` to
    `chaos.json` (the `pitr-exact` objective reads it)."""
    s = harness.settings_of(configuration)
    journal = harness.fault_journal(s)
    mistake = next((e for e in journal if e["fault"] == f"truncate-{table}"), None)
    replaced = next((e for e in journal if e["fault"] == REPLACE_CLUSTER), None)
    if mistake is None or replaced is None:
        raise RuntimeError("the journal has no mistake or no restore after it: nothing to check")
    acked = {rid: a["acked_wall"] for rid, a in acknowledged(ledger_ops(s)).items()}
    url = harness.environment(s).state().urls["write"]
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT request_id::text FROM requests WHERE request_id = ANY(%s::uuid[])",
            (list(acked),),
        ).fetchall()
    result = pitr_check(
        acked,
        (r[0] for r in rows),
        mistake["began_wall"],
        mistake["wall"],
        replaced["wall"],
    )
    _add_to_chaos(s.run_dir / "chaos.json", "pitr", result)
    return result


def backup_exists(*, configuration: Configuration) -> bool:
    """The repository holds at least one good backup: without one there is nothing to drill."""
    env = harness.environment(harness.settings_of(configuration))
    return any(not b["error"] for b in env.backups())


def backup_verified(*, configuration: Configuration) -> dict[str, Any]:
    """The verify drill's result (`verify.json`) added to `chaos.json` as `verify` (the
    `backup-verified` objective reads its `wrong`)."""
    s = harness.settings_of(configuration)
    found = s.run_dir / "verify.json"
    if not found.exists():
        raise RuntimeError("no verify drill ran in this run")
    result: dict[str, Any] = json.loads(found.read_text())
    _add_to_chaos(s.run_dir / "chaos.json", "verify", result)
    return result


def _add_to_chaos(path: Path, key: str, result: dict[str, Any]) -> None:
    """`result` into the run's `chaos.json` under `key`, where the gate's objectives read it
    (written by the `recovery` probe before: nothing to add to without it)."""
    if path.exists():
        chaos = json.loads(path.read_text())
        chaos[key] = result
        write_atomic(path, json.dumps(chaos, indent=2))
