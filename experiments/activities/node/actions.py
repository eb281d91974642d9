"""Node faults, on the kubernetes runtime only (the local and containers runtimes have one
node: this machine): a node drained as for maintenance, respecting every PodDisruptionBudget,
and uncordoned in the rollbacks (`experiments.kube.nodes`, through chaosk8s)."""

from __future__ import annotations

from typing import Any

from chaoslib.exceptions import ActivityFailed

from experiments import harness
from experiments.kube.api import connect, selector
from experiments.kube.nodes import drain_node as drain
from experiments.kube.nodes import pick_node, uncordon_drained
from experiments.settings import ChaosSettings, Configuration


def _kubernetes(configuration: Configuration) -> ChaosSettings:
    s = harness.settings_of(configuration)
    if s.env.runtime != "kubernetes":
        raise ActivityFailed(f"a node drain needs the kubernetes runtime (not {s.env.runtime})")
    return s


def drain_node(
    component: str = "api", node: str = "", timeout_s: float = 300, *, configuration: Configuration
) -> dict[str, Any]:
    """Drain `node` (default: the first node running a Ready pod of `component`, so the drain
    evicts at least one of its replicas, that hosts no StatefulSet's pod, no single replica of
    a Deployment and none of the game day's load: `experiments.kube.nodes.pick_node`):
    cordoned, then every pod on it evicted through the Eviction API, of every namespace, not
    only the system's (kube-system's, the monitoring's...), a PodDisruptionBudget's refusal
    waited out until `timeout_s` (s), never overridden. Returns the node, when, and the
    refusals met.

    Raises:
        ActivityFailed: no node qualifies (each candidate's reasons said), the node is already
            cordoned or runs a pod without a controller, an eviction failed otherwise than by
            a budget, or the drain did not finish in time.
    """
    s = _kubernetes(configuration)
    kube = connect(s.env)
    return drain(s, kube, pick_node(kube, selector(component), node), timeout_s)


def uncordon_nodes(*, configuration: Configuration) -> list[str]:
    """Every node this run cordoned schedulable again (never one cordoned before it); their
    names. Raises ActivityFailed naming every node that could not be, after trying them all."""
    return uncordon_drained(_kubernetes(configuration))
