"""Probes of the services' processes, from `cwh env status`."""

from __future__ import annotations

from typing import Any

from experiments import harness


def service_rows(role: str) -> list[dict[str, Any]]:
    """The status rows of every replica of `role`, by name."""
    rows = harness.environment().status()["components"]
    return sorted((r for r in rows if r["kind"] == role), key=lambda r: r["component"])


def leader_scheduler() -> str:
    """The scheduler replica that holds the leader lease."""
    leaders = [
        r["component"] for r in service_rows("scheduler") if r["role"] == "scheduler (leader)"
    ]
    if len(leaders) != 1:
        raise RuntimeError(f"expected one scheduler leader, found {leaders}")
    return str(leaders[0])


def environment_healthy() -> bool:
    """Every component healthy and no fault left injected."""
    return bool(harness.environment().status()["healthy"])
