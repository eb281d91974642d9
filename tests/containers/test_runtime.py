"""The containers runtime (`CWH_RUNTIME=containers`): the whole topology, each replica its own
container, with what Kubernetes would give it (an address, limits, restarts), reached by the
harness exactly as on the local runtime."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import docker
import pytest

from env import network
from env.containers import LABEL, container_name, limits, main_process
from env.local import LocalEnvironment
from env.process import pid_alive
from experiments.pg_failover import KILL_POSTGRES, measure_failover
from tests.helpers import assert_postgres_kill_recovered, fleet, poll, wait_healthy

pytestmark = [pytest.mark.containers]


def test_every_replica_runs_in_a_container_of_its_own(
    containers_env: LocalEnvironment, boxed_status: dict, docker_engine: docker.DockerClient
) -> None:
    s = containers_env.settings
    assert boxed_status["runtime"] == "containers"
    comps = boxed_status["components"]
    ours = docker_engine.containers.list(filters={"label": f"{LABEL}={s.run_dir}"})
    by_name = {c.name: c for c in ours}
    assert len(ours) == len(comps)
    for comp in comps:
        c = by_name[container_name(s, comp["component"])]
        assert comp["container"] == c.id[:12]
        # The status's pid is the replica's own process, numbered as the host sees it: the only
        # child of the container's init (Docker's), so a signal to it reaches it alone.
        assert c.attrs["HostConfig"]["Init"] is True
        assert main_process(c.attrs["State"]["Pid"]) == comp["pid"] != c.attrs["State"]["Pid"]
        assert pid_alive(comp["pid"])
        # A host of its own on the environment's network, at its fixed address.
        nets = c.attrs["NetworkSettings"]["Networks"]
        assert [n["IPAddress"] for n in nets.values()] == [network.host(s, comp["component"])]
        # Its ports are published on the host's loopback only.
        bindings = [b for bs in c.attrs["NetworkSettings"]["Ports"].values() if bs for b in bs]
        assert bindings, c.name
        assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, bindings
        # The seed's pod limits, scaled for this machine.
        host = c.attrs["HostConfig"]
        assert host["NanoCpus"] == limits(s)["nano_cpus"] > 0
        assert host["Memory"] == limits(s)["mem_limit"] > 0


def test_a_replica_that_dies_comes_back_in_a_new_container(
    containers_env: LocalEnvironment, boxed_status: dict
) -> None:
    api = next(c for c in boxed_status["components"] if c["component"] == "api2")
    os.kill(api["pid"], signal.SIGKILL)

    def replaced() -> dict | None:
        now = containers_env.component("api2")
        new = now.get("container") and now["container"] != api["container"]
        return now if new and now["restarts"] > api["restarts"] else None

    after = poll(replaced, 60, "api2 restarted in a new container")
    assert not pid_alive(api["pid"])
    assert after["pid"] != api["pid"]
    assert "exit" in after["last_restart_reason"]
    wait_healthy(containers_env, timeout_s=120)


def test_a_killed_postgres_primary_fails_over_with_nothing_lost(
    containers_env: LocalEnvironment, boxed_status: dict, record_property
) -> None:
    result = measure_failover(containers_env, KILL_POSTGRES)
    record_property("failover", result)
    print(result)
    assert_postgres_kill_recovered(result)
    wait_healthy(containers_env, timeout_s=120)


def test_a_fleet_through_the_containers_loses_nothing(
    containers_env: LocalEnvironment, boxed_status: dict, tmp_path: Path
) -> None:
    code, _, summary = fleet(boxed_status, tmp_path, users=20, duration_s=40, settle_s=60)
    rec = summary["reconciliation"]
    print(rec)
    assert summary["operations"]["submit"]["ok"] > 20, summary["operations"]
    assert rec["acknowledged"] > 20
    assert rec["lost"] == 0, rec
    assert rec["duplicated"] == 0, rec
    assert code == 0, summary
