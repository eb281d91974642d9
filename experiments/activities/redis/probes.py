"""Redis Cluster as `cwh env status` sees it."""

from __future__ import annotations

from env.state import EnvStatus
from experiments import harness
from experiments.settings import Configuration


def masters(*, configuration: Configuration) -> dict[str, int]:
    """Live masters: node name -> slots served."""
    return masters_in(harness.environment(harness.settings_of(configuration)).state())


def masters_in(status: EnvStatus) -> dict[str, int]:
    """The live masters of a `cwh env status`: node name -> slots served."""
    return {
        r.name: r.detail["slots"]
        for r in status.of_kind("redis")
        if r.role == "master" and r.healthy
    }
