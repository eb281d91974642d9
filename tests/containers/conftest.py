"""The containers runtime's fixtures: a Docker engine (the running one, or Debian's dockerd
started for the session and stopped after it), the image built once per tree (cached by content
hash across sessions), and one environment on the containers runtime, on its own base port.

These tests run after the local environment's session has been torn down (`tests/conftest.py`
orders them last): two full topologies at once would starve a 2-core machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from env import engine, images
from env.containers import LABEL, leftovers
from env.local import LocalEnvironment
from env.settings import EnvSettings


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    try:
        started = engine.ensure()
    except engine.EngineError as exc:
        pytest.fail(f"the containers runtime needs a Docker engine: {exc}")
    client = docker.from_env()
    try:
        yield client
    finally:
        client.close()
        if started:
            engine.stop_if_ours(LABEL)


@pytest.fixture(scope="session")
def stack_image(docker_engine: docker.DockerClient) -> str:
    """This tree's image: built now when no earlier session built the same content."""
    tag, _ = images.ensure_stack(docker_engine, progress=lambda msg: print(f"images: {msg}"))
    return tag


@pytest.fixture(scope="session")
def containers_settings() -> EnvSettings:
    base = int(os.environ.get("CWH_TEST_CONTAINERS_BASE_PORT", "23000"))
    return EnvSettings(
        base_port=base,
        run_dir=Path(f"/var/tmp/cwh-test-{base}"),
        timeout_scale=float(os.environ.get("CWH_TIMEOUT_SCALE", "1.0")),
        auth_rate_limit_per_s=50,
        autoscale=False,
        runtime="containers",
    )


@pytest.fixture(scope="session")
def volumes_at_start(docker_engine: docker.DockerClient) -> set[str]:
    """The engine's volumes before the environment starts (none of them ours)."""
    return {v.name for v in docker_engine.volumes.list()}


@pytest.fixture(scope="session")
def containers_env(
    containers_settings: EnvSettings, stack_image: str, volumes_at_start: set[str]
) -> Iterator[LocalEnvironment]:
    env = LocalEnvironment(containers_settings)
    env.reset()  # a leftover of an interrupted session, containers included
    with env:
        yield env
    assert leftovers(containers_settings) == []


@pytest.fixture
def boxed_status(containers_env: LocalEnvironment) -> dict:
    from tests.helpers import wait_healthy

    return wait_healthy(containers_env, timeout_s=120)
