"""The backup repository as the scheduler reads it (`pgbackrest info --output=json`), the type
of backup due, and the pgBackRest hosts' configs (`env/backup.py`)."""

from __future__ import annotations

import asyncio
import configparser
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from env import backup, configs, topology
from env.layout import Layout
from env.secrets import CertificateAuthority, Secrets, covers
from env.settings import EnvSettings, SettingsError
from reference_impl.backups import Backups, summarize, type_due

NOW = 1_800_000_000.0


def _backup(label: str, kind: str, stop: float, error: bool = False) -> dict:
    return {
        "label": label,
        "type": kind,
        "error": error,
        "timestamp": {"start": stop - 15, "stop": stop},
        "info": {"size": 23_000_000, "repository": {"size": 4_500_000}},
        "archive": {"start": "000000010000000000000004", "stop": "000000010000000000000004"},
        "prior": None,
    }


def _info(*backups: dict, wal_max: str = "000000020000000000000009") -> list:
    return [
        {
            "name": "cloudwatcher",
            "backup": list(backups),
            "archive": [{"id": "15-1", "min": "000000010000000000000001", "max": wal_max}],
        }
    ]


def test_the_repository_summary_ages_each_backup_by_its_end_and_skips_failed_ones():
    info = _info(
        _backup("F1", "full", NOW - 8 * 86400),
        _backup("F2", "full", NOW - 86400),
        _backup("D1", "diff", NOW - 3600),
        _backup("D2", "diff", NOW - 60, error=True),
    )
    assert summarize(info, NOW) == Backups(
        3, 3600.0, 8 * 86400.0, 86400.0, "000000020000000000000009"
    )


def test_an_empty_repository_has_no_ages():
    assert summarize(_info(wal_max=""), NOW) == Backups(0, None, None, None, "")


def test_something_other_than_pgbackrests_json_is_refused():
    with pytest.raises(ValueError, match="list of stanzas"):
        summarize({"backup": []}, NOW)


@pytest.mark.parametrize(
    ("full_age", "due"),
    [(None, "full"), (3600.0, "diff"), (86399.0, "diff"), (86400.0, "full"), (9e5, "full")],
)
def test_a_full_backup_is_due_a_full_interval_after_the_last_one(full_age, due):
    assert type_due(Backups(1, 60.0, 60.0, full_age), 86400.0) == due


def test_the_listing_is_oldest_first_with_the_wal_a_restore_needs():
    info = _info(_backup("D1", "diff", NOW - 60), _backup("F1", "full", NOW - 86400))
    listed = backup.listing(info)
    assert [b["label"] for b in listed] == ["F1", "D1"]
    assert listed[0]["wal_start"] == "000000010000000000000004"
    assert listed[0]["repo_bytes"] == 4_500_000


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_each_host_accepts_only_the_others_certificate_and_reaches_it_by_name(tmp_path: Path):
    s = EnvSettings(base_port=24000, run_dir=tmp_path)
    lay = Layout(tmp_path)
    repo = _ini(backup.repo_config(s, lay))
    pg = _ini(backup.pg_config(s, lay))
    assert repo["global"]["tls-server-auth"] == f"{backup.PG_CN}={backup.STANZA}"
    assert pg["global"]["tls-server-auth"] == f"{backup.REPO_CN}={backup.STANZA}"
    assert repo["global"]["tls-server-port"] == pg["global"]["repo1-host-port"] == "24078"
    assert pg["global"]["tls-server-port"] == repo[backup.STANZA]["pg1-host-port"] == "24079"
    # pgBackRest checks the name in the certificate, not an IP address.
    assert repo[backup.STANZA]["pg1-host"] == pg["global"]["repo1-host"] == "localhost"
    # Every member, so a backup finds whichever is primary.
    for m in range(3):
        assert repo[backup.STANZA][f"pg{m + 1}-path"] == str(lay.pg_data(m))
        assert repo[backup.STANZA][f"pg{m + 1}-port"] == str(s.ports.postgres(m))
    assert repo["global"]["repo1-path"] == str(lay.backup_repo)
    assert repo["global"]["repo1-retention-full-type"] == "time"
    assert repo["global"]["repo1-retention-full"] == "7"


def test_in_containers_each_side_dials_the_other_by_its_replica_name_and_the_host_by_loopback(
    tmp_path: Path,
):
    s = EnvSettings(base_port=24000, run_dir=tmp_path, runtime="containers")
    lay = Layout(tmp_path)
    repo, pg = _ini(backup.repo_config(s, lay)), _ini(backup.pg_config(s, lay))
    assert repo[backup.STANZA]["pg1-host"] == backup.PG_REPLICA == "backup-pg"
    assert pg["global"]["repo1-host"] == backup.REPO_REPLICA == "backup-repo"
    # Each server listens on its container's network, not its loopback.
    assert repo["global"]["tls-server-address"] == pg["global"]["tls-server-address"] == "0.0.0.0"
    # Commands run on the host reach both through their published ports.
    host_repo = _ini(backup.repo_config(s, lay, from_host=True))
    host_pg = _ini(backup.pg_config(s, lay, from_host=True))
    assert host_repo[backup.STANZA]["pg3-host"] == host_pg["global"]["repo1-host"] == "localhost"
    assert backup.repo_command(lay, "info")[1] == f"--config={lay.backup_dir}/pgbackrest-host.conf"
    assert f"--config={lay.backup_pg_dir}/pgbackrest-host.conf" in backup.scratch_restore_command(
        lay, tmp_path / "scratch"
    )
    # ... while the members' archive command, run in their containers, uses the replicas' own.
    assert f"--config={lay.backup_pg_dir}/pgbackrest.conf " in backup.archive_command(lay, 0)
    # Each certificate names what its clients dial.
    ca = CertificateAuthority.load_or_create(tmp_path / "ca.crt", tmp_path / "ca.key")
    cert, _ = ca.issue(backup.REPO_CN, backup.server_names(backup.REPO_CN), ())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "backup-repo"}
    assert covers(cert, (), ("localhost", "backup-repo"))
    assert not covers(cert, (), ("backup-pg",))  # a certificate without the name is reissued


def test_every_member_archives_its_own_wal_to_the_repository(tmp_path: Path):
    s = EnvSettings(base_port=24000, run_dir=tmp_path, archive_timeout_s=30)
    lay = Layout(tmp_path)
    secrets = Secrets.load_or_create(tmp_path / "secrets.json")
    for m in range(3):
        params = yaml.safe_load(configs.patroni_config(s, lay, secrets, m))["postgresql"][
            "parameters"
        ]
        assert params["archive_mode"] == "on"
        assert params["archive_timeout"] == "30s"
        assert f"--pg1-path={lay.pg_data(m)} archive-push %p" in params["archive_command"]
    off = EnvSettings(base_port=24000, run_dir=tmp_path, backups=False)
    params = yaml.safe_load(configs.patroni_config(off, lay, secrets, 0))["postgresql"][
        "parameters"
    ]
    assert "archive_mode" not in params


def test_the_backup_hosts_start_before_postgresql_and_only_with_backups(tmp_path: Path):
    on = topology.build(EnvSettings(base_port=24000, run_dir=tmp_path))
    stages = [stage for stage, _ in on.stages()]
    assert stages.index("backup") < stages.index("postgresql")
    assert {w.name for w in on.workloads if w.stage == "backup"} == {"backup-repo", "backup-pg"}
    off = topology.build(EnvSettings(base_port=24000, run_dir=tmp_path, backups=False))
    assert "backup" not in [stage for stage, _ in off.stages()]


@pytest.mark.parametrize(
    ("field", "value", "names"),
    [
        ("archive_timeout_s", 600, "ARCHIVE_TIMEOUT_S"),
        ("backup_diff_every_s", 10, "BACKUP_DIFF_EVERY_S"),
        ("backup_full_every_s", 1800.0, "BACKUP_FULL_EVERY_S"),
        ("backup_retention_days", 0, "BACKUP_RETENTION_DAYS"),
    ],
)
def test_backup_settings_out_of_range_name_their_variable(tmp_path, field, value, names):
    with pytest.raises(SettingsError, match=names):
        EnvSettings(base_port=24000, run_dir=tmp_path, **{field: value})


def test_a_stanza_create_that_meets_the_archive_lock_is_tried_again(tmp_path, monkeypatch):
    """A new primary's archive pushes hold the stanza's lock now and then: [050], not a
    failure of the start."""
    from env import bootstrap

    codes = [50, 50, 0]
    monkeypatch.setattr(bootstrap, "STANZA_LOCK_RETRY_S", 0.0)

    async def stanza_create(*_: object) -> int:
        return codes.pop(0)

    monkeypatch.setattr(bootstrap, "_stanza_create", stanza_create)
    asyncio.run(bootstrap.create_backup_stanza(EnvSettings(run_dir=tmp_path), None))
    assert codes == []
    codes[:] = [50, 31]  # another error ends it at once
    with pytest.raises(bootstrap.StartupError, match="exit code 31"):
        asyncio.run(bootstrap.create_backup_stanza(EnvSettings(run_dir=tmp_path), None))
