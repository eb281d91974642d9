"""Redis Cluster as `cwh env status` sees it."""

from __future__ import annotations

from typing import Any

from experiments import harness


def masters(status: dict[str, Any] | None = None) -> dict[str, int]:
    """Live masters: node name -> slots served."""
    status = status or harness.environment().status()
    return {
        r["component"]: r["slots"]
        for r in status["components"]
        if r["kind"] == "redis" and r["role"] == "master" and r["healthy"]
    }
