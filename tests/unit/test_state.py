"""The status, typed: lookups that name what exists when they miss."""

from __future__ import annotations

from pathlib import Path

import pytest

from env.state import EnvStatus, UnknownComponent


def row(name: str, kind: str, role: str, healthy: bool = True, **extra: object) -> dict:
    return {
        "component": name,
        "kind": kind,
        "role": role,
        "pid": 100,
        "state": "running",
        "restarts": 0,
        "ports": {"http": 17110} if kind == "api" else {"postgres": 17010, "patroni": 17020},
        "healthy": healthy,
        "log": f"/var/tmp/cwh-17000/logs/{name}.log",
        **extra,
    }


STATUS = {
    "phase": "ready",
    "healthy": False,
    "primary": "pg0",
    "run_dir": "/var/tmp/cwh-17000",
    "base_port": 17000,
    "tls_certificate": "/var/tmp/cwh-17000/tls/ca.pem",
    "registration_secret": "s3",
    "warnings": [],
    "urls": {"write": "postgresql://...", "members": {"pg0": "postgresql://..."}},
    "components": [
        row("pg0", "postgresql", "primary", replay_lag_s=None, postgres_pid=101),
        row("api1", "api", "api", in_load_balancer=True),
        row("api2", "api", "api", healthy=False, in_load_balancer=False),
        row("scheduler1", "scheduler", "scheduler (leader)"),
    ],
}


def test_lookups():
    status = EnvStatus.from_json(STATUS)
    assert status.primary == "pg0"
    assert status.run_dir == Path("/var/tmp/cwh-17000")
    assert status.component("api1").port() == 17110
    assert status.component("pg0").port("patroni") == 17020
    assert status.component("pg0").detail["postgres_pid"] == 101
    assert [c.name for c in status.of_kind("api")] == ["api1", "api2"]
    assert status.unhealthy() == ["api2"]
    assert status.component("api2").detail["in_load_balancer"] is False
    leader = status.leading_scheduler
    assert leader is not None
    assert leader.name == "scheduler1"
    assert status.raw is STATUS


def test_misses_name_what_exists():
    status = EnvStatus.from_json(STATUS)
    with pytest.raises(UnknownComponent, match=r"no component 'api9'.*api1, api2"):
        status.component("api9")
    with pytest.raises(KeyError, match=r"api1 has no port 'metrics' \(it has \['http'\]\)"):
        status.component("api1").port("metrics")


def test_a_recorded_status_reads_whole():
    """`cwh env status --json` as recorded: every component typed, none lost."""
    import json

    path = Path(__file__).parent.parent / "cwh" / "fixtures" / "env-status.json"
    raw = json.loads(path.read_text())
    status = EnvStatus.from_json(raw)
    assert [c.name for c in status.components] == [c["component"] for c in raw["components"]]
    assert status.primary in {c.name for c in status.of_kind("postgresql")}
    assert status.component(status.primary).role == "primary"
    assert all(c.ports for c in status.components)


def test_the_failover_net_and_the_redis_cluster_state_are_typed():
    raw = {
        **STATUS,
        "pg_sync_standby": "pg2",
        "redis_cluster_state": "ok",
        "secrets_file": "/var/tmp/cwh-17000/secrets.json",
    }
    status = EnvStatus.from_json(raw)
    assert status.pg_sync_standby == "pg2"
    assert status.redis_cluster_state == "ok"
    assert status.secrets_file == "/var/tmp/cwh-17000/secrets.json"
    # A status recorded before these fields existed still reads.
    older = EnvStatus.from_json(STATUS)
    assert older.pg_sync_standby is None
    assert older.redis_cluster_state is None
    assert older.secrets_file == ""


def test_the_harness_helpers_read_the_typed_status():
    from experiments.activities.redis.probes import masters_in
    from experiments.pg_failover import pg_members, primary_of

    raw = {
        **STATUS,
        "components": [
            row("pg0", "postgresql", "primary", timeline=3),
            row("pg1", "postgresql", "sync replica", timeline=3),
            row("redis0", "redis", "master", slots=5461),
            row("redis1", "redis", "master", healthy=False, slots=5462),
            row("redis3", "redis", "replica", slots=0),
        ],
    }
    status = EnvStatus.from_json(raw)
    assert primary_of(status) == "pg0"
    assert sorted(pg_members(status)) == ["pg0", "pg1"]
    assert pg_members(status)["pg1"].detail["timeline"] == 3
    assert masters_in(status) == {"redis0": 5461}
    # Two members claiming the role (mid-failover): no primary yet.
    raw["components"][1]["role"] = "primary"
    assert primary_of(EnvStatus.from_json(raw)) is None
