"""The faults only containers give, each shown to have really happened: a frozen container
(its process stopped, not dead), a CPU limit cut at run time and put back, and memory squeezed
until the kernel OOM-kills the replica at its limit and the supervisor brings it back."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest
import requests

from env.containers import container_name, limits
from env.local import LocalEnvironment
from experiments.activities.containers import actions
from experiments.settings import ChaosSettings
from tests.helpers import wait_healthy

pytestmark = [pytest.mark.containers]


def configuration(env: LocalEnvironment, run_dir: Path) -> dict:
    return ChaosSettings(env.settings, run_dir).to_configuration()


def container_of(client: docker.DockerClient, env: LocalEnvironment, replica: str):
    return client.containers.get(container_name(env.settings, replica))


def test_a_frozen_replica_stops_answering_without_dying_and_thaws(
    containers_env: LocalEnvironment, boxed_status: dict, docker_engine: docker.DockerClient
) -> None:
    hub = containers_env.state().component("hub2")
    url = f"http://127.0.0.1:{hub.port('http')}/health/live"
    frozen = actions.containers.pause(containers_env.settings, "hub2")
    try:
        assert container_of(docker_engine, containers_env, "hub2").status == "paused"
        # Alive (same pid) yet silent: the freezer holds it; a request times out, none is refused.
        with pytest.raises(requests.Timeout):
            requests.get(url, timeout=2)
        assert containers_env.state().component("hub2").pid == hub.pid
    finally:
        actions.containers.unpause(containers_env.settings, "hub2")
    assert frozen["replica"] == "hub2"
    assert requests.get(url, timeout=5).ok
    assert containers_env.state().component("hub2").restarts == hub.restarts
    wait_healthy(containers_env, timeout_s=120)


def test_a_cpu_limit_cut_at_run_time_is_put_back(
    containers_env: LocalEnvironment,
    boxed_status: dict,
    docker_engine: docker.DockerClient,
    tmp_path: Path,
) -> None:
    result = actions.starve_cpu(
        "api3", cpu_m=50, hold_s=0.5, configuration=configuration(containers_env, tmp_path)
    )
    assert result["NanoCpus"] == 50_000_000
    # The journal holds the fault, opened and closed; the engine holds the settings' limit again.
    journal = [json.loads(line) for line in (tmp_path / "faults.jsonl").read_text().splitlines()]
    assert [(e["event"], e["fault"]) for e in journal] == [
        ("inject", "starve-cpu-api3"),
        ("restore", "starve-cpu-api3"),
    ]
    host = container_of(docker_engine, containers_env, "api3").attrs["HostConfig"]
    assert host["NanoCpus"] == limits(containers_env.settings)["nano_cpus"]


def test_a_leak_up_to_the_memory_limit_is_oom_killed_and_restarted(
    containers_env: LocalEnvironment,
    boxed_status: dict,
    docker_engine: docker.DockerClient,
    tmp_path: Path,
) -> None:
    before = container_of(docker_engine, containers_env, "api2")
    result = actions.squeeze_memory(
        "api2",
        limit_mb=256,
        leak_mb_per_s=64,
        timeout_s=90,
        configuration=configuration(containers_env, tmp_path),
    )
    print(json.dumps(result, indent=1))
    # The kernel killed it at its limit (the engine says so, not only the exit code), and the
    # supervisor said why, then brought it back in a new container with the settings' limits.
    assert result["killed_after_s"] is not None, result
    assert result["oom_killed"], result
    assert "exit 137 (OOM-killed at its memory limit)" in result["restart_reason"], result
    assert result["back_after_s"] is not None, result
    assert result["container_after"] != result["container_before"] == before.id[:12]
    after = container_of(docker_engine, containers_env, "api2")
    assert after.attrs["HostConfig"]["Memory"] == limits(containers_env.settings)["mem_limit"]
    # Roughly the time the leak needs to fill the limit from a service's own size: not at once
    # (a kill for another reason), not far past it (the leak never grew).
    assert 0.5 <= result["killed_after_s"] <= 256 / 64 + 20, result
    assert json.loads((tmp_path / "squeeze.json").read_text()) == result
    wait_healthy(containers_env, timeout_s=120)
