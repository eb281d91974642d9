"""Pod kill on Kubernetes: a pod deleted through chaosk8s (`terminate_pods`, by label
selector and the pod's exact name), then the pod object seen gone (its uid no longer answers)
and a replacement (a pod of the same selector that did not exist before the kill) Ready,
within a deadline; polled, never slept.

Through the API no delete is a crash. A Deployment's pod is force-deleted (grace period 0): the
object goes at once and its ReplicaSet starts the replacement at once, while the kubelet still
stops the old containers with SIGTERM and its 2 s minimum grace; the object gone is no proof
the process died. A StatefulSet's pod is never force-deleted (the replacement, same name and
volume, could run beside the old one): an ordinary delete with a 1 s grace, which the kubelet
honours, so its object goes, and the controller recreates it, only once the containers stopped.

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
#: The grace period of a StatefulSet pod's delete (s): short, but not a force deletion.
STATEFUL_GRACE_S = 1


def grace_period_of(target: Pod) -> int:
    """The delete's grace period for `target` (s): 0 (a force deletion) for a pod any other
    controller replaces, `STATEFUL_GRACE_S` for a StatefulSet's."""
    return STATEFUL_GRACE_S if target.owner == "StatefulSet" else 0


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
    """Delete `target` (one of `label_selector`'s pods) through chaosk8s, with the grace
    period `grace_period_of` gives it, and wait until its uid is gone. The fault (`fault`, with
    the pod, its uid, the grace period, the selector and every uid the selector had, from which
    `wait_replaced` tells a replacement) is recorded before the delete, so an interruption
    after it still leaves the fault in the journal. Returns the journal's entry.

    Raises:
        ActivityFailed: chaosk8s deleted another pod than `target`.
        DeadlineExceeded: the pod's uid still answered after `timeout_s`.
    """
    before = [p.uid for p in kube.pods(label_selector)]
    name, uid = target.name, target.uid
    grace = grace_period_of(target)
    secrets = secrets_of(s.env)  # refuses another cluster before anything is recorded
    entry = harness.mark(
        s,
        "inject",
        fault,
        pod=name,
        uid=uid,
        node=target.node,
        grace_period_s=grace,
        selector=label_selector,
        uids_before=before,
        **detail,
    )
    deleted = terminate_pods(
        label_selector=label_selector,
        name_pattern=f"^{re.escape(name)}$",
        qty=1,
        grace_period=grace,
        ns=kube.namespace,
        secrets=secrets,
    )
    if deleted != [name]:
        raise ActivityFailed(f"chaosk8s deleted {deleted}, not {name}")
    wait_until(
        lambda: gone(kube, name, uid),
        s.env.timeout(timeout_s),
        f"pod {name} (uid {uid}) gone",
        interval_s=POLL_S,
    )
    return entry


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
    role's component deleted (`kill_pod`: a Deployment's force-deleted) and its object seen
    gone. `which`: first, newest or a pod's name
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
