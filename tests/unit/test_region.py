"""The second region's pieces that need no running environment: its settings, its configs (a
Patroni standby cluster fed over the region link, HAProxy's read path), what it copies from the
primary region, and how its readiness reads Patroni's and HAProxy's views."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path
from unittest.mock import ANY

import pytest
import yaml

from env import configs, region, topology
from env.layout import Layout
from env.probes import PgMember
from env.process import wait_until
from env.secrets import Secrets, ensure_environment_tls
from env.settings import EnvSettings, SettingsError

PRIMARY = 23000


def standby_settings(tmp_path: Path, **kw) -> EnvSettings:
    return EnvSettings(
        base_port=23400,
        run_dir=tmp_path / "b",
        standby_of=PRIMARY,
        standby_source_dir=str(tmp_path / "a"),
        backups=False,
        services=False,
        **kw,
    )


def test_a_standby_region_is_described_by_its_variables(tmp_path):
    s = EnvSettings.from_environ(
        {
            "CWH_BASE_PORT": "23400",
            "CWH_STANDBY_OF": str(PRIMARY),
            "CWH_REGION_LATENCY_MS": "50",
            "CWH_REGION_FAILOVER_S": "12.5",
            "CWH_SERVICES": "0",
        }
    )
    assert s.standby
    assert s.region_failover_s == 12.5
    assert not s.backups
    assert s.primary_region_dir == Path(f"/var/tmp/cwh-{PRIMARY}")
    assert s.region_latency_ms == 50
    assert EnvSettings.from_environ(s.to_environ()) == s
    assert not EnvSettings.from_environ({}).standby


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"standby_of": 23450}, "at least 200"),
        ({"backups": True}, "archives nothing"),
        ({"fault_proxy": False}, "fault proxy"),
        ({"region_latency_ms": 5000}, "0 to 1000"),
        # A failover sooner than a few missed checks would promote over a blip.
        ({"region_failover_s": 2}, "5 to 3600"),
    ],
)
def test_a_standby_region_that_cannot_work_is_refused(tmp_path, changes, says):
    with pytest.raises(SettingsError, match=says):
        replace(standby_settings(tmp_path), **changes)


@pytest.fixture
def rendered(tmp_path: Path):
    settings = standby_settings(tmp_path)
    layout = Layout(settings.run_dir)
    layout.haproxy_dir.mkdir(parents=True)
    secrets = Secrets.load_or_create(settings.run_dir / "secrets.json")
    ensure_environment_tls(layout, None)
    return settings, layout, secrets


def test_its_patroni_bootstraps_a_standby_cluster_over_the_region_link(rendered):
    settings, layout, secrets = rendered
    conf = yaml.safe_load(configs.patroni_config(settings, layout, secrets, 0))
    dcs = conf["bootstrap"]["dcs"]
    assert dcs["standby_cluster"] == {
        "host": "127.0.0.1",
        "port": settings.ports.proxy_region_link,
        "create_replica_methods": ["basebackup"],
    }
    assert dcs["synchronous_mode"] is False
    assert "archive_command" not in conf["postgresql"]["parameters"]
    # A primary region's has neither.
    primary = EnvSettings(base_port=PRIMARY, run_dir=layout.run_dir)
    dcs = yaml.safe_load(configs.patroni_config(primary, layout, secrets, 0))["bootstrap"]["dcs"]
    assert "standby_cluster" not in dcs
    assert dcs["synchronous_mode"] is True


def test_the_region_link_reaches_the_primary_regions_write_path(rendered):
    settings = rendered[0]
    link = next(p for p in configs.fault_proxies(settings) if p["name"] == configs.REGION_LINK)
    assert link["listen"] == f"127.0.0.1:{settings.ports.proxy_region_link}"
    assert link["upstream"] == f"127.0.0.1:{PRIMARY + 30}"  # its HAProxy: follows failovers
    toxics = configs.region_latency_toxics(settings)
    assert sorted(t["stream"] for t in toxics) == ["downstream", "upstream"]
    assert all(t["attributes"]["latency"] == 35 for t in toxics)
    assert configs.region_latency_toxics(replace(settings, region_latency_ms=0)) == []
    primary = EnvSettings(base_port=PRIMARY)
    assert configs.REGION_LINK not in [p["name"] for p in configs.fault_proxies(primary)]


def test_its_haproxy_reads_from_every_read_only_member_and_is_valid(rendered):
    settings, layout, secrets = rendered
    text = configs.haproxy_config(settings, layout, secrets)
    read = text[text.index("listen pg_read") : text.index("frontend https")]
    assert "GET /read-only" in read
    cfg = layout.haproxy_dir / "haproxy.cfg"
    cfg.write_text(text)
    result = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_adopts_the_primary_regions_secrets_once(tmp_path, request):
    settings = standby_settings(tmp_path)
    src, dst = settings.primary_region_dir, settings.run_dir
    # Nothing answers on the primary region's write path: nothing to clone from.
    with pytest.raises(region.RegionError, match=r"write path \(127.0.0.1:23030\) does not"):
        region.adopt_primary_region(settings, Layout(dst))
    listener = socket.create_server(("127.0.0.1", PRIMARY + 30))
    request.addfinalizer(listener.close)
    with pytest.raises(region.RegionError, match=r"secrets\.json is missing"):
        region.adopt_primary_region(settings, Layout(dst))
    for rel, text in (
        ("secrets.json", json.dumps({"pg_app": "a"})),
        ("tls/ca.crt", "CERT"),
        ("tls/ca.key", "KEY"),
        ("services/field-encryption.key", "FIELD"),
    ):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    copied = region.adopt_primary_region(settings, Layout(dst))
    assert sorted(copied) == [
        "secrets.json",
        "services/field-encryption.key",
        "tls/ca.crt",
        "tls/ca.key",
    ]
    assert (dst / "tls/ca.key").read_text() == "KEY"
    assert (dst / "tls/ca.key").stat().st_mode & 0o077 == 0  # private, as the original
    assert (dst / "secrets.json").stat().st_mode & 0o077 == 0
    # Its own, once it has them: a restart must not swap the CA under its certificates, and
    # needs nothing of the primary region, which may be the one that is gone.
    (src / "tls/ca.key").write_text("ROTATED")
    listener.close()
    shutil.rmtree(src)
    assert region.adopt_primary_region(settings, Layout(dst)) == []
    assert (dst / "tls/ca.key").read_text() == "KEY"


def member(name: str, role: str, state: str = "running") -> PgMember:
    return PgMember(name, role, state, 0, 1)


def test_a_standby_cluster_is_ready_with_its_leader_and_cascading_replicas():
    full = [member("pg0", "standby_leader"), member("pg1", "replica", "streaming")]
    assert region.standby_ready(full, 2)
    assert region.standby_ready([member("pg0", "leader"), full[1]], 2)  # promoted
    assert not region.standby_ready(full[:1], 2)
    assert not region.standby_ready([member("pg0", "standby_leader", "starting"), full[1]], 2)
    assert not region.standby_ready([member("pg0", "replica"), full[1]], 2)  # no leader


def stat(proxy: str, up: list[str]) -> list[dict[str, str]]:
    return [{"pxname": proxy, "svname": s, "status": "UP", "bck": "0"} for s in up]


def test_a_standby_regions_haproxy_writes_nowhere_until_promoted():
    standby = [member("pg0", "standby_leader"), member("pg1", "replica")]
    rows = stat("pg_read", ["pg0", "pg1"])
    assert region.routed(rows, standby)
    assert not region.routed(rows + stat("pg_write", ["pg0"]), standby)
    promoted = [member("pg0", "leader"), member("pg1", "replica")]
    assert region.routed(rows + stat("pg_write", ["pg0"]), promoted)
    assert not region.routed(rows, promoted)


def test_its_global_entry_point_prefers_the_primary_region_and_is_valid(rendered):
    settings, layout, _ = rendered
    text = configs.global_lb_config(settings, layout)
    assert f"bind 127.0.0.1:{settings.ports.global_https}" in text
    assert f"server primary-region 127.0.0.1:{PRIMARY + 32}\n" in text
    assert f"server standby-region 127.0.0.1:{settings.ports.haproxy_https} backup" in text
    # Failed over: the primary region's server is off for good (no failback, also on restart).
    off = configs.global_lb_config(settings, layout, failed_over=True)
    assert f"server primary-region 127.0.0.1:{PRIMARY + 32} disabled\n" in off
    layout.global_lb_dir.mkdir()
    cfg = layout.global_lb_dir / "haproxy.cfg"
    for rendered_text in (text, off):
        cfg.write_text(rendered_text)
        result = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_only_a_standby_region_runs_a_global_entry_point(tmp_path):
    standby = topology.build(standby_settings(tmp_path))
    assert standby.workload("global-lb").slots[0].ports == {"https": 23400 + 91}
    assert standby.owner("global-lb").stage == "haproxy"
    with pytest.raises(KeyError):
        topology.build(EnvSettings(base_port=PRIMARY)).workload("global-lb")


def test_its_members_are_never_named_like_the_primary_regions(rendered):
    settings, layout, secrets = rendered
    conf = yaml.safe_load(configs.patroni_config(settings, layout, secrets, 1))
    assert conf["name"] == "drpg1"  # its application_name in the primary's pg_stat_replication
    text = configs.haproxy_config(settings, layout, secrets)
    assert "server drpg1 " in text
    assert "server pg1 " not in text
    primary = EnvSettings(base_port=PRIMARY, run_dir=layout.run_dir)
    assert configs.member_name(primary, 1) == "pg1"
    assert configs.member_index("drpg1") == configs.member_index("pg1") == 1


def test_a_failover_takes_the_running_entry_point_and_its_config_for_good(rendered):
    settings, layout, _ = rendered
    layout.global_lb_dir.mkdir()
    cfg = layout.global_lb_dir / "haproxy.cfg"
    cfg.write_text(configs.global_lb_config(settings, layout))
    # No entry point running: the decision is written all the same, the runtime step reported.
    assert asyncio.run(region.fail_over_entry(settings, layout)) is False
    assert region.failed_over_marker(layout).exists()
    assert f"127.0.0.1:{PRIMARY + 32} disabled" in cfg.read_text()
    # A running one (from the first config, as if it started before the decision) obeys.
    cfg.write_text(configs.global_lb_config(settings, layout))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        sock = layout.global_lb_dir / "admin.sock"
        wait_until(lambda: sock.exists() or None, 10, "the entry point's runtime API")
        assert asyncio.run(region.keep_entry(layout)) is True
        state = asyncio.run(region.global_entry(settings, layout))
        assert state["regions"]["primary-region"] == "MAINT", state
        assert state["failed_over"]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_drills_second_region_is_a_small_standby_beside_the_environment(tmp_path):
    from experiments.activities.region.actions import standby_settings as drill_region
    from experiments.settings import ChaosSettings

    env = EnvSettings(base_port=PRIMARY, run_dir=tmp_path / "cwh-a", pg_os_user="pg")
    second = drill_region(ChaosSettings(env=env, run_dir=tmp_path / "run"), 600, 15)
    assert (second.base_port, second.standby_of) == (PRIMARY + 600, PRIMARY)
    assert second.run_dir == tmp_path / "cwh-a-region2"
    assert second.primary_region_dir == env.run_dir
    assert second.region_failover_s == 15
    assert (second.backups, second.autoscale) == (False, False)
    assert second.pg_os_user == "pg"  # what the environment runs as, it runs as
    # Its ports are clear of the environment's.
    assert not set(second.listening_ports()) & set(env.listening_ports())


def test_the_exporter_labels_a_second_regions_leader_apart_in_the_primary_region_only(tmp_path):
    primary = configs.exporter_queries(EnvSettings(base_port=PRIMARY, run_dir=tmp_path / "a"))
    standby = configs.exporter_queries(standby_settings(tmp_path))
    assert "starts_with(application_name, 'drpg')" in primary
    # A standby region's own replicas are drpg<n> too: none of its walsenders crosses regions.
    assert "starts_with(application_name, '-')" in standby
    assert "__REGION_PREFIX__" not in primary + standby
    assert yaml.safe_load(primary)["pg_replication"]["metrics"][1] == {
        "link": {"usage": "LABEL", "description": ANY}
    }


def test_automatic_failover_is_off_unless_chosen():
    assert EnvSettings().region_failover_s == 0
    assert EnvSettings.from_environ({"CWH_STANDBY_OF": "23000"}).region_failover_s == 0


def test_the_failover_clock_promotes_only_after_a_whole_window_of_lost_checks():
    clock, window = region.failover_clock, 15.0

    def run(answers: list[bool | None]) -> list[bool]:
        lost, due = None, []
        for t, found in enumerate(answers):
            lost, now_due = clock(lost, found, float(t), window)
            due.append(now_due)
        return due

    # Lost at every check, a second apart: due at the check 15 s after the first.
    assert run([True] * 17).index(True) == 15
    # One check answering starts over.
    assert True not in run([True] * 10 + [False] + [True] * 10)
    # Checks that cannot tell do not count, and a long run of them starts over: one lost
    # check, 20 s of not knowing, one lost check is no evidence of 21 s.
    assert True not in run([True] + [None] * 20 + [True])
    # A short gap (a check that could not tell) is bridged.
    assert run([True] * 8 + [None] + [True] * 8).index(True) == 15
