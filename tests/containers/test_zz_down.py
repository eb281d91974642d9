"""`down` on the containers runtime leaves no container, network or volume of the environment."""

from __future__ import annotations

import docker
import pytest

from env.containers import LABEL
from env.local import LocalEnvironment
from env.process import pid_alive

pytestmark = [pytest.mark.containers]


def test_down_leaves_no_container_network_or_volume(
    containers_env: LocalEnvironment, boxed_status: dict, docker_engine: docker.DockerClient
) -> None:
    selector = {"label": f"{LABEL}={containers_env.settings.run_dir}"}
    assert docker_engine.containers.list(filters=selector)  # the fault happens to something
    pids = [c["pid"] for c in boxed_status["components"] if c["pid"]]
    volumes_before = {v.name for v in docker_engine.volumes.list()}
    containers_env.down()
    assert docker_engine.containers.list(all=True, filters=selector) == []
    assert docker_engine.networks.list(filters=selector) == []
    assert {v.name for v in docker_engine.volumes.list()} <= volumes_before
    assert not [p for p in pids if pid_alive(p)]
