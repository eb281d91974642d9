"""Redis Cluster as `cwh env status` sees it."""

from __future__ import annotations

from typing import Any

from experiments import harness
from experiments.settings import Configuration


def masters(*, configuration: Configuration) -> dict[str, int]:
    """Live masters: node name -> slots served."""
    return masters_in(harness.environment(harness.settings_of(configuration)).status())


def masters_in(status: dict[str, Any]) -> dict[str, int]:
    """The live masters of a `cwh env status`: node name -> slots served."""
    return {
        r["component"]: r["slots"]
        for r in status["components"]
        if r["kind"] == "redis" and r["role"] == "master" and r["healthy"]
    }
