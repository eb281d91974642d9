"""A node drained, as for maintenance, through chaosk8s (`drain_nodes`: cordon, then every
pod evicted through the Eviction API, which refuses an eviction a PodDisruptionBudget forbids),
and uncordoned afterwards (`uncordon_node`).

chaosk8s gives up at the first refused eviction; `kubectl drain` tries again until the budget
allows it (the evicted pods' replacements become Ready elsewhere). `drain_node` does what
kubectl does: each refusal is recorded and the drain retried (chaosk8s re-lists what is left on
the node) until the deadline, so the budgets are respected, never overridden.
"""

from __future__ import annotations

import time
from typing import Any

from chaosk8s.node.actions import drain_nodes, uncordon_node
from chaoslib.exceptions import ActivityFailed

from env.process import wait_until
from experiments import harness
from experiments.kube.api import POLL_S, Kube, secrets_of
from experiments.settings import ChaosSettings

#: How an eviction a PodDisruptionBudget forbids is answered (429, this message).
_BUDGET = "disruption budget"


def node_of(kube: Kube, label_selector: str) -> str:
    """The node of the first Ready pod matching `label_selector`."""
    pods = [p for p in kube.pods(label_selector) if p.ready and p.node]
    if not pods:
        raise ActivityFailed(f"no Ready pod matches {label_selector}: no node to drain")
    return pods[0].node


def drain_node(s: ChaosSettings, node: str, timeout_s: float = 300) -> dict[str, Any]:
    """Cordon `node` and evict its pods, respecting their PodDisruptionBudgets (a refused
    eviction is tried again once the budget allows, until `timeout_s`). The fault is recorded
    before the cordon, so a rollback uncordons the node whatever happens next.

    Raises:
        ActivityFailed: the drain did not finish in time (the last refusal says why).
    """
    entry = harness.mark(s, "inject", f"drain-{node}", node=node)
    refusals: list[str] = []

    def drained() -> bool:
        try:
            drain_nodes(
                name=node,
                delete_pods_with_local_storage=True,
                timeout=int(s.env.timeout(timeout_s)),
                secrets=secrets_of(s.env),
            )
        except ActivityFailed as exc:
            if _BUDGET not in str(exc):
                raise
            refusals.append(str(exc).splitlines()[0])
            return False
        return True

    try:
        wait_until(drained, s.env.timeout(timeout_s), f"node {node} drained", POLL_S * 2)
    except TimeoutError as exc:
        why = refusals[-1] if refusals else str(exc)
        raise ActivityFailed(f"node {node} not drained in {timeout_s:g} s: {why}") from None
    return {
        "node": node,
        "injected_wall": entry["wall"],
        "drained_after_s": round(time.time() - entry["wall"], 3),
        "refused_evictions": refusals,
    }


def uncordon_drained(s: ChaosSettings) -> list[str]:
    """Uncordon every node this run drained (restored or not: uncordoning is idempotent);
    their faults marked restored."""
    done = []
    open_ = {f["fault"] for f in harness.open_faults(s)}
    for fault in harness.fault_journal(s):
        if fault["event"] != "inject" or not fault["fault"].startswith("drain-"):
            continue
        if fault["node"] in done:
            continue
        uncordon_node(name=fault["node"], secrets=secrets_of(s.env))
        done.append(fault["node"])
        if fault["fault"] in open_:
            harness.mark(s, "restore", fault["fault"], node=fault["node"])
    return done
