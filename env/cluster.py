"""`make kind-up`, `make staging-load` and `make staging-chaos`: the reference system on a
Kubernetes cluster (kind, or a staging cluster a kubeconfig reaches), a fleet run from inside
it, a game day against it, and the SLO gate on its Prometheus.

Each target is a plan of commands (the pinned kubectl of `env.manifests.kubectl`, kind, docker,
`cwh`) built from the settings and from the overlay as `kubectl kustomize` renders it here
(which Deployments to wait for, the fleet's ConfigMap and Job); `--dry-run` prints the plan and
runs nothing. What a plan needs is checked first, and a missing piece (kind, docker, the
kubeconfig) is named before anything runs. Values only the cluster knows (the master's pod)
are read by earlier steps: a dry run shows them as `<name>`.

    python -m env.cluster kind-up [--name cwh] [--dry-run]
    python -m env.cluster staging-load [--overlay staging] [--workers N] [--users N] ...
    python -m env.cluster staging-chaos [--overlay staging] [EXPERIMENT ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from env.manifests import OVERLAYS_DIR, kubectl, render
from env.settings import EnvSettings, SettingsError

#: A kind cluster of three nodes: a drain then has somewhere to put what it evicts.
KIND_CONFIG = {
    "kind": "Cluster",
    "apiVersion": "kind.x-k8s.io/v1alpha4",
    "nodes": [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}],
}
#: Where the fleet's master writes its report folders, in the `locust-reports` pod.
REPORTS_IN_CLUSTER = "/var/lib/cwh-reports"
ROLLOUT_TIMEOUT = "10m"


class Missing(RuntimeError):
    """Something a target needs is not there; the message names it and how to get it."""


@dataclass(frozen=True)
class Step:
    """One command of a plan.

    Attributes:
        argv: the command; `{name}` in an argument is the output of an earlier step that
            `capture`d it (a dry run prints `<name>`).
        what: what it does, said before it runs.
        capture: keep its standard output (stripped) under this name.
        stdin: text given to it.
        env: variables added to its environment.
        background: leave it running until the plan ends (`kubectl proxy`); its first line of
            output is captured, then it is terminated when the plan ends.
        unless: a check run first; when it is true the step is skipped (not in a dry run).
    """

    argv: tuple[str, ...]
    what: str
    capture: str = ""
    stdin: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    background: bool = False
    unless: Callable[[], bool] | None = None


@dataclass(frozen=True)
class Cluster:
    """Where the plans act: the settings (kubeconfig, context, namespace, target) and the
    overlay applied."""

    settings: EnvSettings
    overlay_dir: Path
    kubeconfig: Path

    def kubectl(self, *args: str) -> tuple[str, ...]:
        ctx = ("--context", self.settings.kube_context) if self.settings.kube_context else ()
        return (str(kubectl()), "--kubeconfig", str(self.kubeconfig), *ctx, *args)

    def kn(self, *args: str) -> tuple[str, ...]:
        """kubectl in the namespace."""
        return self.kubectl("-n", self.settings.namespace, *args)

    @property
    def overlay(self) -> str:
        return self.overlay_dir.name

    def objects(self) -> list[dict[str, Any]]:
        return render(self.overlay_dir)

    def prometheus(self, proxy: str) -> str:
        """The cluster's Prometheus behind `kubectl proxy` at `proxy`."""
        ns = self.settings.namespace
        return f"{proxy}/api/v1/namespaces/{ns}/services/prometheus:9090/proxy"

    def environ(self) -> dict[str, str]:
        """`CWH_*` of the kubernetes runtime for the `cwh` commands of a plan."""
        s = self.settings
        return {
            "CWH_RUNTIME": "kubernetes",
            "CWH_KUBECONFIG": str(self.kubeconfig),
            "CWH_KUBE_CONTEXT": s.kube_context,
            "CWH_NAMESPACE": s.namespace,
            "CWH_KUBE_TARGET": s.kube_target,
            "KUBECONFIG": str(self.kubeconfig),
        }


def require(program: str, why: str) -> str:
    """The path of `program`, or Missing naming it."""
    path = shutil.which(program)
    if path is None:
        raise Missing(f"{program} is not on the PATH: {why}")
    return path


def require_kubeconfig(path: Path) -> Path:
    if not path.is_file():
        raise Missing(
            f"no kubeconfig at {path}: set CWH_KUBECONFIG (or KUBECONFIG) to the cluster's, "
            "or run make kind-up for a local kind cluster"
        )
    return path


def rollouts(c: Cluster) -> list[Step]:
    """Wait for every Deployment and StatefulSet of the overlay, and its Jobs that run at
    once (not the suspended fleet master)."""
    steps = []
    for obj in c.objects():
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            argv = c.kn(
                "rollout", "status", f"{kind.lower()}/{name}", f"--timeout={ROLLOUT_TIMEOUT}"
            )
            steps.append(Step(argv, f"{kind} {name} rolled out"))
        elif kind == "Job" and not obj["spec"].get("suspend"):
            argv = c.kn(
                "wait", "--for=condition=complete", f"job/{name}", f"--timeout={ROLLOUT_TIMEOUT}"
            )
            steps.append(Step(argv, f"Job {name} complete"))
    return steps


def kind_up(c: Cluster, name: str, secrets: Path | None = None) -> list[Step]:
    """A kind cluster `name` (made unless it exists), the image built and loaded onto its
    nodes under the overlay's tag, the overlay applied, every rollout waited for."""
    kind = require("kind", "make kind-up needs kind (https://kind.sigs.k8s.io/) to make a cluster")
    docker = require(
        "docker", "make kind-up builds the image with Docker (make deps installs docker.io)"
    )
    from env.images import REPOSITORY, stack_tag

    image = f"{REPOSITORY}:{overlay_tag(c.overlay_dir, REPOSITORY)}"

    def exists() -> bool:
        out = subprocess.run([kind, "get", "clusters"], capture_output=True, text=True, check=False)
        return name in out.stdout.split()

    return [
        Step(
            (
                kind,
                "create",
                "cluster",
                "--name",
                name,
                "--kubeconfig",
                str(c.kubeconfig),
                "--config=-",
                "--wait=5m",
            ),
            f"kind cluster {name} (three nodes)",
            stdin=yaml.safe_dump(KIND_CONFIG),
            unless=exists,
        ),
        Step((sys.executable, "-m", "env.images"), "the image built (make images)"),
        Step((docker, "tag", stack_tag(), image), f"tagged {image}, the overlay's"),
        Step(
            (kind, "load", "docker-image", image, "--name", name), f"{image} loaded onto the nodes"
        ),
        Step(
            c.kubectl("apply", "-f", "-"),
            f"overlay {c.overlay} applied, its placeholder secrets replaced by real ones "
            f"(kept in {secrets or secrets_dir(name)})",
            stdin=yaml.safe_dump_all(with_real_secrets(c.objects(), secrets or secrets_dir(name))),
        ),
        *rollouts(c),
    ]


def secrets_dir(cluster: str) -> Path:
    """Where kind-up keeps the secrets it made for a cluster (the same ones every time: a new
    key set would invalidate every token, a new CA every phone's trust)."""
    return Path(f"/var/tmp/cwh-kind-{cluster}")


def with_real_secrets(objects: list[dict[str, Any]], state: Path) -> list[dict[str, Any]]:
    """The overlay's objects with every placeholder (labelled `cwh/placeholder`) replaced by
    a real value of the same keys: passwords and the registration secret drawn at random, the
    API's key set and field key (`reference_impl.keys`), a CA and a certificate for the
    Ingress hosts (`env.secrets`). Made once into `state`, read from there after."""
    import base64
    import secrets as random_secrets

    from env.secrets import CertificateAuthority
    from reference_impl.keys import ensure_keys

    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    ensure_keys(state / "keys")
    ca = CertificateAuthority.load_or_create(state / "ca.crt", state / "ca.key")
    hosts = tuple(
        sorted(
            {
                h
                for o in objects
                if o["kind"] == "Ingress"
                for t in o["spec"].get("tls") or []
                for h in t.get("hosts") or []
            }
        )
    )
    tls_crt, tls_key = state / "tls.crt", state / "tls.key"
    ca.ensure_server_files(tls_crt, tls_key, hosts[0] if hosts else "cloudwatcher", dns_names=hosts)
    drawn_path = state / "drawn.json"
    drawn: dict[str, str] = json.loads(drawn_path.read_text()) if drawn_path.exists() else {}

    def value(secret: str, key: str) -> bytes:
        if secret == "cloudwatcher-keys":
            return (state / "keys" / key).read_bytes()
        if secret == "cloudwatcher-tls":
            return (tls_crt if key == "tls.crt" else tls_key).read_bytes()
        if secret == "cloudwatcher-ca":
            return (state / "ca.crt").read_bytes()
        return drawn.setdefault(f"{secret}/{key}", random_secrets.token_urlsafe(24)).encode()

    out = []
    for o in objects:
        if (o["metadata"].get("labels") or {}).get("cwh/placeholder") != "true":
            out.append(o)
            continue
        name = o["metadata"]["name"]
        real = {**o, "metadata": {**o["metadata"]}}
        real["metadata"]["labels"] = {
            k: v for k, v in o["metadata"]["labels"].items() if k != "cwh/placeholder"
        }
        if o["kind"] == "Secret":
            real["data"] = {
                k: base64.b64encode(value(name, k)).decode() for k in (o.get("data") or {})
            }
        else:
            real["data"] = {k: value(name, k).decode() for k in (o.get("data") or {})}
        out.append(real)
    drawn_path.write_text(json.dumps(drawn, indent=2))
    drawn_path.chmod(0o600)
    return out


def overlay_tag(overlay: Path, repository: str) -> str:
    """The tag the overlay gives the image (`images: [{name, newTag}]`), else `latest`."""
    doc = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    for image in doc.get("images") or []:
        if image.get("name") == repository and image.get("newTag"):
            return str(image["newTag"])
    return "latest"


def fleet_objects(c: Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """The overlay's fleet: its ConfigMap and its master Job.

    Raises:
        Missing: the overlay has no fleet ConfigMap, or its master is not a Job (a run ends:
            the master runs `cwh load --master` once, created suspended).
    """
    objs = c.objects()
    config = next(
        (
            o
            for o in objs
            if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("locust-fleet")
        ),
        None,
    )
    master = next(
        (
            o
            for o in objs
            if o["metadata"]["name"] == "locust-master" and o["kind"] in ("Job", "Deployment")
        ),
        None,
    )
    if config is None or master is None or master["kind"] != "Job":
        raise Missing(
            f"overlay {c.overlay}: the fleet's master must be a suspended Job running "
            "`cwh load --master` (deploy/base/locust.yaml), with its ConfigMap locust-fleet"
        )
    return config, master


def fleet_only(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fleet's objects of an overlay: the Locust master, workers, their ConfigMap and the
    report server (component `locust*`)."""
    return [
        o
        for o in objects
        if str(
            (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component", "")
        ).startswith("locust")
    ]


def fleet_patch(config: dict[str, Any], **values: int) -> dict[str, Any]:
    """The ConfigMap patch setting `values` (workers, users, duration) under the keys the
    ConfigMap uses for them (`WORKERS` or `CWH_WORKERS`, ...); zero values are left as they are."""
    data = config.get("data") or {}
    out = {}
    for name, value in values.items():
        if not value:
            continue
        key = next((k for k in (name.upper(), f"CWH_{name.upper()}") if k in data), None)
        if key is None:
            raise Missing(f"ConfigMap {config['metadata']['name']} has no {name.upper()}")
        out[key] = str(value)
    return {"data": out}


def staging_load(c: Cluster, workers: int, users: int, duration: int, out: Path) -> list[Step]:
    """A fleet from inside the cluster: the master Job made afresh (suspended), the fleet's
    size set, workers scaled and restarted on it, the run started (the Job unsuspended) and
    waited for, the master's report folder copied into `out`, then gated on the cluster's
    Prometheus."""
    config, master = fleet_objects(c)
    cm, job = config["metadata"]["name"], master["metadata"]["name"]
    data = config.get("data") or {}
    n = workers or int(data.get("WORKERS") or data.get("CWH_WORKERS") or 1)
    run_s = duration or int(data.get("DURATION") or data.get("CWH_DURATION_S") or 120)
    patch = fleet_patch(config, workers=n, users=users, duration=duration)
    return [
        Step(
            c.kn("delete", "job", job, "--ignore-not-found", "--wait=true"),
            "the last run's master removed",
        ),
        Step(
            c.kubectl("apply", "-f", "-"),
            f"the fleet's objects of overlay {c.overlay} applied (master suspended)",
            # The fleet alone: applying the whole overlay again would put kind's placeholder
            # secrets back over the real ones, and restart nothing else on purpose.
            stdin=yaml.safe_dump_all(fleet_only(c.objects())),
        ),
        Step(
            c.kn("patch", "configmap", cm, "--type=merge", "-p", json.dumps(patch)),
            f"fleet: {n} workers",
        ),
        Step(
            c.kn("scale", "deployment/locust-worker", f"--replicas={n}"),
            f"locust-worker scaled to {n}",
        ),
        Step(
            c.kn("rollout", "restart", "deployment/locust-worker"),
            "workers restarted on the fleet's settings",
        ),
        Step(
            c.kn("rollout", "status", "deployment/locust-worker", f"--timeout={ROLLOUT_TIMEOUT}"),
            "workers Ready",
        ),
        Step(
            c.kn("patch", "job", job, "--type=merge", "-p", '{"spec":{"suspend":false}}'),
            "the run started",
        ),
        Step(
            c.kn("wait", "--for=condition=complete", f"job/{job}", f"--timeout={run_s + 900}s"),
            "the run finished (the master reconciled and wrote its report)",
        ),
        Step(
            c.kn(
                "get", "pods", "-l", f"job-name={job}", "-o", "jsonpath={.items[0].metadata.name}"
            ),
            "the master's pod",
            capture="master_pod",
        ),
        Step(
            c.kn(
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=locust-reports",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ),
            "the report server's pod",
            capture="reports_pod",
        ),
        Step(
            c.kn("cp", f"{{reports_pod}}:{REPORTS_IN_CLUSTER}/{{master_pod}}", str(out)),
            f"report folder into {out}",
        ),
        Step(c.kn("scale", "deployment/locust-worker", "--replicas=0"), "workers stopped"),
        *gate(c, ("--run", str(out))),
    ]


def gate(c: Cluster, what: tuple[str, ...]) -> list[Step]:
    """The SLO gate on the cluster's Prometheus, reached through `kubectl proxy`."""
    return [
        Step(
            c.kubectl("proxy", "--port=0"),
            "kubectl proxy to the API server",
            capture="proxy",
            background=True,
        ),
        Step(
            (
                sys.executable,
                "-m",
                "cwh.cli",
                "slo",
                "check",
                *what,
                "--prometheus",
                c.prometheus("{proxy}"),
            ),
            "the SLO gate on the cluster's Prometheus",
        ),
    ]


def staging_chaos(c: Cluster, experiments: Sequence[str], out: Path) -> list[Step]:
    """A game day on the kubernetes runtime (`cwh chaos gameday`), then the SLO gate over
    its window on the cluster's Prometheus, its outputs in `out`."""
    if not c.settings.kube_target:
        raise Missing("CWH_KUBE_TARGET: the URL the experiments' phones reach the Ingress at")
    now = (
        sys.executable,
        "-c",
        "import datetime; print(datetime.datetime.now(datetime.UTC).isoformat())",
    )
    return [
        Step(c.kn("get", "namespace", c.settings.namespace), "the cluster answers"),
        Step(now, "the game day's start", capture="start"),
        Step(
            (sys.executable, "-m", "cwh.cli", "chaos", "gameday", *experiments),
            "the game day, on the kubernetes runtime",
            env=c.environ(),
        ),
        Step(now, "the game day's end", capture="end"),
        *gate(c, ("--from", "{start}", "--to", "{end}", "--out", str(out))),
    ]


def _fill(argv: Sequence[str], values: Mapping[str, str], dry: bool) -> list[str]:
    names = re.compile(r"\{(\w+)\}")
    return [names.sub(lambda m: f"<{m[1]}>" if dry else values[m[1]], a) for a in argv]


def execute(steps: Sequence[Step], dry_run: bool, say: Callable[[str], None] = print) -> int:
    """Run the steps in turn (print them only, with `dry_run`); stop at the first that fails.
    Returns the exit code of the last step run (0 when all succeeded)."""
    values: dict[str, str] = {}
    background: list[subprocess.Popen[str]] = []
    try:
        for step in steps:
            argv = _fill(step.argv, values, dry_run)
            env = " ".join(
                f"{k}={shlex.quote(v)}" for k, v in step.env.items() if k.startswith("CWH_")
            )
            say(f"# {step.what}" + (" (skipped when it exists)" if step.unless else ""))
            say((env + " " if env else "") + shlex.join(argv) + (" &" if step.background else ""))
            if dry_run:
                values[step.capture] = f"<{step.capture}>"
                continue
            if step.unless is not None and step.unless():
                continue
            code = _run(step, argv, values, background)
            if code:
                say(f"error: {step.what}: exit {code}")
                return code
        return 0
    finally:
        for proc in background:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def _run(
    step: Step, argv: list[str], values: dict[str, str], background: list[subprocess.Popen[str]]
) -> int:
    env = {**os.environ, **step.env}
    if step.background:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        background.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        # kubectl proxy: "Starting to serve on 127.0.0.1:41234"
        found = re.search(r"(\d+\.\d+\.\d+\.\d+:\d+)", line)
        if not found:
            return proc.poll() or 1
        values[step.capture] = f"http://{found[1]}"
        return 0
    stdout = subprocess.PIPE if step.capture else None
    done = subprocess.run(
        argv, input=step.stdin or None, stdout=stdout, text=True, env=env, check=False
    )
    if step.capture:
        values[step.capture] = (done.stdout or "").strip()
    return done.returncode


def cluster_of(settings: EnvSettings, overlay: str, environ: Mapping[str, str]) -> Cluster:
    """The cluster the settings name: `CWH_KUBECONFIG`, else `KUBECONFIG`, else
    `~/.kube/config`."""
    path = (
        settings.kubeconfig
        or environ.get("KUBECONFIG", "")
        or str(Path.home() / ".kube" / "config")
    )
    directory = OVERLAYS_DIR / overlay
    if not (directory / "kustomization.yaml").is_file():
        raise Missing(f"no overlay {overlay} under {OVERLAYS_DIR}")
    # The namespace is the overlay's: acting in another (CWH_NAMESPACE's default is kind's)
    # would apply here and patch, scale and delete there.
    names = [o["metadata"]["name"] for o in render(directory) if o["kind"] == "Namespace"]
    if len(names) == 1 and names[0] != settings.namespace:
        if environ.get("CWH_NAMESPACE"):
            raise Missing(
                f"CWH_NAMESPACE={settings.namespace} but overlay {overlay} deploys into "
                f"{names[0]}: unset it, or give the overlay of that namespace"
            )
        settings = dataclasses.replace(settings, namespace=names[0])
    return Cluster(settings=settings, overlay_dir=directory, kubeconfig=Path(path))


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m env.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("target", choices=("kind-up", "staging-load", "staging-chaos"))
    parser.add_argument("experiments", nargs="*", help="staging-chaos: the game day's experiments")
    parser.add_argument("--name", default="cwh", help="kind-up: the kind cluster's name")
    parser.add_argument(
        "--secrets", default="", help="kind-up: where its secrets are kept (/var/tmp/cwh-kind-NAME)"
    )
    parser.add_argument("--overlay", default="", help="kind or staging (default: kind for kind-up)")
    parser.add_argument("--workers", type=int, default=0, help="fleet workers (0: the overlay's)")
    parser.add_argument("--users", type=int, default=0, help="phones (0: the overlay's)")
    parser.add_argument("--duration", type=int, default=0, help="seconds (0: the overlay's)")
    parser.add_argument("--reports", default="reports", help="where run folders are made")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_intermixed_args(argv)
    environ = os.environ if environ is None else environ
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        if args.target == "kind-up":
            # The kubeconfig may not exist yet: kind writes it. Its context is kind's.
            settings = EnvSettings.from_environ({**environ, "CWH_RUNTIME": "local"})
            if not settings.kube_context:
                settings = dataclasses.replace(settings, kube_context=f"kind-{args.name}")
            c = cluster_of(settings, args.overlay or "kind", environ)
            steps = kind_up(c, args.name, Path(args.secrets) if args.secrets else None)
        else:
            settings = EnvSettings.from_environ({**environ, "CWH_RUNTIME": "kubernetes"})
            c = cluster_of(settings, args.overlay or "staging", environ)
            require_kubeconfig(c.kubeconfig)
            out = (Path(args.reports) / f"{stamp}-{args.target}").resolve()
            steps = (
                staging_load(c, args.workers, args.users, args.duration, out)
                if args.target == "staging-load"
                else staging_chaos(c, args.experiments, out)
            )
    except (Missing, SettingsError) as exc:
        print(f"error: make {args.target}: {exc}", file=sys.stderr)
        return 2
    return execute(steps, args.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
