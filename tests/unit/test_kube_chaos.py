"""The chaos activities on the kubernetes runtime, against the real kubernetes client and
chaosk8s talking HTTP to a fake API server that replays recorded responses (`fake_kube`): the
calls made, their label selectors, the waits (a replacement Ready only on the Nth poll), the
evictions a PodDisruptionBudget refuses, and the restore."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaoslib.exceptions import ActivityFailed
from kubernetes.config import kube_config

from env.settings import EnvSettings
from experiments import harness
from experiments.settings import ChaosSettings
from tests.unit.fake_kube import (
    NS,
    Exec,
    FakeApi,
    fixture,
    kubeconfig,
    matches,
    not_found,
    pod,
    pod_list,
    serve,
)

PODS = f"/api/v1/namespaces/{NS}/pods"
TOXIPROXY = f"/api/v1/namespaces/{NS}/services/toxiproxy:8474/proxy"
API = "app.kubernetes.io/component=api"


@pytest.fixture
def cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeApi, ChaosSettings]]:
    """The fake API server, and chaos settings of the kubernetes runtime pointing at it."""
    with serve() as api:
        config = kubeconfig(tmp_path / "kubeconfig", api.url)
        # What `cwh chaos run` gives the `chaos` process (the kubernetes client reads the
        # variable when it is imported, before any test: set both as a fresh process has them).
        monkeypatch.setenv("KUBECONFIG", str(config))
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
        env = EnvSettings(
            base_port=21200,
            run_dir=tmp_path / "env",
            runtime="kubernetes",
            kubeconfig=str(config),
            namespace=NS,
        )
        yield api, ChaosSettings(env=env, run_dir=tmp_path / "run")


def journal(s: ChaosSettings) -> list[dict[str, Any]]:
    return harness.fault_journal(s)


def a_node(name: str = "cwh-worker", unschedulable: bool = False) -> dict[str, Any]:
    """The recorded node as `name`, cordoned or not."""
    node = fixture("node.json")
    node["metadata"].update(name=name)
    if unschedulable:
        node["spec"]["unschedulable"] = True
    return node


def nodes(api: FakeApi, *names: str, unschedulable: bool = False) -> None:
    """The recorded node as each of `names`, the cluster's nodes: listed, read, and patched."""
    items = [a_node(n, unschedulable) for n in names]
    api.on("GET", "/api/v1/nodes", {"kind": "NodeList", "apiVersion": "v1", "items": items})
    for node in items:
        api.on("GET", f"/api/v1/nodes/{node['metadata']['name']}", node)
        api.on("PATCH", f"/api/v1/nodes/{node['metadata']['name']}", node)


def one_node(api: FakeApi) -> None:
    """The recorded node `cwh-worker`, alone in the cluster."""
    nodes(api, "cwh-worker")


def pg_member(i: int, role: str, uid: str = "", ready: bool = True) -> dict[str, Any]:
    """PostgreSQL member `i`'s pod, as Patroni labels it."""
    return pod(
        f"cloudwatcher-pg-{i}",
        uid or f"pg-{i}",
        component="postgresql",
        ready=ready,
        owner="StatefulSet",
        role=role,
        **{"cluster-name": "cloudwatcher-pg"},
    )


def list_selectors(api: FakeApi, path: str = PODS) -> list[str]:
    return [c.query.get("labelSelector", [""])[0] for c in api.called("GET", path)]


def test_a_killed_api_pod_is_gone_by_uid_and_replaced_by_a_new_ready_one(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.process.actions import kill_service, wait_restarted

    api, s = cluster
    a, b, c = (pod(f"api-6d9f7c8b5d-{x}", f"uid-{x}") for x in "abc")
    new_starting = pod("api-6d9f7c8b5d-d", "uid-d", ready=False)
    new_ready = pod("api-6d9f7c8b5d-d", "uid-d")
    # Three lists before the kill (ours to pick, ours to remember the uids, chaosk8s's to
    # select), then the replacement starting for two polls and Ready on the third.
    api.on("GET", PODS, *[pod_list(a, b, c)] * 3, pod_list(new_starting, b, c))
    api.on("GET", PODS, pod_list(new_starting, b, c), pod_list(new_ready, b, c))
    terminating = {**a, "metadata": {**a["metadata"], "deletionTimestamp": "2026-12-04T18:20:00Z"}}
    api.on("DELETE", f"{PODS}/api-6d9f7c8b5d-a", terminating)
    api.on("GET", f"{PODS}/api-6d9f7c8b5d-a", terminating, not_found("api-6d9f7c8b5d-a"))

    killed = kill_service("api", configuration=s.to_configuration())

    assert killed["component"] == "api-6d9f7c8b5d-a"
    assert killed["uid"] == "uid-a"
    (delete,) = api.called("DELETE")
    # A Deployment's pod force-deleted: its object goes at once (the kubelet still sends
    # SIGTERM), the ReplicaSet replaces it at once.
    assert delete.body["gracePeriodSeconds"] == 0
    assert len(api.called("GET", f"{PODS}/api-6d9f7c8b5d-a")) == 2  # terminating, then gone
    lists_before = len(api.called("GET", PODS))

    (back,) = wait_restarted(configuration=s.to_configuration())

    assert back["pod"] == "api-6d9f7c8b5d-d"
    assert back["uid"] == "uid-d"
    assert back["ready"]
    assert len(api.called("GET", PODS)) - lists_before == 3  # Ready only on the third poll
    assert set(list_selectors(api)) == {API}
    assert {c.authorization for c in api.calls} == {"Bearer fake-token"}
    inject, restore = journal(s)
    assert (inject["event"], inject["fault"], inject["uid"]) == (
        "inject",
        "kill-api-6d9f7c8b5d-a",
        "uid-a",
    )
    assert inject["uids_before"] == ["uid-a", "uid-b", "uid-c"]
    assert (restore["event"], restore["uid"]) == ("restore", "uid-d")


def test_a_kill_waits_for_a_worker_busy_with_a_job(cluster: tuple[FakeApi, ChaosSettings]) -> None:
    from experiments.activities.process.actions import kill_service

    api, s = cluster
    w = pod("worker-5f6d7c8b9a-a", "uid-w", component="worker")
    api.on("GET", PODS, pod_list(w))
    metrics = f"{PODS}/worker-5f6d7c8b9a-a:8080/proxy/metrics"
    idle = "# TYPE cw_jobs_in_flight gauge\ncw_jobs_in_flight 0.0\n"
    busy = "# TYPE cw_jobs_in_flight gauge\ncw_jobs_in_flight 1.0\n"
    api.on("GET", metrics, idle, idle, busy)
    api.on("DELETE", f"{PODS}/worker-5f6d7c8b9a-a", w)
    api.on("GET", f"{PODS}/worker-5f6d7c8b9a-a", not_found("worker-5f6d7c8b9a-a"))

    kill_service("worker", mid_job=True, configuration=s.to_configuration())

    assert len(api.called("GET", metrics)) == 3  # killed on the scrape that saw a job
    assert api.calls.index(api.called("DELETE")[0]) > api.calls.index(api.called("GET", metrics)[2])


def test_the_postgresql_primary_pod_is_deleted_and_another_member_promoted(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.postgres.actions import lose_primary_node
    from experiments.kube.members import PG_PRIMARY, PG_SELECTOR

    api, s = cluster

    pg0, pg1, pg2 = pg_member(0, "master"), pg_member(1, "replica"), pg_member(2, "replica")
    reborn = pg_member(0, "replica", uid="pg-0-new", ready=False)
    # The pick, the uids remembered, chaosk8s's selection; then, while the leader lock expires,
    # nobody is primary; then pg1 takes it, starting, then Ready. Each list is filtered by the
    # selector asked, as the API server does.
    api.on(
        "GET",
        PODS,
        *[pod_list(pg0, pg1, pg2)] * 3,
        *[pod_list(reborn, pg1, pg2)] * 2,
        pod_list(reborn, pg_member(1, "master", ready=False), pg2),
        pod_list(reborn, pg_member(1, "master"), pg2),
    )
    api.on("DELETE", f"{PODS}/cloudwatcher-pg-0", pg0)
    # The StatefulSet brings the name back once the pod stopped: a new uid tells it died.
    api.on("GET", f"{PODS}/cloudwatcher-pg-0", reborn)

    out = lose_primary_node(configuration=s.to_configuration())

    assert (out["name"], out["new_primary"]) == ("cloudwatcher-pg-0", "cloudwatcher-pg-1")
    assert out["new_primary_uid"] == "pg-1"
    (delete,) = api.called("DELETE")
    assert delete.body["gracePeriodSeconds"] == 1  # a StatefulSet's pod: never force-deleted
    selectors = list_selectors(api)
    assert selectors.count(PG_PRIMARY) == 1 + 4  # the pick, then Ready primary on the 4th poll
    assert selectors.count(PG_SELECTOR) == 2  # the uids remembered, chaosk8s's selection
    assert PG_PRIMARY == (
        "app.kubernetes.io/component=postgresql,cluster-name=cloudwatcher-pg,"
        "role in (master,primary)"
    )
    (inject,) = journal(s)
    assert (inject["fault"], inject["uid"], inject["role"]) == (
        "pod-delete-cloudwatcher-pg-0",
        "pg-0",
        "primary",
    )
    assert inject["grace_period_s"] == 1


def test_the_postgresql_failover_is_told_by_the_primarys_uid_not_its_name(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    """Patroni's member name is the pod's: the StatefulSet's replacement of the lost primary,
    same name, new uid, can be primary again. By name, the failover would never be seen."""
    from experiments.activities.postgres.actions import lose_primary_node

    api, s = cluster
    pg0, pg1 = pg_member(0, "master"), pg_member(1, "replica")
    reborn = pg_member(0, "replica", uid="pg-0-new", ready=False)
    again = pg_member(0, "master", uid="pg-0-new")
    api.on(
        "GET",
        PODS,
        *[pod_list(pg0, pg1)] * 3,
        pod_list(pg0, pg1),  # the old primary still listed (the poll raced the delete)
        pod_list(reborn, pg1),
        pod_list(again, pg1),
    )
    api.on("DELETE", f"{PODS}/cloudwatcher-pg-0", pg0)
    api.on("GET", f"{PODS}/cloudwatcher-pg-0", reborn)

    out = lose_primary_node(timeout_s=5, configuration=s.to_configuration())

    assert (out["new_primary"], out["new_primary_uid"]) == ("cloudwatcher-pg-0", "pg-0-new")


def test_the_failover_wait_lasts_at_least_patronis_ttl_loop_wait_and_a_pod_start() -> None:
    import yaml

    from experiments.kube.members import PG_FAILOVER_S, PG_LOOP_WAIT_S, PG_TTL_S

    docs = yaml.safe_load_all(Path("deploy/base/postgres-patroni.yaml").read_text())
    (config,) = [d for d in docs if d and d["kind"] == "ConfigMap" and "patroni.yml" in d["data"]]
    dcs = yaml.safe_load(config["data"]["patroni.yml"])["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"]) == (PG_TTL_S, PG_LOOP_WAIT_S)
    assert dcs["ttl"] + dcs["loop_wait"] < PG_FAILOVER_S


def test_a_redis_master_pod_is_deleted_and_its_replica_serves_its_slots(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.redis.actions import kill_master

    api, s = cluster
    nodes = [
        pod(f"redis-cluster-{i}", f"redis-{i}", component="redis", owner="StatefulSet")
        for i in range(6)
    ]
    reborn = pod(
        "redis-cluster-0", "redis-0-new", component="redis", ready=False, owner="StatefulSet"
    )
    api.on("GET", PODS, *[pod_list(*nodes)] * 3, pod_list(reborn, *nodes[1:]))
    api.on("DELETE", f"{PODS}/redis-cluster-0", nodes[0])
    api.on("GET", f"{PODS}/redis-cluster-0", reborn)
    ok = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\n"
    api.on_exec("redis-cluster-0", fixture("redis-cluster-nodes-before.txt"), ok)
    api.on_exec(
        "redis-cluster-1",
        fixture("redis-cluster-nodes-failing-over.txt"),
        "cluster_state:fail\r\n",
        fixture("redis-cluster-nodes-after.txt"),
        ok,
    )

    out = kill_master(configuration=s.to_configuration())

    assert (out["killed"], out["pod"], out["uid"]) == ("redis0", "redis-cluster-0", "redis-0")
    assert api.called("DELETE")[0].body["gracePeriodSeconds"] == 1  # not a force deletion
    assert out["masters_after"] == ["redis1", "redis2", "redis4"]
    execs = api.called("GET", f"{PODS}/redis-cluster-1/exec")
    assert len(execs) == 4  # promoted on the second look (two commands a look)
    command = execs[0].query["command"]
    assert command[:2] == ["sh", "-c"]
    assert command[2].endswith("cluster nodes")
    assert execs[0].query["container"] == ["redis"]
    assert set(list_selectors(api)) == {"app.kubernetes.io/component=redis"}


def test_a_drain_waits_out_a_budget_refusal_then_evicts_and_the_rollback_uncordons(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.node.actions import drain_node, uncordon_nodes

    api, s = cluster
    one_node(api)
    a = pod("api-6d9f7c8b5d-a", "uid-a")
    hub = pod("hub-7c8d9e0f1a-a", "uid-h", component="hub")
    api.on("GET", PODS, pod_list(a))
    api.on("GET", "/api/v1/pods", pod_list(a, hub, *elsewhere(a, hub)))
    refused = (429, fixture("status-eviction-refused.json"))
    created = (201, fixture("status-created.json"))
    api.on("POST", f"{PODS}/api-6d9f7c8b5d-a/eviction", refused, created)
    api.on("POST", f"{PODS}/hub-7c8d9e0f1a-a/eviction", created)
    api.on("GET", f"{PODS}/api-6d9f7c8b5d-a", not_found("api-6d9f7c8b5d-a"))
    api.on("GET", f"{PODS}/hub-7c8d9e0f1a-a", not_found("hub-7c8d9e0f1a-a"))

    out = drain_node(configuration=s.to_configuration())

    assert out["node"] == "cwh-worker"
    assert len(out["refused_evictions"]) == 1
    assert "disruption budget" in out["refused_evictions"][0]
    evictions = [c for c in api.called("POST") if c.path.endswith("/eviction")]
    assert [c.path.split("/")[-2] for c in evictions] == [
        "api-6d9f7c8b5d-a",  # refused: the budget
        "api-6d9f7c8b5d-a",  # allowed on the next try
        "hub-7c8d9e0f1a-a",
    ]
    # chaosk8s's V1Eviction carries no kind (the API server defaults it for this subresource).
    assert evictions[0].body["metadata"] == {"name": "api-6d9f7c8b5d-a", "namespace": NS}
    assert "deleteOptions" in evictions[0].body
    # Ours once to choose the node, once to check it; then chaosk8s's, one a try.
    on_node = api.called("GET", "/api/v1/pods")
    assert [c.query.get("fieldSelector") for c in on_node] == [None] + [
        ["spec.nodeName=cwh-worker"]
    ] * 3
    assert not api.called("DELETE")  # evicted, never deleted past the budget

    assert uncordon_nodes(configuration=s.to_configuration()) == ["cwh-worker"]
    patches = [c.body for c in api.called("PATCH", "/api/v1/nodes/cwh-worker")]
    assert patches == [{"spec": {"unschedulable": True}}] * 2 + [{"spec": {"unschedulable": False}}]
    assert [(e["event"], e["fault"]) for e in journal(s)] == [
        ("inject", "drain-cwh-worker"),
        ("restore", "drain-cwh-worker"),
    ]


def test_network_toxics_go_to_the_in_cluster_toxiproxy_through_the_service_proxy(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.network.actions import add_toxic, remove_toxics

    api, s = cluster
    api.on("POST", f"{TOXIPROXY}/proxies/pg-write/toxics", fixture("toxic-latency.json"))
    api.on("DELETE", f"{TOXIPROXY}/proxies/pg-write/toxics/pg-latency", (204, ""))
    config = s.to_configuration()

    toxic = add_toxic(
        "postgres-write",
        "latency",
        {"latency": 300, "jitter": 50},
        name="pg-latency",
        configuration=config,
    )
    assert toxic["proxy"] == "postgres-write"
    assert toxic["type"] == "latency"
    assert remove_toxics(configuration=config) == ["postgres-write/pg-latency"]

    (post,) = api.called("POST")
    assert post.body == {
        "name": "pg-latency",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 300, "jitter": 50},
    }
    assert api.called("DELETE")[0].authorization == "Bearer fake-token"
    assert [e["event"] for e in journal(s)] == ["inject", "restore"]


def test_the_safety_control_restores_through_the_api_after_the_rollbacks(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.controls.safety import after_experiment_control

    api, s = cluster
    harness.mark(s, "inject", "drain-cwh-worker", node="cwh-worker")
    harness.mark(s, "inject", "toxic-postgres-write-pg-latency", proxy="postgres-write")
    one_node(api)
    api.on("POST", f"{TOXIPROXY}/reset", (204, ""))
    api.on("GET", f"{TOXIPROXY}/proxies", fixture("toxiproxy-proxies.json"))
    rolling = fixture("deployment-list.json")
    rolling["items"][0]["status"]["readyReplicas"] = 2  # the evicted replica still starting
    api.on(
        "GET",
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        rolling,
        fixture("deployment-list.json"),
    )
    api.on("GET", f"/apis/apps/v1/namespaces/{NS}/statefulsets", fixture("statefulset-list.json"))
    state: dict[str, Any] = {}

    after_experiment_control({}, configuration=s.to_configuration(), state=state)

    restored = state["cwh_restore"]
    assert restored["errors"] == {}
    assert restored["toxics_reset"] is True
    assert restored["nodes_uncordoned"] == ["cwh-worker"]
    assert restored["faults_closed"] == ["toxic-postgres-write-pg-latency"]
    assert restored["healthy"] is True
    assert len(api.called("GET", f"/apis/apps/v1/namespaces/{NS}/deployments")) == 2
    assert [c.body for c in api.called("PATCH")] == [{"spec": {"unschedulable": False}}]
    assert json.loads((s.run_dir / "restored.json").read_text())["healthy"] is True
    assert harness.open_faults(s) == []


def test_a_restore_step_that_fails_is_reported_and_the_others_still_run(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    api, s = cluster
    harness.mark(s, "inject", "drain-cwh-worker", node="cwh-worker")
    # Nothing recorded for Toxiproxy: the fake answers 404, as an API server does for a
    # Service that is not there.
    one_node(api)

    restored = harness.restore_all(s, wait_s=0)

    assert "toxics_reset" in restored["errors"]
    assert restored["nodes_uncordoned"] == ["cwh-worker"]
    assert harness.open_faults(s) == []


def test_environment_healthy_reads_the_workloads_and_the_toxics(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.process.probes import environment_healthy

    api, s = cluster
    toxic = fixture("toxiproxy-proxies.json")
    toxic["pg-write"]["toxics"] = [fixture("toxic-latency.json")]
    api.on("GET", f"{TOXIPROXY}/proxies", toxic, fixture("toxiproxy-proxies.json"))
    api.on("GET", f"/apis/apps/v1/namespaces/{NS}/deployments", fixture("deployment-list.json"))
    api.on("GET", f"/apis/apps/v1/namespaces/{NS}/statefulsets", fixture("statefulset-list.json"))

    assert environment_healthy(configuration=s.to_configuration()) is False
    assert environment_healthy(configuration=s.to_configuration()) is True


def test_chaosk8s_is_refused_another_kubeconfig_than_the_settings_name(
    cluster: tuple[FakeApi, ChaosSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments.activities.process.actions import kill_service

    api, s = cluster
    api.on("GET", PODS, pod_list(pod("api-6d9f7c8b5d-a", "uid-a")))
    # The process would give chaosk8s another kubeconfig (another cluster, maybe).
    other = kubeconfig(tmp_path / "other", api.url)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(other))
    with pytest.raises(ActivityFailed, match="export KUBECONFIG="):
        kill_service("api", configuration=s.to_configuration())
    assert api.called("DELETE") == []  # our client read, chaosk8s never acted
    assert journal(s) == []


def test_the_steady_state_reads_the_in_cluster_prometheus_through_the_service_proxy(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    api, s = cluster
    prom = f"/api/v1/namespaces/{NS}/services/prometheus:9090/proxy"
    api.on("GET", f"{prom}/-/ready", "Prometheus Server is Ready.\n")
    vector = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1764872000, "3"]}]},
    }
    api.on("GET", f"{prom}/api/v1/query", vector)

    prometheus = harness.prometheus(s.env)
    prometheus.check()
    assert (
        prometheus.instant(
            'sum(kube_deployment_status_replicas_available{deployment="api"})', 1764872000.0
        )
        == 3.0
    )

    (query,) = api.called("GET", f"{prom}/api/v1/query")
    assert query.query["query"] == [
        'sum(kube_deployment_status_replicas_available{deployment="api"})'
    ]
    assert {c.authorization for c in api.calls} == {"Bearer fake-token"}


def test_cwh_chaos_run_says_so_when_the_clusters_namespace_does_not_answer(
    cluster: tuple[FakeApi, ChaosSettings], tmp_path: Path
) -> None:
    from rich.console import Console

    from cwh.chaos import ChaosOptions, run

    api, s = cluster  # nothing recorded for the namespace: the API server's 404
    console = Console(record=True, width=300)
    code, out = run(ChaosOptions("kill-api", reports=tmp_path / "reports"), console, s.env)
    assert (code, out) == (2, None)
    assert f"the cluster's namespace {NS} is not reachable" in console.export_text()
    assert [c.path for c in api.calls] == [f"/api/v1/namespaces/{NS}"]
    assert not (tmp_path / "reports").exists()


# The drain: its bounds, what it refuses, which node it picks, what it gives back.


def drain_setup(api: FakeApi, *on_node: dict[str, Any], unschedulable: bool = False) -> None:
    """`cwh-worker` (cordoned or not) running `on_node` (the first an API pod), each pod with a
    sibling of its ReplicaSet on another node."""
    nodes(api, "cwh-worker", unschedulable=unschedulable)
    api.on("GET", PODS, pod_list(on_node[0]))
    api.on("GET", "/api/v1/pods", pod_list(*on_node, *elsewhere(*on_node)))


def elsewhere(*pods: dict[str, Any]) -> list[dict[str, Any]]:
    """A sibling of each of `pods` (same ReplicaSet) on another node: they are not the only
    replicas."""
    return [
        pod(
            p["metadata"]["name"] + "z",
            p["metadata"]["uid"] + "z",
            component=p["metadata"]["labels"]["app.kubernetes.io/component"],
            node="cwh-other",
        )
        for p in pods
    ]


def evictions(api: FakeApi) -> list[str]:
    return [c.path.split("/")[-2] for c in api.called("POST") if c.path.endswith("/eviction")]


def test_a_drain_raises_an_eviction_refused_otherwise_than_by_a_budget_at_once(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.node.actions import drain_node

    api, s = cluster
    drain_setup(api, pod("api-6d9f7c8b5d-a", "uid-a"))
    forbidden = fixture("status-eviction-refused.json")
    forbidden.update(code=403, reason="Forbidden", message="pods/eviction is forbidden")
    api.on("POST", f"{PODS}/api-6d9f7c8b5d-a/eviction", (403, forbidden))

    with pytest.raises(ActivityFailed, match="forbidden"):
        drain_node(timeout_s=30, configuration=s.to_configuration())

    assert evictions(api) == ["api-6d9f7c8b5d-a"]  # not retried until the deadline
    # Cordoned before: the fault is in the journal for the rollback's uncordon.
    assert [e["fault"] for e in harness.open_faults(s)] == ["drain-cwh-worker"]


class _Clock:
    """chaosk8s's `time` module, its sleeps instantaneous (it waits 10 s between looks)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_a_drain_gives_chaosk8s_the_time_left_and_does_not_retry_its_timeout(
    cluster: tuple[FakeApi, ChaosSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import chaosk8s.node.actions

    from experiments.activities.node.actions import drain_node

    api, s = cluster
    a = pod("api-6d9f7c8b5d-a", "uid-a")
    drain_setup(api, a)
    api.on("POST", f"{PODS}/api-6d9f7c8b5d-a/eviction", (201, fixture("status-created.json")))
    api.on("GET", f"{PODS}/api-6d9f7c8b5d-a", a)  # evicted, but it never goes
    monkeypatch.setattr(chaosk8s.node.actions, "time", _Clock())

    with pytest.raises(ActivityFailed, match="did not completed within 7s"):
        drain_node(timeout_s=7, configuration=s.to_configuration())

    assert evictions(api) == ["api-6d9f7c8b5d-a"]


def test_a_drain_refused_by_a_budget_until_the_deadline_fails_in_time(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.node.actions import drain_node

    api, s = cluster
    drain_setup(api, pod("api-6d9f7c8b5d-a", "uid-a"))
    refused = (429, fixture("status-eviction-refused.json"))
    api.on("POST", f"{PODS}/api-6d9f7c8b5d-a/eviction", refused)

    with pytest.raises(ActivityFailed, match=r"not drained in 1 s: .*disruption budget"):
        drain_node(timeout_s=1, configuration=s.to_configuration())

    assert 1 <= len(evictions(api)) <= 3  # a try every 0.5 s


def test_a_node_running_a_pod_without_a_controller_is_refused_before_the_cordon(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    """chaosk8s iterates `ownerReferences` and fails with a TypeError where it is null."""
    from experiments.activities.node.actions import drain_node

    api, s = cluster
    a = pod("api-6d9f7c8b5d-a", "uid-a")
    bare = pod("debug", "uid-d", component="debug", owner="", namespace="default")
    one_node(api)
    api.on("GET", PODS, pod_list(a))
    # On the node when it is chosen; then appearing between the choice and the drain.
    api.on(
        "GET",
        "/api/v1/pods",
        pod_list(a, bare, *elsewhere(a)),
        pod_list(a, *elsewhere(a)),
        pod_list(a, bare),
    )

    with pytest.raises(ActivityFailed, match="default/debug has no controller"):
        drain_node(node="cwh-worker", configuration=s.to_configuration())
    with pytest.raises(ActivityFailed, match=r"without a controller \(default/debug\)"):
        drain_node(configuration=s.to_configuration())
    # chaosk8s also iterates `spec.volumes`, null in a pod without any.
    plain = pod("api-6d9f7c8b5d-b", "uid-b")
    plain["spec"]["volumes"] = None
    del api.routes[("GET", "/api/v1/pods")]
    api.on("GET", "/api/v1/pods", pod_list(plain, *elsewhere(plain)))
    with pytest.raises(ActivityFailed, match=r"without volumes \(cloudwatcher/api-6d9f7c8b5d-b\)"):
        drain_node(node="cwh-worker", configuration=s.to_configuration())

    assert api.called("PATCH") == []
    assert journal(s) == []


def test_a_node_already_cordoned_is_neither_drained_nor_uncordoned(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.node.actions import drain_node, uncordon_nodes

    api, s = cluster
    drain_setup(api, pod("api-6d9f7c8b5d-a", "uid-a"), unschedulable=True)

    with pytest.raises(ActivityFailed, match="already cordoned"):
        drain_node(configuration=s.to_configuration())

    assert uncordon_nodes(configuration=s.to_configuration()) == []
    assert api.called("PATCH") == []
    assert journal(s) == []


def test_the_drain_picks_a_node_whose_pods_can_all_leave(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.kube.api import connect
    from experiments.kube.nodes import pick_node

    api, s = cluster
    api_pods = [pod(f"api-6d9f7c8b5d-{n}", f"uid-{n}", node=f"node-{n}") for n in "abcde"]
    others = [
        pg_member(0, "master") | {"spec": {**api_pods[0]["spec"], "nodeName": "node-a"}},
        pod("toxiproxy-5c6d7e8f9a-x", "uid-t", component="toxiproxy", node="node-b"),
        pod("locust-worker-1a2b3c4d5e-x", "uid-l", component="locust-worker", node="node-c"),
        pod("coredns-7db6d8ff4d-x", "uid-c", component="dns", node="node-d", namespace="ns"),
        pod("hub-7c8d9e0f1a-x", "uid-h", component="hub", node="node-e"),
        pod("hub-7c8d9e0f1a-y", "uid-h2", component="hub", node="node-f"),
        pod("locust-worker-1a2b3c4d5e-y", "uid-l2", component="locust-worker", node="node-f"),
    ]
    # The last node's API pod gone on the second look.
    api.on("GET", PODS, pod_list(*api_pods), pod_list(*api_pods[:-1]))
    api.on("GET", "/api/v1/pods", pod_list(*api_pods, *others))
    kube = connect(s.env)

    assert pick_node(kube, API) == "node-e"

    with pytest.raises(ActivityFailed) as refused:
        pick_node(kube, API)
    said = str(refused.value)
    assert "node-a: cloudwatcher/cloudwatcher-pg-0 is StatefulSet cloudwatcher-pg's" in said
    assert "node-b: cloudwatcher/toxiproxy-5c6d7e8f9a-x is the only replica" in said
    assert "node-c: cloudwatcher/locust-worker-1a2b3c4d5e-x is the game day's own" in said
    assert "node-d: ns/coredns-7db6d8ff4d-x is the only replica" in said  # every namespace
    assert "kind: at least 3" in said
    with pytest.raises(ActivityFailed, match=r"node-a: .*StatefulSet"):
        pick_node(kube, API, node="node-a")  # a node named is checked as well


def test_the_rollback_uncordons_every_node_it_can_and_reports_the_others(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.kube.nodes import uncordon_drained

    api, s = cluster
    api.on("PATCH", "/api/v1/nodes/node-a", (500, fixture("status-not-found.json")))
    nodes(api, "node-a", "node-b", "node-c")
    for node in ("node-a", "node-b"):
        harness.mark(s, "inject", f"drain-{node}", node=node, unschedulable_before=False)
    # Not ours: cordoned before the run (as an older journal may say).
    harness.mark(s, "inject", "drain-node-c", node="node-c", unschedulable_before=True)

    with pytest.raises(ActivityFailed, match=r"uncordoned \['node-b'\], but not: node-a: "):
        uncordon_drained(s)

    assert [c.path for c in api.called("PATCH")] == ["/api/v1/nodes/node-a", "/api/v1/nodes/node-b"]
    assert {f["fault"] for f in harness.open_faults(s)} == {"drain-node-a", "drain-node-c"}


# Pods killed, commands run in pods, and the fake's selectors.


def test_a_killed_pod_is_in_the_journal_even_when_the_wait_for_it_fails(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from env.process import DeadlineExceeded
    from experiments.kube.api import Pod, connect
    from experiments.kube.pods import kill_pod

    api, s = cluster
    a = pod("api-6d9f7c8b5d-a", "uid-a")
    api.on("GET", PODS, pod_list(a))
    api.on("DELETE", f"{PODS}/api-6d9f7c8b5d-a", a)
    api.on("GET", f"{PODS}/api-6d9f7c8b5d-a", a)  # never goes
    kube = connect(s.env)
    (target,) = kube.pods(API)

    with pytest.raises(DeadlineExceeded):
        kill_pod(s, kube, API, target, "kill-api-6d9f7c8b5d-a", timeout_s=0.3)

    (inject,) = journal(s)
    assert (inject["fault"], inject["uid"], inject["grace_period_s"]) == (
        "kill-api-6d9f7c8b5d-a",
        "uid-a",
        0,
    )
    assert isinstance(target, Pod)
    assert target.owner == "ReplicaSet"


def test_a_command_still_running_or_without_an_exit_status_fails_clearly(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.kube.api import connect

    api, s = cluster
    api.on_exec("redis-cluster-0", Exec("partial", running_s=2), Exec("out", status={}), "ok")
    kube = connect(s.env)

    with pytest.raises(ActivityFailed, match=r"still running after 0\.5 s"):
        kube.exec("redis-cluster-0", "redis", ["sleep", "9"], timeout_s=0.5)
    with pytest.raises(ActivityFailed, match="ended without an exit status"):
        kube.exec("redis-cluster-0", "redis", ["true"])
    assert kube.exec("redis-cluster-0", "redis", ["true"]) == "ok"


def test_a_redis_cluster_without_a_master_fails_clearly(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.activities.redis.actions import kill_master

    api, s = cluster
    api.on("GET", PODS, pod_list(pod("redis-cluster-0", "r0", component="redis")))
    api.on_exec("redis-cluster-0", "", "cluster_state:fail\r\n")

    with pytest.raises(ActivityFailed, match="no Redis master serving slots"):
        kill_master(configuration=s.to_configuration())
    assert api.called("DELETE") == []


def test_the_fake_evaluates_label_selectors_as_the_api_server_does(
    cluster: tuple[FakeApi, ChaosSettings],
) -> None:
    from experiments.kube.api import connect

    labels = {"app.kubernetes.io/component": "postgresql", "role": "master"}
    assert matches("app.kubernetes.io/component=postgresql,role in (master,primary)", labels)
    assert matches("role notin (replica),role!=replica,role,!cluster-name", labels)
    assert not matches("role in (replica, primary)", labels)
    assert not matches("cluster-name", labels)
    assert not matches("role=replica", labels)

    api, s = cluster
    api.on("GET", PODS, pod_list(pod("api-6d9f7c8b5d-a", "uid-a")))
    kube = connect(s.env)
    assert [p.name for p in kube.pods(API)] == ["api-6d9f7c8b5d-a"]
    assert kube.pods("app.kubernetes.io/component=apl") == []  # a typo matches nothing
