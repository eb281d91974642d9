"""Whether the system on the cluster is whole, and the steps that put it back after an
experiment (the kubernetes runtime's part of `experiments.harness.restore_all`).

Whole means: every Deployment and StatefulSet of the namespace has all its replicas Ready and
up to date, and the in-cluster Toxiproxy has every proxy enabled and no toxic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from env.process import wait_until
from experiments import harness
from experiments.kube.api import Kube, connect
from experiments.kube.nodes import uncordon_drained
from experiments.settings import ChaosSettings


def workload_problems(kube: Kube) -> list[str]:
    """Each Deployment or StatefulSet short of Ready or updated replicas, as a line."""
    out = []
    listed: list[tuple[str, list[Any]]] = [
        ("deployment", kube.apps.list_namespaced_deployment(kube.namespace).items),
        ("statefulset", kube.apps.list_namespaced_stateful_set(kube.namespace).items),
    ]
    for kind, items in listed:
        for w in items:
            want = w.spec.replicas if w.spec.replicas is not None else 1
            ready = w.status.ready_replicas or 0
            updated = w.status.updated_replicas or 0
            if ready < want or updated < want:
                out.append(f"{kind}/{w.metadata.name}: {ready} of {want} Ready, {updated} updated")
    return out


def problems(s: ChaosSettings) -> list[str]:
    """What keeps the system from being whole (nothing: it is)."""
    out = workload_problems(connect(s.env))
    api = harness.fault_api(s)
    proxies = api.session.get(f"{api.url}/proxies", timeout=5).json()
    out += [
        f"toxiproxy {n}: toxic or disabled"
        for n, p in proxies.items()
        if p.get("toxics") or not p.get("enabled", True)
    ]
    return out


def wait_whole(s: ChaosSettings, wait_s: float) -> bool:
    """Wait (bounded) until nothing keeps the system from being whole."""
    wait_until(lambda: not problems(s), s.env.timeout(wait_s), "the system whole", 1.0)
    return True


def restore_steps(s: ChaosSettings) -> list[tuple[str, Callable[[], Any]]]:
    """`restore_all`'s steps on the cluster: toxics removed and proxies enabled (checked),
    drained nodes uncordoned, open faults closed. A killed pod needs nothing: its controller
    replaced it, which the final wait for health checks."""
    return [
        ("toxics_reset", lambda: harness.reset_toxics(harness.fault_api(s))),
        ("nodes_uncordoned", lambda: uncordon_drained(s)),
        ("faults_closed", lambda: harness.close_open_faults(s)),
    ]
