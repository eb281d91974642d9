"""Backups across containers: the scheduler's leader backs up from its own container through
the database host's pgBackRest server in another, every member archives from its container to
the repository host's, and the weekly drill, run from the host, restores the newest backup into
a scratch instance that matches the live cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from env.local import LocalEnvironment
from env.restore import verify_backup
from tests.helpers import archived_max, fleet, full_backups, poll, primary_of, switch_wal

pytestmark = [pytest.mark.containers]


def test_backups_and_archiving_cross_containers_and_the_drill_restores_them(
    containers_env: LocalEnvironment, boxed_status: dict, tmp_path: Path
) -> None:
    assert containers_env.settings.backups
    # Requests for the drill to compare, acknowledged through the containers' front door.
    _, _, summary = fleet(boxed_status, tmp_path, users=10, duration_s=15, settle_s=30)
    assert summary["reconciliation"]["acknowledged"] > 0, summary["reconciliation"]
    fulls = poll(lambda: full_backups(containers_env), 240, "a full backup in the repository", 2)
    assert fulls[0]["bytes"] > 10_000_000  # a whole cluster, read through the other container
    url = boxed_status["urls"]["members"][primary_of(boxed_status)]
    segment = switch_wal(url)
    poll(lambda: archived_max(containers_env) >= segment or None, 90, f"{segment} archived", 0.5)
    drill = verify_backup(containers_env, timeout_s=300)
    print({k: v for k, v in drill.items() if k != "verify_output"})
    assert drill["verify_ok"], drill["verify_output"]
    assert drill["wrong"] == 0, drill
    assert drill["rows"] > 0, drill
