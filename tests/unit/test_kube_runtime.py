"""The kubernetes runtime's edges, offline: its settings (and the errors naming a bad value),
`up` refusing it, the experiments that declare it (each passes `chaos validate` with it), and
the others refused up front, by `cwh chaos run` and by a bare `chaos run`'s safety control."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chaoslib.exceptions import InterruptExecution
from rich.console import Console

from cwh.chaos import ChaosOptions, catalogue, run, runtime_refusal
from env.settings import EnvSettings, SettingsError
from experiments.settings import ChaosSettings, runtimes_of

ROOT = Path(__file__).resolve().parents[2]
CHAOS = str(Path(sys.executable).with_name("chaos"))
#: What runs on Kubernetes: kept here on purpose, so that declaring one more is a decision a
#: test sees.
ON_KUBERNETES = [
    "kill-api",
    "kill-hub",
    "kill-worker",
    "net-pg-latency",
    "net-pg-resets",
    "node-drain",
    "pg-cascading",
    "pg-lose-primary-node",
    "redis-kill-master",
]


def kube_environ(kubeconfig: Path, **extra: str) -> dict[str, str]:
    return {
        "CWH_RUNTIME": "kubernetes",
        "CWH_KUBECONFIG": str(kubeconfig),
        "CWH_NAMESPACE": "cloudwatcher",
        **extra,
    }


def test_the_kubernetes_settings_round_trip(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\n")
    s = EnvSettings.from_environ(
        kube_environ(
            config,
            CWH_KUBE_CONTEXT="kind-cwh",
            CWH_NAMESPACE="cloudwatcher-staging",
            CWH_KUBE_TARGET="https://cloudwatcher.staging.example",
        )
    )
    assert (s.runtime, s.kubeconfig, s.kube_context, s.namespace) == (
        "kubernetes",
        str(config),
        "kind-cwh",
        "cloudwatcher-staging",
    )
    assert EnvSettings.from_environ(s.to_environ()) == s
    assert EnvSettings().namespace == "cloudwatcher"  # the kind overlay's


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"CWH_NAMESPACE": "Cloud_Watcher"}, "CWH_NAMESPACE='Cloud_Watcher': a namespace's name"),
        ({"CWH_NAMESPACE": "-x"}, "CWH_NAMESPACE"),
        ({"CWH_KUBECONFIG": "kube/config"}, "CWH_KUBECONFIG=kube/config: must be an absolute"),
        ({"CWH_KUBECONFIG": "/nonexistent/kubeconfig"}, "/nonexistent/kubeconfig: no such file"),
        ({"CWH_KUBE_TARGET": "cloudwatcher.example"}, "CWH_KUBE_TARGET='cloudwatcher.example'"),
        ({"CWH_KUBE_CONTEXT": " kind"}, "CWH_KUBE_CONTEXT"),
        ({"CWH_STANDBY_OF": "24000", "CWH_BACKUPS": "0"}, "second region runs on the local"),
        ({"CWH_RUNTIME": "k8s"}, "one of local, containers, kubernetes"),
    ],
)
def test_bad_kubernetes_values_name_the_variable(environ: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names.replace("(", r"\(").replace("?", r"\?")):
        EnvSettings.from_environ({"CWH_RUNTIME": "kubernetes", **environ})


def test_up_refuses_the_kubernetes_runtime(tmp_path: Path) -> None:
    from env.local import EnvironmentStartError, LocalEnvironment

    env = LocalEnvironment(EnvSettings(base_port=21200, run_dir=tmp_path, runtime="kubernetes"))
    with pytest.raises(EnvironmentStartError, match="make kind-up"):
        env.up()
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_the_declared_runtimes() -> None:
    exps = catalogue()
    assert sorted(n for n, e in exps.items() if "kubernetes" in e["runtimes"]) == ON_KUBERNETES
    assert exps["node-drain"]["runtimes"] == ("kubernetes",)
    assert exps["pg-partition-primary"]["runtimes"] == ("containers",)
    assert exps["kill-lb"]["runtimes"] == ("local", "containers")  # declares none
    with pytest.raises(SettingsError, match="k8s: not one of"):
        runtimes_of({"extensions": [{"name": "cwh", "runtimes": ["k8s"]}]})


@pytest.mark.parametrize("experiment", ON_KUBERNETES)
def test_a_kubernetes_experiment_passes_chaos_validate_on_the_kubernetes_runtime(
    tmp_path: Path, experiment: str
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\n")
    # The process's environment as `cwh chaos run` gives it, on the kubernetes runtime.
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "KUBECONFIG": str(config),
        **kube_environ(config, CWH_RUN_DIR=str(tmp_path / "env")),
    }
    proc = subprocess.run(
        [CHAOS, "--no-log-file", "validate", str(ROOT / "experiments" / f"{experiment}.yaml")],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "experiment syntax and semantic look valid" in proc.stdout + proc.stderr


def test_cwh_chaos_refuses_an_undeclared_experiment_on_kubernetes_before_anything(
    tmp_path: Path,
) -> None:
    console = Console(record=True, width=200)
    settings = EnvSettings(base_port=21200, run_dir=tmp_path / "env", runtime="kubernetes")
    code, out = run(
        ChaosOptions(experiment="kill-lb", reports=tmp_path),
        console,
        settings,
    )
    assert (code, out) == (2, None)
    text = console.export_text()
    assert (
        "kill-lb needs the local or containers runtime (this environment's is kubernetes)" in text
    )
    assert list(tmp_path.iterdir()) == []  # no run folder, no environment
    node_drain = runtime_refusal("node-drain", catalogue()["node-drain"], EnvSettings())
    assert "needs the kubernetes runtime" in node_drain
    assert "make kind-up" in node_drain


def test_a_bare_chaos_run_of_an_undeclared_experiment_is_interrupted_before_any_fault(
    tmp_path: Path,
) -> None:
    from experiments.controls import safety

    doc = yaml.safe_load((ROOT / "experiments" / "kill-lb.yaml").read_text())
    s = ChaosSettings(
        EnvSettings(base_port=21200, run_dir=tmp_path / "env", runtime="kubernetes"),
        tmp_path / "run",
    )
    with pytest.raises(InterruptExecution, match="kill-lb needs the local or containers runtime"):
        safety.before_experiment_control(doc, configuration=s.to_configuration())
    assert safety._watcher is None or not safety._watcher.is_alive()
    assert not (tmp_path / "env" / "chaos-running").exists()
