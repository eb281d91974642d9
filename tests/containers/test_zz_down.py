"""`down` on the containers runtime leaves no container, network or volume of the environment."""

from __future__ import annotations

import docker
import pytest

from env.containers import LABEL
from env.local import LocalEnvironment
from env.process import pid_alive

pytestmark = [pytest.mark.containers]


def test_down_leaves_no_container_network_or_volume(
    containers_env: LocalEnvironment,
    boxed_status: dict,
    docker_engine: docker.DockerClient,
    volumes_at_start: set[str],
) -> None:
    selector = {"label": f"{LABEL}={containers_env.settings.run_dir}"}
    assert docker_engine.containers.list(filters=selector)  # the fault happens to something
    pids = [c["pid"] for c in boxed_status["components"] if c["pid"]]
    containers_env.down()
    assert docker_engine.containers.list(all=True, filters=selector) == []
    assert docker_engine.networks.list(filters=selector) == []
    # No volume of its own: none appeared since before the environment started.
    assert {v.name for v in docker_engine.volumes.list()} <= volumes_at_start
    assert not [p for p in pids if pid_alive(p)]
