"""The restore's pure parts: Patroni's restore bootstrap, the backup a point-in-time restore
starts from, and the ledger check of what it brought back (`slo/pitr.py`)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from env import backup, configs
from env.layout import Layout
from env.restore import pick_backup, verify_passed
from env.secrets import Secrets
from env.settings import EnvSettings
from slo.pitr import pitr_check


def _listed(label: str, stop: float, error: bool = False) -> dict:
    return {"label": label, "type": "full", "stop": stop, "start": stop - 10, "error": error}


def test_a_point_in_time_restore_starts_from_the_newest_backup_that_ended_before_the_mistake():
    listed = [_listed("F1", 100), _listed("D1", 200), _listed("D2", 290, error=True)]
    assert pick_backup(listed, 300)["label"] == "D1"
    assert pick_backup([*listed, _listed("D3", 350)], 300)["label"] == "D1"
    with pytest.raises(ValueError, match="no backup ended before"):
        pick_backup(listed, 100)


def _patroni(tmp_path: Path, restore: dict | None) -> dict:
    settings = EnvSettings(base_port=24000, run_dir=tmp_path)
    secrets = Secrets.load_or_create(tmp_path / "secrets.json")
    text = configs.patroni_config(settings, Layout(tmp_path), secrets, 1, restore=restore)
    return yaml.safe_load(text)


def test_patroni_bootstraps_with_initdb_unless_told_to_restore(tmp_path):
    assert "method" not in _patroni(tmp_path, None)["bootstrap"]
    lay = Layout(tmp_path)
    conf = _patroni(tmp_path, backup.restore_bootstrap(lay, 1))["bootstrap"]
    assert conf["method"] == "pgbackrest"
    method = conf["pgbackrest"]
    argv = shlex.split(method["command"])
    assert argv[0] == "pgbackrest"
    assert argv[-1] == "restore"
    assert f"--pg1-path={lay.pg_data(1)}" in argv  # this member's data, not member 0's
    assert not any(a.startswith("--set=") for a in argv)  # the newest backup
    assert method["no_params"] is True
    recovery = method["recovery_conf"]
    assert recovery["recovery_target_action"] == "promote"
    assert "archive-get" in recovery["restore_command"]
    # The member's own data directory: the config's is member 0's, empty while another restores.
    assert f"--pg1-path={lay.pg_data(1)}" in shlex.split(recovery["restore_command"])
    assert "recovery_target_xid" not in recovery  # to the end of the archive


def test_a_point_in_time_restore_stops_just_before_the_mistaken_transaction(tmp_path):
    method = backup.restore_bootstrap(Layout(tmp_path), 0, "20261203-051000F", "7421")
    assert "--set=20261203-051000F" in shlex.split(method["command"])
    recovery = method["recovery_conf"]
    assert recovery["recovery_target_xid"] == "7421"
    assert recovery["recovery_target_inclusive"] == "off"


def test_the_pitr_check_wants_exactly_what_preceded_the_mistake():
    # began 100, committed 101 (+1 s grace), replaced 110 (+1 s grace)
    acked = {
        "a": 90.0,  # before
        "b": 99.9,  # before
        "r": 101.5,  # during: acknowledged within the grace after the commit
        "w1": 102.5,  # window
        "w2": 109.0,  # window
        "g": 110.2,  # gap: acknowledged just after the cut, committed before it
        "x": 111.5,  # after: only the restored cluster can have acknowledged it
        "n": 160.0,  # after
    }
    ok = pitr_check(acked, ["a", "b", "r", "x", "n"], 100, 101, 110)
    assert ok["wrong"] == 0
    assert [ok[k] for k in ("before", "during", "window", "gap", "after")] == [2, 1, 2, 1, 2]
    assert (ok["during_present"], ok["gap_present"]) == (1, 0)
    # A request acknowledged before the mistake missing: recovery stopped too early.
    early = pitr_check(acked, ["b", "x", "n"], 100, 101, 110)
    assert (early["missing_before"], early["wrong"], early["wrong_ids"]) == (1, 1, ["a"])
    # One acknowledged after the mistake present: recovery went past it.
    late = pitr_check(acked, ["a", "b", "w1", "x", "n"], 100, 101, 110)
    assert (late["present_window"], late["wrong"]) == (1, 1)
    # One acknowledged by the restored cluster lost (also before the replicas were back).
    lost = pitr_check(acked, ["a", "b", "n"], 100, 101, 110)
    assert (lost["missing_after"], lost["wrong_ids"]) == (1, ["x"])


def test_pgbackrest_verify_fails_on_its_report_not_only_its_exit_code():
    assert verify_passed(0, "")
    assert verify_passed(0, "stanza: cloudwatcher\nstatus: ok\n")
    # pgBackRest 2.45 exits 0 with a damaged archived segment in its report.
    damaged = "stanza: cloudwatcher\nstatus: error\n  total WAL checked: 15, total valid WAL: 14"
    assert not verify_passed(0, damaged)
    assert not verify_passed(1, "")
