"""Probes of the services' processes, from `cwh env status`."""

from __future__ import annotations

from typing import Any

from experiments import harness
from experiments.settings import Configuration


def service_rows(role: str, *, configuration: Configuration) -> list[dict[str, Any]]:
    """The status rows of every replica of `role`, by name."""
    rows = harness.environment(harness.settings_of(configuration)).status()["components"]
    return sorted((r for r in rows if r["kind"] == role), key=lambda r: r["component"])


def leader_scheduler(*, configuration: Configuration) -> str:
    """The scheduler replica that holds the leader lease."""
    rows = service_rows("scheduler", configuration=configuration)
    leaders = [r["component"] for r in rows if r["role"] == "scheduler (leader)"]
    if len(leaders) != 1:
        raise RuntimeError(f"expected one scheduler leader, found {leaders}")
    return str(leaders[0])


def environment_healthy(*, configuration: Configuration) -> bool:
    """Every component healthy and no fault left injected."""
    return bool(harness.environment(harness.settings_of(configuration)).status()["healthy"])
