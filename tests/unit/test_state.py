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
