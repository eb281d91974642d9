"""Node faults, on the kubernetes runtime only (the local and containers runtimes have one
node: this machine): a node drained as for maintenance, respecting every PodDisruptionBudget,
and uncordoned in the rollbacks (`experiments.kube.nodes`, through chaosk8s)."""

from __future__ import annotations

from typing import Any

from chaoslib.exceptions import ActivityFailed

from experiments import harness
from experiments.kube.api import connect, selector
from experiments.kube.nodes import drain_node as drain
from experiments.kube.nodes import node_of, uncordon_drained
from experiments.settings import ChaosSettings, Configuration


def _kubernetes(configuration: Configuration) -> ChaosSettings:
    s = harness.settings_of(configuration)
    if s.env.runtime != "kubernetes":
        raise ActivityFailed(f"a node drain needs the kubernetes runtime (not {s.env.runtime})")
    return s


def drain_node(
    component: str = "api", node: str = "", timeout_s: float = 300, *, configuration: Configuration
) -> dict[str, Any]:
    """Drain `node` (default: the node of the first Ready pod of `component`, so the drain
    evicts at least one of its replicas): cordoned, every pod evicted through the Eviction API,
    a PodDisruptionBudget's refusal waited out, never overridden. Returns the node, when, and
    the refusals met."""
    s = _kubernetes(configuration)
    return drain(s, node or node_of(connect(s.env), selector(component)), timeout_s)


def uncordon_nodes(*, configuration: Configuration) -> list[str]:
    """Every node this run drained schedulable again; their names."""
    return uncordon_drained(_kubernetes(configuration))
