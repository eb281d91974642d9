"""Pod kill on Kubernetes: a pod deleted through chaosk8s (`terminate_pods`, by label
selector and the pod's exact name), with the checks the local runtime makes of a SIGKILL: the
pod really gone (its uid no longer answers), then a replacement (a pod of the same selector
that did not exist before the kill) Ready, within a deadline; polled, never slept.

A StatefulSet's replacement keeps the name and gets a new uid, a Deployment's gets both new:
the uids tell them apart either way.
"""

from __future__ import annotations

import re
from typing import Any

from chaosk8s.pod.actions import terminate_pods
from chaoslib.exceptions import ActivityFailed
from kubernetes.client.exceptions import ApiException

from env.process import wait_until
from experiments import harness
from experiments.kube.api import POLL_S, Kube, Pod, connect, secrets_of, selector
from experiments.settings import ChaosSettings

#: The services' HTTP port in their pods (`deploy/base/services-*.yaml`: `http`, 8080).
SERVICE_PORT = 8080


def pick(pods: list[Pod], which: str, what: str) -> Pod:
    """The Ready pod to kill among `pods` (by name): `first`, `newest` (the latest created),
    or a pod's name.

    Raises:
        ActivityFailed: none is Ready, or no Ready pod has that name.
    """
    live = [p for p in pods if p.ready]
    if not live:
        raise ActivityFailed(f"no Ready {what} pod to kill")
    if which == "first":
        return live[0]
    if which == "newest":
        return max(live, key=lambda p: (p.created is not None, p.created, p.name))
    named = [p for p in live if p.name == which]
    if not named:
        raise ActivityFailed(f"{which} is not a Ready {what} pod")
    return named[0]


def gone(kube: Kube, name: str, uid: str) -> bool:
    """The pod `name` with `uid` no longer exists (404, or the name now has another uid)."""
    try:
        pod = kube.core.read_namespaced_pod(name, kube.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return Pod.of(pod).uid != uid


def kill_pod(
    s: ChaosSettings,
    kube: Kube,
    label_selector: str,
    target: Pod,
    fault: str,
    timeout_s: float = 60,
    **detail: Any,
) -> dict[str, Any]:
    """Delete `target` (one of `label_selector`'s pods) at once (grace period 0: a crash,
    not a shutdown) through chaosk8s, wait until its uid is gone, and record the fault
    (`fault`, with the pod, its uid, the selector and every uid the selector had, from which
    `wait_replaced` tells a replacement). Returns the journal's entry."""
    before = [p.uid for p in kube.pods(label_selector)]
    name, uid = target.name, target.uid
    deleted = terminate_pods(
        label_selector=label_selector,
        name_pattern=f"^{re.escape(name)}$",
        qty=1,
        grace_period=0,
        ns=kube.namespace,
        secrets=secrets_of(s.env),
    )
    if deleted != [name]:
        raise ActivityFailed(f"chaosk8s deleted {deleted}, not {name}")
    wait_until(
        lambda: gone(kube, name, uid),
        s.env.timeout(timeout_s),
        f"pod {name} (uid {uid}) gone",
        interval_s=POLL_S,
    )
    return harness.mark(
        s,
        "inject",
        fault,
        pod=name,
        uid=uid,
        node=target.node,
        selector=label_selector,
        uids_before=before,
        **detail,
    )


def replacement(kube: Kube, fault: dict[str, Any]) -> Pod | None:
    """A Ready pod of the fault's selector that did not exist before it, if there is one."""
    fresh = [
        p for p in kube.pods(fault["selector"]) if p.uid not in fault["uids_before"] and p.ready
    ]
    return fresh[0] if fresh else None


def wait_replaced(
    s: ChaosSettings, kube: Kube, fault: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """Wait until a replacement of the fault's pod is Ready; mark the fault restored."""
    pod = wait_until(
        lambda: replacement(kube, fault),
        s.env.timeout(timeout_s),
        f"a replacement of {fault['pod']} Ready",
        interval_s=POLL_S,
    )
    entry = harness.mark(s, "restore", fault["fault"], pod=pod.name, uid=pod.uid)
    return {
        "killed": fault["pod"],
        **pod.journal(),
        "down_s": round(entry["wall"] - fault["wall"], 3),
    }


def pod_metric(kube: Kube, pod: str, name: str, port: int = SERVICE_PORT) -> float:
    """The sum of a pod's samples `name`, from its `/metrics` through the API server."""
    resp = kube.session().get(f"{kube.pod_url(pod, port)}/metrics", timeout=5)
    resp.raise_for_status()
    return harness.metric_sum(resp.text, name)


def kill_service(
    s: ChaosSettings, role: str, which: str, mid_job: bool, wait_busy_s: float
) -> dict[str, Any]:
    """`experiments.activities.process.actions.kill_service` on Kubernetes: a Ready pod of the
    role's component deleted (grace 0) and seen gone. `which`: first, newest or a pod's name
    (the scheduler's leader is not visible through the API: its lease is a PostgreSQL row)."""
    if which == "leader":
        raise ActivityFailed(
            "which=leader: the scheduler's lease is a PostgreSQL row, not an API object"
        )
    kube = connect(s.env)
    sel = selector(role)
    target = pick(kube.pods(sel), which, role)
    if mid_job:
        wait_until(
            lambda: pod_metric(kube, target.name, "cw_jobs_in_flight") >= 1,
            wait_busy_s,
            f"{target.name} processing a job",
            interval_s=POLL_S,
        )
    entry = kill_pod(s, kube, sel, target, f"kill-{target.name}", component=target.name)
    return {
        "component": target.name,
        "uid": target.uid,
        "node": target.node,
        "injected_wall": entry["wall"],
    }


def wait_restarted(s: ChaosSettings, timeout_s: float) -> list[dict[str, Any]]:
    """`wait_restarted` on Kubernetes: every pod the run killed replaced by a Ready one."""
    kube = connect(s.env)
    return [
        wait_replaced(s, kube, fault, timeout_s)
        for fault in harness.open_faults(s)
        if fault["fault"].startswith("kill-") and "selector" in fault
    ]
