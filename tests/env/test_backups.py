"""Backups and continuous archiving with pgBackRest, on the real cluster: the leading
scheduler's first backup is full and in the repository, WAL reaches the archive from whichever
member is primary (also after a switchover, on the new timeline), and the backup SLOs pass on
fresh data and fail on a backup older than their objective."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from env.local import LocalEnvironment
from env.process import pid_alive
from slo.definitions import DEFAULT_DIR
from slo.sources import Window
from tests.helpers import (
    archived_max,
    full_backups,
    gate,
    poll,
    switch_wal,
    wait_healthy,
)

pytestmark = [pytest.mark.env, pytest.mark.dr]

CWH = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "cwh")


def test_the_first_backup_is_full_and_listed_by_the_cli(local_env: LocalEnvironment):
    wait_healthy(local_env)
    fulls = poll(lambda: full_backups(local_env), 180, "a full backup in the repository", 2)
    assert fulls[0]["bytes"] > 10_000_000  # a whole cluster
    # With the WAL range a restore of it needs.
    assert fulls[0]["wal_start"] <= fulls[0]["wal_stop"]
    assert fulls[0]["wal_start"].startswith("0000000")
    env = {**local_env.settings.to_environ(), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [CWH, "env", "backups", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert fulls[0]["label"] in {b["label"] for b in json.loads(proc.stdout)}


def test_wal_reaches_the_archive_from_whichever_member_is_primary(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    before = status["primary"]
    segment = switch_wal(status["urls"]["members"][before])
    poll(lambda: archived_max(local_env) >= segment or None, 60, f"{segment} archived", 0.5)

    # A planned switchover: the new primary archives on its own timeline, with no change to
    # any config (every member's archive command points at the repository).
    target = status["pg_sync_standby"]
    assert target not in (None, before), status["pg_sync_standby"]
    patroni = next(c for c in status["components"] if c["component"] == before)
    resp = requests.post(
        f"http://127.0.0.1:{patroni['ports']['patroni']}/switchover",
        json={"leader": before, "candidate": target},
        auth=local_env.patroni_auth(),
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    status = poll(
        lambda: (s := local_env.status())["primary"] == target and s, 60, f"{target} primary"
    )
    after = switch_wal(status["urls"]["members"][target])
    assert int(after[:8], 16) > int(segment[:8], 16), (segment, after)  # a new timeline
    poll(lambda: archived_max(local_env) >= after or None, 90, f"{after} archived", 0.5)
    wait_healthy(local_env)


def _value(url: str, expr: str) -> float | None:
    resp = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    result = resp.json()["data"]["result"] if resp.ok else []
    return float(result[0]["value"][1]) if result else None


def test_a_failing_archive_shows_in_the_archive_metrics_and_catches_up(local_env: LocalEnvironment):
    """The repository host down: the primary's closed segment waits (what archive-lag reads)
    and its pushes fail (archive-failures); back up, the archive catches up by itself."""
    status = wait_healthy(local_env)
    prometheus = status["urls"]["prometheus"]
    (failed,) = poll(
        lambda: (v := _value(prometheus, "sum(pg_archiver_failed_count)")) is not None and (v,),
        60,
        "archiver scraped",
        1,
    )
    repo = next(c for c in status["components"] if c["component"] == "backup-repo")
    local_env.hold("backup-repo", 300)
    try:
        os.kill(repo["pid"], signal.SIGKILL)
        poll(lambda: not pid_alive(repo["pid"]) or None, 10, "the repository host dead")
        switch_wal(status["urls"]["members"][status["primary"]])
        poll(
            lambda: (_value(prometheus, "max(pg_archive_ready_segments)") or 0) >= 1 or None,
            60,
            "a segment waiting to be archived",
            1,
        )
        poll(
            lambda: (_value(prometheus, "sum(pg_archiver_failed_count)") or 0) > failed or None,
            150,
            "failed pushes counted",
            1,
        )
        waited = poll(
            lambda: (
                (a := _value(prometheus, "max(pg_archive_ready_oldest_age_seconds)") or 0) > 5 and a
            ),
            60,
            "the waiting segment ageing",
            1,
        )
        assert waited > 5
    finally:
        local_env.release("backup-repo")
    poll(
        lambda: _value(prometheus, "max(pg_archive_ready_segments)") == 0 or None,
        180,
        "the archive caught up",
        1,
    )
    wait_healthy(local_env)


def _prometheus_has(url: str, metric: str) -> bool:
    resp = requests.get(f"{url}/api/v1/query", params={"query": metric}, timeout=5)
    return bool(resp.ok and resp.json()["data"]["result"])


def test_the_backup_slos_pass_on_fresh_data_and_fail_on_a_stale_backup(
    local_env: LocalEnvironment, tmp_path: Path
):
    status = wait_healthy(local_env)
    prometheus = status["urls"]["prometheus"]
    poll(lambda: full_backups(local_env), 180, "a full backup in the repository", 2)
    for metric in ("cw_backup_newest_age_seconds", "pg_archive_ready_oldest_age_seconds"):
        poll(lambda m=metric: _prometheus_has(prometheus, m), 60, f"{metric} scraped", 1)
    window = Window(time.time() - 20, time.time())
    fresh = gate(status, window, tmp_path / "fresh", "backup-freshness", "archive-lag")
    assert fresh["backup-freshness"]["status"] == "pass", fresh["backup-freshness"]
    assert fresh["archive-lag"]["status"] in ("pass", "warn"), fresh["archive-lag"]
    assert fresh["backup-freshness"]["measured"] < 26 * 3600

    # The same objective, set under the newest backup's age: that backup is stale for it.
    newest = max(b["stop"] for b in local_env.backups())
    age = poll(lambda: (a := time.time() - newest) >= 10 and a, 60, "a backup 10 s old", 1)
    definitions = tmp_path / "definitions"
    definitions.mkdir()
    text = (DEFAULT_DIR / "backup-freshness.yaml").read_text()
    assert "value: 93600" in text
    (definitions / "backup-freshness.yaml").write_text(
        text.replace("value: 93600", f"value: {int(age) - 5}")
    )
    window = Window(time.time() - 10, time.time())
    stale = gate(status, window, tmp_path / "stale", definitions=definitions)
    verdict = stale["backup-freshness"]
    assert verdict["status"] == "fail", verdict
    assert verdict["measured"] > int(age) - 5
