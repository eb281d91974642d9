from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from env import hpa, topology
from env.commands import prometheus_memory_env, prometheus_memory_mib, prometheus_series
from env.local import (
    bindable,
    busy_ports,
    ephemeral_ports,
    ephemeral_range,
    reserved_ports,
)
from env.settings import PORT_SPAN, EnvSettings, SettingsError


def test_defaults():
    s = EnvSettings.from_environ({})
    assert s.base_port == 17000
    assert s.run_dir == Path("/var/tmp/cwh-17000")


def test_derived_ports_do_not_collide_at_the_largest_topology():
    # The most members and Redis nodes the settings accept: a port shared by two listeners
    # (one exporter answering for another, a region link bound by a Redis proxy) breaks only
    # the environments that grow that far, so the check is made there.
    big = {"CWH_PG_MEMBERS": "9", "CWH_REDIS_MASTERS": "5", "CWH_REDIS_REPLICAS_PER_MASTER": "1"}
    s = EnvSettings.from_environ(big)
    assert s.redis_nodes == 10
    p = s.ports
    used = [
        p.supervisor,
        p.etcd_client,
        p.etcd_peer,
        p.haproxy_write,
        p.haproxy_read,
        p.haproxy_https,
        p.haproxy_stats,
        p.pgbouncer,
        p.redis_exporter,
        p.prometheus,
        p.global_https,
        p.backup_scratch,
        p.backup_repo,
        p.backup_pg,
        p.proxy_region_link,
    ]
    used += [p.postgres(m) for m in range(s.pg_members)]
    used += [p.patroni(m) for m in range(s.pg_members)]
    used += [p.postgres_exporter(m) for m in range(s.pg_members)]
    used += [p.redis(n) for n in range(s.redis_nodes)]
    used += [p.fault_api, p.proxy_pg_write, p.proxy_pg_read, p.proxy_llm]
    used += [p.proxy_sharepoint, p.proxy_gdrive]
    used += [p.proxy_pg_link(m) for m in range(s.pg_members)]
    used += [p.proxy_redis(n) for n in range(s.redis_nodes)]
    used += [p.service(i) for i in range(70)]  # services: base+100 .. base+169
    assert len(used) == len(set(used)), sorted(port - s.base_port for port in used)
    assert all(s.base_port <= port < s.base_port + PORT_SPAN for port in used)
    # The start's port check covers every listener of a standby region this large.
    standby = EnvSettings.from_environ(
        {**big, "CWH_BASE_PORT": "18000", "CWH_STANDBY_OF": "17000", "CWH_BACKUPS": "1"}
    )
    checked = standby.listening_ports()
    q = standby.ports
    missing = [
        port - standby.base_port
        for port in [q.proxy_region_link, q.global_https, *standby.fault_proxy_listeners()]
        + [q.redis(n) for n in range(standby.redis_nodes)]
        + [q.postgres_exporter(m) for m in range(standby.pg_members)]
        if port not in checked
    ]
    assert not missing, missing


def test_the_default_topology_keeps_the_ports_it_always_had():
    # A running environment, and a standby region's link recorded in its DCS at bootstrap,
    # outlive an upgrade of the harness: the ports of a topology that fitted never move.
    p = EnvSettings(base_port=17000).ports
    assert [p.postgres_exporter(m) for m in range(3)] == [17060, 17061, 17062]
    assert p.redis_exporter == 17065
    assert [p.proxy_redis(n) for n in range(6)] == list(range(17184, 17190))
    assert p.proxy_region_link == 17190


def test_two_bases_a_span_apart_share_no_port():
    a, b = EnvSettings(base_port=17000), EnvSettings(base_port=17000 + PORT_SPAN)
    assert a.ports.prometheus < b.ports.supervisor


def test_roundtrip_through_environment_variables():
    s = EnvSettings(
        base_port=18000, run_dir=Path("/var/tmp/x"), timeout_scale=2.5, pg_sync_strict=True
    )
    assert EnvSettings.from_environ(s.to_environ()) == s


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CWH_BASE_PORT": "abc"}, "CWH_BASE_PORT"),
        ({"CWH_BASE_PORT": "80"}, "CWH_BASE_PORT"),
        ({"CWH_BASE_PORT": "60000"}, "CWH_BASE_PORT"),
        ({"CWH_TIMEOUT_SCALE": "0"}, "CWH_TIMEOUT_SCALE"),
        ({"CWH_PG_SYNC_STRICT": "maybe"}, "CWH_PG_SYNC_STRICT"),
        ({"CWH_RUN_DIR": "relative/dir"}, "CWH_RUN_DIR"),
        ({"CWH_REDIS_MASTERS": "2"}, "CWH_REDIS_MASTERS"),
        ({"CWH_PROMETHEUS_MEMORY_MIB": "16"}, "CWH_PROMETHEUS_MEMORY_MIB"),
        ({"CWH_SCRAPE_INTERVAL_S": "0"}, "CWH_SCRAPE_INTERVAL_S"),
        ({"CWH_SCRAPE_INTERVAL_S": "nan"}, "CWH_SCRAPE_INTERVAL_S"),
    ],
)
def test_bad_values_name_the_variable(env, names):
    with pytest.raises(SettingsError, match=names):
        EnvSettings.from_environ(env)


def test_prometheus_s_go_memory_limit_follows_the_series_the_topology_may_hold():
    fixed = EnvSettings(autoscale=False)  # the replicas stay as they start
    topo = topology.build(fixed, hpa.load(fixed.hpa_dir))
    assert prometheus_series(fixed, topo) == 7871  # the default topology, counted
    assert prometheus_memory_env(fixed, topo) == {"GOMEMLIMIT": "80MiB"}  # the measured point
    # Scraped twice as often, a full head holds twice the chunks: 80 * (4.5 + 3.6) / 6.3.
    faster = dataclasses.replace(fixed, scrape_interval_s=1.0)
    assert prometheus_memory_mib(faster, topo) == 103
    # With the autoscaler every slot may fill (API 10, hubs 6, workers 20): 80 * 11,486 / 7,871.
    scaled = EnvSettings()
    assert prometheus_series(scaled, topology.build(scaled)) == 11486
    assert prometheus_memory_mib(scaled, topology.build(scaled)) == 117
    big = EnvSettings(pg_members=9, redis_masters=5)
    assert prometheus_memory_mib(big, topology.build(big)) > 117
    explicit = EnvSettings.from_environ({"CWH_PROMETHEUS_MEMORY_MIB": "256"})
    assert prometheus_memory_env(explicit, topo) == {"GOMEMLIMIT": "256MiB"}
    assert EnvSettings.from_environ(explicit.to_environ()) == explicit


def test_timeouts_scale():
    assert EnvSettings(timeout_scale=3).timeout(10) == 30


def test_a_port_the_environment_needs_is_named_when_taken(tmp_path):
    settings = EnvSettings(base_port=24000, run_dir=tmp_path / "run")
    ports = settings.listening_ports()
    # Every named port of the layout, and each Redis node's bus 10000 above it.
    assert ports[settings.ports.redis(0) + 10000] == "redis0 cluster bus"
    assert settings.ports.api(3) in ports
    taken = {settings.ports.redis(2) + 10000, settings.ports.prometheus}
    assert busy_ports(ports, lambda p: p not in taken) == [
        f"{settings.ports.prometheus} (prometheus)",
        f"{settings.ports.redis(2) + 10000} (redis2 cluster bus)",
    ]
    assert busy_ports(ports, lambda p: True) == []


def test_ports_in_the_kernels_ephemeral_range_are_named(tmp_path):
    # Base 23000 puts the local runtime's Redis buses at 33000 and up, inside Linux's default
    # range; in containers the buses stay inside the network and nothing is on the host there.
    local = EnvSettings(base_port=23000, run_dir=tmp_path / "run").listening_ports()
    eph = range(32768, 61000)
    risky = ephemeral_ports(local, eph)
    assert risky, risky
    assert all("cluster bus" in r for r in risky), risky
    boxed = EnvSettings(
        base_port=23000, run_dir=tmp_path / "run", runtime="containers", backups=False
    )
    assert ephemeral_ports(boxed.listening_ports(), eph) == []
    assert not any(p >= 33000 for p in boxed.listening_ports())
    assert ephemeral_ports(EnvSettings(run_dir=tmp_path / "run").listening_ports(), eph) == []


def test_reserved_ports_are_safe_inside_the_ephemeral_range(tmp_path):
    (tmp_path / "reserved").write_text("8080, 33000-33200,bad\n")
    reserved = reserved_ports(tmp_path / "reserved")
    assert {8080, 33000, 33200} <= reserved
    assert 33201 not in reserved
    assert reserved_ports(tmp_path / "absent") == set()
    local = EnvSettings(base_port=23000, run_dir=tmp_path / "run").listening_ports()
    assert ephemeral_ports(local, range(32768, 61000), reserved) == []


def test_the_ephemeral_range_is_read_from_the_kernel(tmp_path):
    (tmp_path / "range").write_text("40000\t50000\n")
    assert ephemeral_range(tmp_path / "range") == range(40000, 50001)
    assert ephemeral_range(tmp_path / "absent") == range(32768, 61000)


def test_a_listening_socket_makes_its_port_unbindable():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not bindable(port)
    assert bindable(port)  # closed: free again, TIME_WAIT or not
