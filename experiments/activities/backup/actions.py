"""Disasters that only a backup undoes: the whole PostgreSQL cluster lost with its data, and a
destructive mistake (a bad migration truncating a table); the runbook that restores from the
backup repository (`env/restore.py`), and the drill that proves a backup restores. Every step
is recorded in the run's fault journal.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from psycopg import sql

from env import restore
from experiments import harness
from experiments.activities.fleet.probes import ledger_ops
from experiments.settings import Configuration
from slo.ledger import write_atomic
from slo.reconcile import acknowledged

#: The fault journal's names of the two disasters and of the restore's own cut-over.
LOSE_CLUSTER = "lose-cluster"
REPLACE_CLUSTER = "replace-cluster"
VERIFY = "backup-verify"


def lose_cluster(*, configuration: Configuration) -> dict[str, Any]:
    """Every PostgreSQL member lost with its data (Patroni and PostgreSQL SIGKILLed and held
    down, data directories deleted): what only a restore from the repository brings back."""
    s = harness.settings_of(configuration)
    lost = restore.lose_cluster(harness.environment(s))
    # The clock starts at the kill, not after the deletions.
    entry = harness.mark(s, "inject", LOSE_CLUSTER, **{**lost, "wall": lost["killed_wall"]})
    return {**lost, "injected_wall": entry["wall"]}


def bad_migration(table: str = "requests", *, configuration: Configuration) -> dict[str, Any]:
    """A destructive mistake: `TRUNCATE table` through the write path, as a bad migration
    would. Records its transaction id (what a point-in-time restore stops just before) and
    when it began and committed."""
    s = harness.settings_of(configuration)
    url = harness.environment(s).state().urls["write"]
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.execute("SET LOCAL lock_timeout = '10s'")
        began = time.time()
        row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        xid = str(row[0])
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
        conn.commit()
    entry = harness.mark(s, "inject", f"truncate-{table}", table=table, xid=xid, began_wall=began)
    return {"table": table, "xid": xid, "began_wall": began, "injected_wall": entry["wall"]}


def restore_from_backup(
    before_mistake: bool = False, timeout_s: float = 900, *, configuration: Configuration
) -> dict[str, Any]:
    """The runbook: replace the cluster with one restored from the repository and wait until
    it serves, every replica streaming. With `before_mistake`, to just before the run's last
    `truncate-` fault committed (from the newest backup that ended before it); else to the end
    of the archive. Marks every open fault restored."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    xid, before = "", None
    if before_mistake:
        mistakes = [e for e in harness.fault_journal(s) if e["fault"].startswith("truncate-")]
        if not mistakes:
            raise RuntimeError("no mistake in this run's journal to recover from")
        xid, before = mistakes[-1]["xid"], mistakes[-1]["began_wall"]
    done = restore.restore_cluster(env, target_xid=xid, before_wall=before, timeout_s=timeout_s)
    if before_mistake:
        # Replacing a live cluster is itself a cut: what was acknowledged since the mistake
        # goes with it (the RPO of this restore), and the phones see the outage.
        harness.mark(
            s, "inject", REPLACE_CLUSTER, **{**done["lost"], "wall": done["lost"]["killed_wall"]}
        )
    for fault in harness.open_faults(s):
        harness.mark(s, "restore", fault["fault"], backup=done["backup"])
    return done


def restore_if_lost(*, configuration: Configuration) -> dict[str, Any] | None:
    """A rollback: when no member has data (the experiment stopped between the loss and the
    restore), restore the cluster from the repository; else nothing."""
    s = harness.settings_of(configuration)
    env = harness.environment(s)
    if not restore.cluster_lost(env):
        return None
    done = restore.restore_cluster(env)
    for fault in harness.open_faults(s):
        harness.mark(s, "restore", fault["fault"], backup=done["backup"], by="rollback")
    return done


def verify_backup(*, configuration: Configuration) -> dict[str, Any]:
    """The weekly drill (`env.restore.verify_backup`) under the fleet: `pgbackrest verify`,
    then the newest backup and the archive restored into a scratch instance and compared with
    the live cluster and with every request the fleet had acknowledged by the restored point.
    Hurts nothing (the fleet's RTO must be 0): recorded as a drill in the fault journal, its
    result in `verify.json` for `backup_verified`."""
    s = harness.settings_of(configuration)
    acked = {rid: a["acked_wall"] for rid, a in acknowledged(ledger_ops(s)).items()}
    harness.mark(s, "inject", VERIFY)
    try:
        result = restore.verify_backup(harness.environment(s), acked)
    finally:
        harness.mark(s, "restore", VERIFY)
    write_atomic(s.run_dir / "verify.json", json.dumps(result, indent=2))
    return result
