"""Probes of the services' processes, from `cwh env status`."""

from __future__ import annotations

from env.state import ComponentStatus
from experiments import harness
from experiments.settings import Configuration


def service_rows(role: str, *, configuration: Configuration) -> list[ComponentStatus]:
    """Every replica of `role` in the status, by name."""
    status = harness.environment(harness.settings_of(configuration)).state()
    return sorted(status.of_kind(role), key=lambda r: r.name)


def leader_scheduler(*, configuration: Configuration) -> str:
    """The scheduler replica that holds the leader lease."""
    rows = service_rows("scheduler", configuration=configuration)
    leaders = [r.name for r in rows if r.role == "scheduler (leader)"]
    if len(leaders) != 1:
        raise RuntimeError(f"expected one scheduler leader, found {leaders}")
    return str(leaders[0])


def environment_healthy(*, configuration: Configuration) -> bool:
    """Every component healthy and no fault left injected (on the kubernetes runtime: every
    Deployment and StatefulSet Ready and up to date, no toxic, every proxy enabled)."""
    s = harness.settings_of(configuration)
    if s.env.runtime == "kubernetes":
        from experiments.kube.health import problems

        return not problems(s)
    return harness.environment(s).state().healthy
