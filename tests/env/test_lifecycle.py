"""`up` is idempotent; a component that cannot start is named, and what was started is stopped."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from env.commands import allocator
from env.local import EnvironmentStartError, LocalEnvironment
from env.process import processes_of
from env.settings import EnvSettings
from env.topology import SERVICE_ROLES

pytestmark = pytest.mark.env


def test_up_again_finds_it_up(local_env: LocalEnvironment):
    pid = local_env.supervisor_pid()
    assert pid is not None
    before = local_env.supervisor_status()
    assert before is not None
    started = time.monotonic()
    status = local_env.up()
    assert status["phase"] == "ready"
    assert status["pid"] == pid, "a second up must not start another supervisor"

    # Nothing was started again: same processes, same restart counts.
    def procs(s: dict) -> dict:
        return {c["name"]: (c["pid"], c["restarts"]) for c in s["components"]}

    assert procs(status) == procs(before)
    assert time.monotonic() - started < 5


def test_the_services_run_on_jemalloc_and_the_datastores_on_their_own(
    local_env: LocalEnvironment,
) -> None:
    # `make deps` installs libjemalloc2; without it the environment warns and runs on glibc.
    jemalloc = allocator()
    assert jemalloc is not None, "libjemalloc2 is not installed: make deps"
    status = local_env.supervisor_status()
    assert status is not None
    mapped = {}
    for comp in status["components"]:
        if comp["pid"] is not None:
            maps = Path(f"/proc/{comp['pid']}/maps").read_text()
            mapped[comp["name"]] = (comp["kind"], "libjemalloc" in maps)
    services = {n: on for n, (kind, on) in mapped.items() if kind in SERVICE_ROLES}
    assert len(services) >= len(SERVICE_ROLES), mapped
    assert all(services.values()), f"services without jemalloc: {services}"
    # Only the services are told (Debian's Redis links jemalloc itself): Patroni and HAProxy keep
    # glibc's.
    others = {n: on for n, (kind, on) in mapped.items() if kind in ("patroni", "haproxy")}
    assert others, mapped
    assert not any(others.values()), others


def test_a_component_that_cannot_start_is_named_and_everything_is_stopped(
    env_settings: EnvSettings,
):
    base = env_settings.base_port + 400
    settings = EnvSettings(
        base_port=base,
        run_dir=Path(f"/var/tmp/cwh-test-{base}"),
        timeout_scale=env_settings.timeout_scale,
    )
    # pgBouncer starts once etcd, PostgreSQL and HAProxy are ready (Redis, the exporters and
    # the backup stanza meanwhile, side by side): take its port once start-up is under way
    # (taken before, the port check refuses to start at all: tested below). Its failure must
    # also stop what runs beside it.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def take_port(event: str, status: dict) -> None:
        if event == "stage" and blocker.getsockname()[1] == 0:
            blocker.bind(("127.0.0.1", settings.ports.pgbouncer))
            blocker.listen()

    env = LocalEnvironment(settings, progress=take_port)
    env.reset()
    try:
        with pytest.raises(EnvironmentStartError) as info:
            env.up(timeout_s=120)
        err = info.value
        assert err.component == "pgbouncer"
        assert err.log.endswith("logs/pgbouncer.log")
        assert "Address already in use" in Path(err.log).read_text()
        # Everything started before it or beside it (etcd, Patroni, postgres, HAProxy, Redis,
        # the exporters, ...) is gone.
        assert processes_of(settings.run_dir) == []
        assert env.supervisor_status() is None
        assert blocker.getsockname()[1] == settings.ports.pgbouncer, "the port was taken"
    finally:
        blocker.close()
        env.reset()


def test_a_port_taken_before_start_is_named_and_nothing_starts(env_settings: EnvSettings):
    base = env_settings.base_port + 400
    settings = EnvSettings(
        base_port=base,
        run_dir=Path(f"/var/tmp/cwh-test-{base}"),
        timeout_scale=env_settings.timeout_scale,
    )
    env = LocalEnvironment(settings)
    env.reset()
    with socket.socket() as blocker:
        # SO_REUSEADDR: a connection of an earlier environment on that port may linger in
        # TIME_WAIT, which would refuse this bind; a listener there still would not.
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", settings.ports.redis(2)))
        blocker.listen()
        with pytest.raises(EnvironmentStartError) as info:
            env.up(timeout_s=120)
    assert info.value.component == "ports"
    assert f"{settings.ports.redis(2)} (redis2)" in str(info.value)
    assert env.supervisor_pid() is None
    assert processes_of(settings.run_dir) == []
    env.reset()
