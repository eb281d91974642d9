"""The restore drill on the real cluster: every member's data deleted, then the cluster restored
from the newest backup plus the archive by Patroni and pgBackRest (`env/restore.py`). It is the
same database (its system identifier), on a new timeline, with every archived commit back and
nothing after a gap; it takes writes through the usual path and archives again."""

from __future__ import annotations

import time

import pytest

from env.local import LocalEnvironment
from env.process import pid_alive
from env.restore import lose_cluster, restore_cluster
from tests.env.test_backups import archived_max, full_backups, switch_wal
from tests.helpers import members, poll, primary_of, query, wait_healthy

pytestmark = [pytest.mark.env, pytest.mark.fault, pytest.mark.dr]

TABLE = "drill_marks"


def sysid(url: str) -> int:
    return int(query(url, "SELECT system_identifier FROM pg_control_system()")[0][0])


def test_a_lost_cluster_is_restored_with_every_archived_commit(local_env: LocalEnvironment):
    before = wait_healthy(local_env)
    poll(lambda: full_backups(local_env), 180, "a full backup in the repository", 2)
    primary = primary_of(before)
    member_url = before["urls"]["members"][primary]
    write = before["urls"]["write"]
    identity = sysid(member_url)
    timeline = members(before)[primary]["timeline"]
    query(write, f"DROP TABLE IF EXISTS {TABLE}")
    query(write, f"CREATE TABLE {TABLE} (n int PRIMARY KEY)")
    for n in range(1, 51):  # one commit each
        query(write, f"INSERT INTO {TABLE} VALUES (%s)", (n,))
    segment = switch_wal(member_url)
    poll(lambda: archived_max(local_env) >= segment, 60, f"{segment} archived", 0.5)
    for n in range(51, 61):  # the tail: in a segment the archive may not hold yet
        query(write, f"INSERT INTO {TABLE} VALUES (%s)", (n,))
    newest = local_env.backups()[-1]["label"]

    lost = lose_cluster(local_env)
    # The fault really happened: every Patroni and postmaster is dead, every data dir empty.
    assert len(lost["killed_pids"]) == 2 * len(lost["members"])
    assert not any(pid_alive(p) for p in lost["killed_pids"])
    assert not any(
        any(local_env.layout.pg_data(m).iterdir()) for m in range(local_env.settings.pg_members)
    )

    done = restore_cluster(local_env)
    after = wait_healthy(local_env)
    new_primary = primary_of(after)
    assert done["primary"] == new_primary
    # The same database, restored (initdb would make a new identifier), on a new timeline.
    assert sysid(after["urls"]["members"][new_primary]) == identity
    assert members(after)[new_primary]["timeline"] > timeline
    assert done["backup"] == newest
    # Every archived commit is back, and the restored ones have no gap: WAL replays in order.
    kept = [r[0] for r in query(write, f"SELECT n FROM {TABLE} ORDER BY n")]
    assert kept[:50] == list(range(1, 51))
    assert kept == list(range(1, len(kept) + 1)), kept
    # The usual write path takes writes, and the new timeline reaches the archive.
    query(write, f"INSERT INTO {TABLE} VALUES (1000)")
    segment = switch_wal(after["urls"]["members"][new_primary])
    assert int(segment[:8], 16) == members(after)[new_primary]["timeline"]
    poll(lambda: archived_max(local_env) >= segment, 60, f"{segment} archived", 0.5)
    query(write, f"DROP TABLE {TABLE}")


def test_a_target_recovery_cannot_reach_is_refused_before_anything_is_lost(
    local_env: LocalEnvironment,
):
    before = wait_healthy(local_env)
    pids = {n: m["postgres_pid"] for n, m in members(before).items()}
    for xid in ("99999999999", "abc"):
        with pytest.raises(ValueError, match="transaction"):
            restore_cluster(local_env, target_xid=xid, before_wall=time.time())
    # Nothing was stopped: the same postmasters serve.
    after = wait_healthy(local_env)
    assert {n: m["postgres_pid"] for n, m in members(after).items()} == pids
