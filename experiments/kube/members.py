"""Losing the PostgreSQL primary's pod and a Redis master's pod on Kubernetes, and checking
the primary really changed.

PostgreSQL (`deploy/base/postgres-patroni.yaml`): Patroni on the Kubernetes DCS labels its pods
`role=master` or `role=replica` (Patroni 3; 4 says `primary`) with `cluster-name=cloudwatcher-pg`.
The primary changed when a pod with another uid than the lost one carries the primary's label
and is Ready. Not by name: Patroni's member name is the pod's name, so the StatefulSet's
replacement of the lost pod, same name, can take the leader lock again.

Redis Cluster (`deploy/base/redis-cluster.yaml`): node *i* is pod `redis-cluster-<i>`, port
7000+*i*. Who is master, and which slots it serves, is what `redis-cli cluster nodes` says in a
pod (an exec through the API); the master changed when another node serves the lost node's
slots and the cluster says `cluster_state:ok`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chaoslib.exceptions import ActivityFailed

from env.process import wait_until
from experiments.kube.api import POLL_S, Kube, Pod, selector
from experiments.kube.pods import kill_pod
from experiments.settings import ChaosSettings

PG_SELECTOR = selector("postgresql", **{"cluster-name": "cloudwatcher-pg"})
#: Patroni's primary label: `master` up to Patroni 3, `primary` from 4.
PG_PRIMARY = f"{PG_SELECTOR},role in (master,primary)"
REDIS_SELECTOR = selector("redis")
REDIS_STATEFULSET = "redis-cluster"
REDIS_FIRST_PORT = 7000
#: The least time a failover after the primary's pod is lost takes (s): Patroni's `ttl` (30)
#: for the leader lock to expire, its `loop_wait` (10) for a replica to notice, and a pod start
#: for the new primary to be Ready (`deploy/base/postgres-patroni.yaml`).
PG_TTL_S, PG_LOOP_WAIT_S, PG_POD_START_S = 30, 10, 30
PG_FAILOVER_S = PG_TTL_S + PG_LOOP_WAIT_S + PG_POD_START_S
#: In a Redis pod: the node's own port from its ordinal, as its probes find it.
_REDIS_CLI = "redis-cli -p $((7000 + ${HOSTNAME##*-})) "


def pg_primary(kube: Kube) -> Pod | None:
    """The Ready pod Patroni labels primary (None while there is none, or two)."""
    pods = [p for p in kube.pods(PG_PRIMARY) if p.ready]
    return pods[0] if len(pods) == 1 else None


def delete_pg_primary(s: ChaosSettings, kube: Kube, timeout_s: float = 60) -> dict[str, Any]:
    """Delete the primary's pod (`kill_pod`: a StatefulSet's, so a 1 s grace, not a force
    deletion); return once a pod with another uid is the Ready primary. The wait lasts
    `timeout_s`, and at least `PG_FAILOVER_S` (the leader lock's expiry and a pod start).

    Raises:
        ActivityFailed: there was not one Ready primary pod to delete.
        DeadlineExceeded: no other pod was the Ready primary in time.
    """
    primaries = [p for p in kube.pods(PG_PRIMARY) if p.ready]
    if len(primaries) != 1:
        raise ActivityFailed(f"not one Ready PostgreSQL primary pod ({PG_PRIMARY}): {primaries}")
    target = primaries[0]
    old = target.name
    entry = kill_pod(s, kube, PG_SELECTOR, target, f"pod-delete-{old}", timeout_s, role="primary")

    def another() -> Pod | None:
        now = pg_primary(kube)
        return now if now and now.uid != target.uid else None

    new = wait_until(
        another,
        s.env.timeout(max(timeout_s, PG_FAILOVER_S)),
        f"another pod than {old} (uid {target.uid}) the Ready primary",
        interval_s=POLL_S,
    )
    return {
        "name": old,
        "uid": entry["uid"],
        "injected_wall": entry["wall"],
        "new_primary": new.name,
        "new_primary_uid": new.uid,
    }


@dataclass(frozen=True)
class RedisNode:
    """One line of `cluster nodes`: id, the pod it runs in, master or not, what it serves."""

    node_id: str
    pod: str
    master: bool
    failed: bool
    master_id: str
    slots: tuple[str, ...]

    @property
    def name(self) -> str:
        """Its name in the local environment's terms: redis<i>."""
        return "redis" + self.pod.rsplit("-", 1)[1]


def parse_cluster_nodes(text: str) -> list[RedisNode]:
    """`redis-cli cluster nodes`: `<id> <ip:port@bus[,hostname]> <flags> <master id> <ping>
    <pong> <epoch> <link> <slot>...` a line; the pod from the port (7000 + ordinal)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        port = int(fields[1].split("@", 1)[0].rsplit(":", 1)[1])
        flags = fields[2].split(",")
        out.append(
            RedisNode(
                node_id=fields[0],
                pod=f"{REDIS_STATEFULSET}-{port - REDIS_FIRST_PORT}",
                master="master" in flags,
                failed="fail" in flags or "fail?" in flags,
                master_id=fields[3],
                slots=tuple(fields[8:]),
            )
        )
    return sorted(out, key=lambda n: n.pod)


def redis_view(kube: Kube, exclude: str = "") -> tuple[list[RedisNode], str]:
    """The cluster as a Ready Redis pod other than `exclude` sees it: its nodes and its
    `cluster_state`."""
    pods = [p.name for p in kube.pods(REDIS_SELECTOR) if p.ready]
    asked = next((p for p in pods if p != exclude), None)
    if asked is None:
        raise ActivityFailed("no Ready Redis pod to ask")
    nodes = parse_cluster_nodes(
        kube.exec(asked, "redis", ["sh", "-c", _REDIS_CLI + "cluster nodes"])
    )
    info = kube.exec(asked, "redis", ["sh", "-c", _REDIS_CLI + "cluster info"])
    states = [ln.split(":", 1)[1] for ln in info.splitlines() if ln.startswith("cluster_state:")]
    return nodes, states[0].strip() if states else ""


def delete_redis_master(
    s: ChaosSettings, kube: Kube, node: str = "", timeout_s: float = 30
) -> dict[str, Any]:
    """Delete a master's pod (`node` like "redis0", default the first master; `kill_pod`: a
    StatefulSet's, so a 1 s grace, not a force deletion); return once another node serves its
    slots and the cluster state is ok.

    Raises:
        ActivityFailed: no master serving slots is seen, `node` is not one, or its pod is not
            listed.
        DeadlineExceeded: no replica took its slots in time.
    """
    nodes, _ = redis_view(kube)
    masters = [n for n in nodes if n.master and not n.failed and n.slots]
    if not masters:
        raise ActivityFailed(f"no Redis master serving slots in `cluster nodes`: {nodes}")
    lost = next((n for n in masters if n.name == node), None) if node else masters[0]
    if lost is None:
        raise ActivityFailed(f"{node} is not a master (masters: {[n.name for n in masters]})")
    pod = next((p for p in kube.pods(REDIS_SELECTOR) if p.name == lost.pod), None)
    if pod is None:
        raise ActivityFailed(f"{lost.name}'s pod {lost.pod} is not among {REDIS_SELECTOR}'s")
    fault = f"kill-{lost.name}"
    entry = kill_pod(s, kube, REDIS_SELECTOR, pod, fault, timeout_s, component=lost.name)

    def promoted() -> list[RedisNode] | None:
        now, state = redis_view(kube, exclude=lost.pod)
        heir = [n for n in now if n.master and not n.failed and n.slots == lost.slots]
        return now if state == "ok" and heir and heir[0].node_id != lost.node_id else None

    now = wait_until(
        promoted, s.env.timeout(timeout_s), f"a replica of {lost.name} promoted", POLL_S
    )
    return {
        "killed": lost.name,
        "pod": lost.pod,
        "uid": entry["uid"],
        "masters_after": sorted(n.name for n in now if n.master and n.slots and not n.failed),
        "injected_wall": entry["wall"],
    }
