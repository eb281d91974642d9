"""A node drained, as for maintenance, through chaosk8s (`drain_nodes`: cordon, then every
pod of every namespace on the node evicted through the Eviction API, which refuses an eviction
a PodDisruptionBudget forbids), and uncordoned afterwards (`uncordon_node`).

chaosk8s gives up at the first refused eviction; `kubectl drain` tries again until the budget
allows it (the evicted pods' replacements become Ready elsewhere). `drain_node` does what
kubectl does: each refusal (a 429) is recorded and the drain retried (chaosk8s re-lists what
is left on the node) until one deadline, which also bounds chaosk8s's own wait for the evicted
pods to go; any other failure ends the drain at once.

Which node: one whose pods can all leave without breaking the experiment's own hypothesis
(`why_not_drain`): no StatefulSet's pod (PostgreSQL, Redis: their local-path volumes are bound
to the node, so the replacement would stay Pending and its budget refuse every later eviction),
no single replica of a Deployment (Toxiproxy sits in every database path), none of the game
day's own load and reports, no pod without a controller (nothing would replace it; chaosk8s
refuses such a node).

A node already cordoned is not ours: it is refused, and only nodes this run cordoned are
uncordoned.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from chaosk8s.node.actions import drain_nodes, uncordon_node
from chaoslib.exceptions import ActivityFailed
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from experiments import harness
from experiments.kube.api import COMPONENT, POLL_S, Kube, secrets_of
from experiments.settings import ChaosSettings

#: The game day's own pods (`deploy/base/gameday-cronjob.yaml`, `locust.yaml`): the load the
#: hypothesis is judged under, and its reports.
LOAD_COMPONENTS = frozenset(
    {"gameday", "locust", "locust-master", "locust-worker", "locust-reports"}
)
#: How long a refused drain waits before it tries again (s).
RETRY_S = POLL_S * 2


def _meta(obj: client.V1Pod) -> client.V1ObjectMeta:
    return obj.metadata or client.V1ObjectMeta()


def _named(pod: client.V1Pod) -> str:
    return f"{_meta(pod).namespace}/{_meta(pod).name}"


def _evicted(pod: client.V1Pod) -> bool:
    """Whether a drain evicts `pod`: neither a static pod's mirror, nor finished, nor a
    DaemonSet's (as kubectl and chaosk8s count)."""
    meta = _meta(pod)
    if "kubernetes.io/config.mirror" in (meta.annotations or {}):
        return False
    if pod.status and pod.status.phase in ("Succeeded", "Failed"):
        return False
    return not any(o.kind == "DaemonSet" for o in meta.owner_references or [])


def _unmanaged(pod: client.V1Pod) -> bool:
    return _controller(pod) is None


def why_not_drain(pod: client.V1Pod, replicas: Counter[tuple[str, str]]) -> str | None:
    """Why evicting `pod` would break the experiment (None: it would not).

    Args:
        replicas: how many pods each ReplicaSet has (`replicas_of`), by (namespace, name).
    """
    if not _evicted(pod):
        return None
    meta = _meta(pod)
    name = _named(pod)
    component = (meta.labels or {}).get(COMPONENT, "")
    if component in LOAD_COMPONENTS:
        return f"{name} is the game day's own {component}"
    owner = _controller(pod)
    if owner is None:
        return f"{name} has no controller: nothing would replace it"
    if owner.kind == "StatefulSet":
        return (
            f"{name} is StatefulSet {owner.name}'s: its volume is bound to the node, its "
            "replacement would stay Pending"
        )
    if owner.kind == "ReplicaSet" and replicas[(meta.namespace or "", owner.name)] < 2:
        return f"{name} is the only replica of {owner.name}"
    return None


def _controller(pod: client.V1Pod) -> client.V1OwnerReference | None:
    return next((o for o in _meta(pod).owner_references or [] if o.controller), None)


def replicas_of(pods: list[client.V1Pod]) -> Counter[tuple[str, str]]:
    """How many of `pods` each ReplicaSet has, by (namespace, name). Counted from the pods
    rather than read from the ReplicaSets: the game day's ClusterRole lists pods cluster-wide,
    not ReplicaSets."""
    return Counter(
        (_meta(p).namespace or "", owner.name)
        for p in pods
        if (owner := _controller(p)) and owner.kind == "ReplicaSet" and _evicted(p)
    )


def pick_node(kube: Kube, label_selector: str, node: str = "") -> str:
    """The node to drain: `node`, or the first (by pod name) that runs a Ready pod matching
    `label_selector`, so the drain evicts one of its replicas; either way one whose pods, of
    every namespace, can all be evicted without breaking the experiment (`why_not_drain`).

    Raises:
        ActivityFailed: no such node, each candidate's reasons said.
    """
    if node:
        candidates = [node]
    else:
        hosts = [p.node for p in kube.pods(label_selector) if p.ready and p.node]
        candidates = list(dict.fromkeys(hosts))
        if not candidates:
            raise ActivityFailed(f"no Ready pod matches {label_selector}: no node to drain")
    everywhere = kube.core.list_pod_for_all_namespaces().items
    replicas = replicas_of(everywhere)
    reasons: dict[str, list[str]] = {}
    for name in candidates:
        on_node = [p for p in everywhere if p.spec and p.spec.node_name == name]
        why = [w for p in on_node if (w := why_not_drain(p, replicas))]
        if not why:
            return name
        reasons[name] = why
    said = "; ".join(f"{n}: {', '.join(w)}" for n, w in reasons.items())
    raise ActivityFailed(
        f"no node can be drained without breaking the experiment ({said}). The drain needs a "
        "node with only pods of replicated Deployments (and DaemonSets): give the cluster "
        "more workers (kind: at least 3)"
    )


def _check_drainable(kube: Kube, node: str) -> None:
    """Refuse a node already cordoned (not ours to drain, nor to uncordon afterwards), or
    holding a pod without a controller (chaosk8s fails on a pod whose `ownerReferences` is
    null with a TypeError; kubectl drain refuses it without --force), or a pod whose
    `spec.volumes` is null (chaosk8s iterates them, with the same TypeError)."""
    if (kube.core.read_node(node).spec or client.V1NodeSpec()).unschedulable:
        raise ActivityFailed(
            f"node {node} is already cordoned (spec.unschedulable): someone else's maintenance, "
            f"not ours to drain nor to uncordon; uncordon it first (kubectl uncordon {node}) "
            "or drain another"
        )
    pods = kube.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    bare = [_named(p) for p in pods if _evicted(p) and _unmanaged(p)]
    if bare:
        raise ActivityFailed(
            f"node {node} runs pods without a controller ({', '.join(bare)}): evicted, nothing "
            "would replace them; delete them first or drain another node"
        )
    bare = [_named(p) for p in pods if p.spec and p.spec.volumes is None]
    if bare:
        raise ActivityFailed(
            f"node {node} runs pods without volumes ({', '.join(bare)}), which chaosk8s's "
            "drain_nodes cannot handle (it iterates spec.volumes): drain another node"
        )


def refused_by_budget(exc: ActivityFailed) -> bool:
    """Whether chaosk8s's failure is an eviction refused with 429 (a PodDisruptionBudget
    forbids it for now): chaosk8s raises inside its `except ApiException`, so the API's answer
    is the failure's context."""
    cause = exc.__context__
    return isinstance(cause, ApiException) and cause.status == 429


def drain_node(s: ChaosSettings, kube: Kube, node: str, timeout_s: float = 300) -> dict[str, Any]:
    """Cordon `node` and evict its pods, of every namespace, respecting their
    PodDisruptionBudgets: a refused eviction (429) is tried again every `RETRY_S` until
    `timeout_s`, which also bounds chaosk8s's wait for the evicted pods to go (it polls every
    10 s, so the whole lasts at most about `timeout_s` + 10 s). The fault is recorded, with the
    node's `unschedulable` before (False), ahead of the cordon, so a rollback uncordons the node
    whatever happens next.

    Raises:
        ActivityFailed: the node is already cordoned or runs a pod without a controller
            (nothing done); an eviction failed otherwise than by a budget (a 403...), or the
            pods did not go, or the drain did not finish in `timeout_s` (the last refusal says
            why).
    """
    secrets = secrets_of(s.env)  # refuses another cluster before anything is done
    _check_drainable(kube, node)
    entry = harness.mark(s, "inject", f"drain-{node}", node=node, unschedulable_before=False)
    refusals: list[str] = []
    budget_s = s.env.timeout(timeout_s)
    deadline = time.monotonic() + budget_s
    while True:
        left = deadline - time.monotonic()
        try:
            drain_nodes(
                name=node,
                delete_pods_with_local_storage=True,
                timeout=max(1, math.ceil(left)),
                secrets=secrets,
            )
            break
        except ActivityFailed as exc:
            if not refused_by_budget(exc):
                raise
            refusals.append(str(exc).splitlines()[0])
        except TypeError as exc:  # a pod without ownerReferences or volumes, come since
            raise ActivityFailed(
                f"chaosk8s could not drain {node}, a pod without ownerReferences or volumes "
                f"on it: {exc}"
            ) from exc
        if time.monotonic() + RETRY_S >= deadline:
            raise ActivityFailed(f"node {node} not drained in {budget_s:g} s: {refusals[-1]}")
        time.sleep(RETRY_S)
    return {
        "node": node,
        "injected_wall": entry["wall"],
        "drained_after_s": round(time.time() - entry["wall"], 3),
        "refused_evictions": refusals,
    }


def uncordon_drained(s: ChaosSettings) -> list[str]:
    """Uncordon every node this run cordoned (restored or not: uncordoning is idempotent),
    never one that was cordoned before; their faults marked restored. A failure does not stop
    the others.

    Raises:
        ActivityFailed: some nodes could not be uncordoned (each said); the others were.
    """
    done: list[str] = []
    tried: set[str] = set()
    errors: list[str] = []
    open_ = {f["fault"] for f in harness.open_faults(s)}
    for fault in harness.fault_journal(s):
        if fault["event"] != "inject" or not fault["fault"].startswith("drain-"):
            continue
        if fault["node"] in tried or fault.get("unschedulable_before", False):
            continue
        tried.add(fault["node"])
        try:
            uncordon_node(name=fault["node"], secrets=secrets_of(s.env))
        except Exception as exc:  # reported below, with every other node's
            errors.append(f"{fault['node']}: {exc}")
            continue
        done.append(fault["node"])
        if fault["fault"] in open_:
            harness.mark(s, "restore", fault["fault"], node=fault["node"])
    if errors:
        raise ActivityFailed(f"uncordoned {done or 'no node'}, but not: {'; '.join(errors)}")
    return done
