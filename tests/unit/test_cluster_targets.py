"""`make kind-up`, `make staging-load` and `make staging-chaos` offline (`env/cluster.py`): no
cluster can run here, so what is checked is that each refuses early, naming what is missing,
that a dry run prints the plan (built from the overlay as the pinned kubectl renders it), and
that the runner passes what one step read to the next, stops at a failure and ends what it left
in the background."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from env import cluster
from env.settings import EnvSettings

K = "cloudwatcher"


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding `kind` and `docker` (never run: a dry run prints them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("kind", "docker"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 99\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_kind_up_refuses_without_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    assert cluster.main(["kind-up"], environ={"CWH_KUBECONFIG": str(tmp_path / "kc")}) == 2
    err = capsys.readouterr().err
    assert "make kind-up: kind is not on the PATH" in err
    assert "https://kind.sigs.k8s.io/" in err


def test_kind_up_refuses_without_docker(
    tools: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tools / "docker").unlink()
    assert cluster.main(["kind-up"], environ={"CWH_KUBECONFIG": str(tmp_path / "kc")}) == 2
    assert "docker is not on the PATH" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["staging-load", "staging-chaos"])
def test_staging_targets_refuse_without_a_kubeconfig(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing"
    assert cluster.main([target], environ={"KUBECONFIG": str(missing)}) == 2
    assert f"make {target}: no kubeconfig at {missing}" in capsys.readouterr().err
    # CWH_KUBECONFIG naming no file: the settings' own error, naming the variable.
    assert cluster.main([target], environ={"CWH_KUBECONFIG": str(missing)}) == 2
    assert f"CWH_KUBECONFIG={missing}: no such file" in capsys.readouterr().err


def test_staging_chaos_refuses_without_a_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kc"
    config.write_text("apiVersion: v1\nkind: Config\n")
    assert cluster.main(["staging-chaos"], environ={"CWH_KUBECONFIG": str(config)}) == 2
    assert "CWH_KUBE_TARGET" in capsys.readouterr().err


def test_kind_up_dry_run_prints_the_plan(
    tools: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from env.images import stack_tag

    config = tmp_path / "kc"
    argv = ["kind-up", "--dry-run", "--secrets", str(tmp_path / "secrets")]
    assert cluster.main(argv, environ={"CWH_KUBECONFIG": str(config)}) == 0
    out = capsys.readouterr().out
    kubectl = f"{Path(sys.executable).parent / 'kubectl'} --kubeconfig {config} --context kind-cwh"
    expected = [
        f"{tools}/kind create cluster --name cwh --kubeconfig {config} --config=- --wait=5m",
        f"{sys.executable} -m env.images",
        f"{tools}/docker tag {stack_tag()} cwh-stack:latest",
        f"{tools}/kind load docker-image cwh-stack:latest --name cwh",
        f"{kubectl} apply -f -",
        f"{kubectl} -n {K} rollout status deployment/api --timeout=10m",
        f"{kubectl} -n {K} rollout status statefulset/cloudwatcher-pg --timeout=10m",
        f"{kubectl} -n {K} rollout status statefulset/redis-cluster --timeout=10m",
        f"{kubectl} -n {K} wait --for=condition=complete job/redis-cluster-create --timeout=10m",
    ]
    lines = out.splitlines()
    assert [ln for ln in lines if ln in expected] == expected  # all there, in this order
    assert "(skipped when it exists)" in lines[0]
    assert not (tmp_path / "kc").exists()  # nothing ran


def overlay(tmp_path: Path, master: str) -> Path:
    """A small overlay with the fleet's objects: its master a Job (suspended) or a Deployment."""
    d = tmp_path / "fleet"
    d.mkdir()
    job = """
        apiVersion: batch/v1
        kind: Job
        metadata: {name: locust-master}
        spec:
          suspend: true
          template:
            spec:
              restartPolicy: Never
              containers: [{name: locust, image: cwh-stack}]
    """
    deployment = """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: locust-master}
        spec:
          selector: {matchLabels: {app: m}}
          template:
            metadata: {labels: {app: m}}
            spec: {containers: [{name: locust, image: cwh-stack}]}
    """
    (d / "fleet.yaml").write_text(
        textwrap.dedent(
            """
            apiVersion: v1
            kind: ConfigMap
            metadata: {name: locust-fleet}
            data: {WORKERS: "2", USERS: "50", DURATION: "120"}
            ---
            """
        )
        + textwrap.dedent(job if master == "Job" else deployment)
    )
    (d / "kustomization.yaml").write_text(f"namespace: {K}\nresources: [fleet.yaml]\n")
    return d


def test_staging_load_dry_run_scales_starts_collects_and_gates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kc"
    config.write_text("apiVersion: v1\nkind: Config\n")
    c = cluster.Cluster(EnvSettings(namespace=K), overlay(tmp_path, "Job"), config)
    out = tmp_path / "reports" / "run"
    assert cluster.execute(cluster.staging_load(c, 4, 200, 300, out), dry_run=True) == 0
    text = capsys.readouterr().out
    kn = f"{Path(sys.executable).parent / 'kubectl'} --kubeconfig {config} -n {K}"
    for line in [
        f"{kn} delete job locust-master --ignore-not-found --wait=true",
        f"{kn} patch configmap locust-fleet --type=merge -p "
        """'{"data": {"WORKERS": "4", "USERS": "200", "DURATION": "300"}}'""",
        f"{kn} scale deployment/locust-worker --replicas=4",
        f"""{kn} patch job locust-master --type=merge -p '{{"spec":{{"suspend":false}}}}'""",
        f"{kn} wait --for=condition=complete job/locust-master --timeout=1200s",
        f"{kn} cp '<reports_pod>:/var/lib/cwh-reports/<master_pod>' {out}",
        f"{kn} scale deployment/locust-worker --replicas=0",
        f"{sys.executable} -m cwh.cli slo check --run {out} --prometheus "
        f"'<proxy>/api/v1/namespaces/{K}/services/prometheus:9090/proxy'",
    ]:
        assert line in text.splitlines(), line


def test_staging_load_refuses_a_master_that_is_not_a_job(tmp_path: Path) -> None:
    c = cluster.Cluster(EnvSettings(), overlay(tmp_path, "Deployment"), tmp_path / "kc")
    with pytest.raises(cluster.Missing, match="must be a suspended Job"):
        cluster.staging_load(c, 0, 0, 0, tmp_path / "out")


def test_staging_chaos_dry_run_runs_a_game_day_on_the_kubernetes_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kc"
    config.write_text("apiVersion: v1\nkind: Config\n")
    environ = {
        "CWH_KUBECONFIG": str(config),
        "CWH_KUBE_TARGET": "https://cloudwatcher.kind.test",
    }
    code = cluster.main(
        ["staging-chaos", "kill-api", "--dry-run", "node-drain", "--reports", str(tmp_path)],
        environ=environ,
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    gameday = next(ln for ln in lines if "chaos gameday" in ln)
    assert gameday.startswith(f"CWH_RUNTIME=kubernetes CWH_KUBECONFIG={config} ")
    assert "CWH_KUBE_TARGET=https://cloudwatcher.kind.test" in gameday
    assert gameday.endswith("-m cwh.cli chaos gameday kill-api node-drain")
    assert any(ln.endswith("proxy --port=0 &") for ln in lines)
    check = next(ln for ln in lines if "slo check" in ln)
    assert "--from '<start>' --to '<end>'" in check
    # The staging overlay's namespace, not CWH_NAMESPACE's default (kind's).
    assert "/api/v1/namespaces/cloudwatcher-staging/services/prometheus:9090/proxy" in check
    assert list(tmp_path.iterdir()) == [config]  # nothing ran, no run folder


def test_the_runner_passes_captures_on_stops_at_a_failure_and_ends_the_background(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    proxy = (
        "sh",
        "-c",
        f"echo Starting to serve on 127.0.0.1:41234; echo $$ > {tmp_path}/pid; exec sleep 60",
    )
    steps = [
        cluster.Step(proxy, "a proxy", capture="proxy", background=True),
        cluster.Step(("sh", "-c", "echo pod-7"), "a name", capture="pod"),
        cluster.Step(("sh", "-c", f"echo {{pod}} {{proxy}} > {tmp_path}/seen"), "uses both"),
        cluster.Step(("sh", "-c", "exit 3"), "fails"),
        cluster.Step(("sh", "-c", f"touch {tmp_path}/never"), "never runs"),
    ]
    assert cluster.execute(steps, dry_run=False, say=said.append) == 3
    assert (tmp_path / "seen").read_text() == "pod-7 http://127.0.0.1:41234\n"
    assert not (tmp_path / "never").exists()
    assert said[-1] == "error: fails: exit 3"
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_a_namespace_other_than_the_overlays_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "kc"
    config.write_text("apiVersion: v1\nkind: Config\n")
    environ = {"CWH_KUBECONFIG": str(config), "CWH_NAMESPACE": K, "CWH_KUBE_TARGET": "https://x"}
    code = cluster.main(["staging-chaos", "--dry-run", "--reports", str(tmp_path)], environ)
    assert code == 2
    c = cluster.cluster_of(EnvSettings(namespace=K), "staging", {})
    assert c.settings.namespace == "cloudwatcher-staging"  # the overlay's, when none was asked


def test_kind_up_replaces_every_placeholder_with_a_real_secret_kept_for_next_time(
    tmp_path: Path,
) -> None:
    import base64

    from cryptography import x509

    from env.manifests import render

    objects = render(cluster.OVERLAYS_DIR / "kind")
    placeholders = {
        o["metadata"]["name"]: o
        for o in objects
        if (o["metadata"].get("labels") or {}).get("cwh/placeholder") == "true"
    }
    assert len(placeholders) == 6
    real = cluster.with_real_secrets(objects, tmp_path / "s")
    assert len(real) == len(objects)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in real}
    for name, p in placeholders.items():
        o = by_name[(p["kind"], name)]
        assert "cwh/placeholder" not in o["metadata"]["labels"]
        assert set(o["data"]) == set(p["data"])
        for key, value in o["data"].items():
            raw = base64.b64decode(value) if o["kind"] == "Secret" else value.encode()
            assert not raw.startswith(b"placeholder"), (name, key)
    tls = by_name[("Secret", "cloudwatcher-tls")]
    cert = x509.load_pem_x509_certificate(base64.b64decode(tls["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = {
        h for o in objects if o["kind"] == "Ingress" for t in o["spec"]["tls"] for h in t["hosts"]
    }
    assert hosts <= set(names.get_values_for_type(x509.DNSName))
    # The same secrets next time: a new key set would invalidate every token.
    again = {
        (o["kind"], o["metadata"]["name"]): o
        for o in cluster.with_real_secrets(objects, tmp_path / "s")
    }
    for key in by_name:
        assert again[key].get("data") == by_name[key].get("data"), key


def test_staging_load_applies_only_the_fleet() -> None:
    from env.manifests import render

    objects = render(cluster.OVERLAYS_DIR / "kind")
    fleet = cluster.fleet_only(objects)
    names = {(o["kind"], o["metadata"]["name"]) for o in fleet}
    assert ("Job", "locust-master") in names
    assert ("Deployment", "locust-worker") in names
    assert not any(o["kind"] == "Secret" for o in fleet)
    assert not any(o["metadata"]["name"] in ("api", "cloudwatcher-pg") for o in fleet)
