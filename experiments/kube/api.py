"""The Kubernetes API as the experiments reach it on the kubernetes runtime.

Our own calls go through a client loaded from the settings' kubeconfig and context; chaosk8s's
actions get the same context in their `secrets`; typed calls through the kubernetes client; and
HTTP to in-cluster Services and pods (Toxiproxy, Prometheus, the services' admin
endpoints and metrics) through the API server's proxy (`.../services/<name>:<port>/proxy/...`),
authenticated as the client is, so no port-forward is needed.

chaosk8s reads the kubeconfig from the process's `KUBECONFIG` (and the kubernetes client reads
that variable once, when it is imported): `secrets_of` refuses to hand chaosk8s anything when
that file is not the one the settings name (`CWH_KUBECONFIG`), rather than breaking another
cluster than the one asked. `cwh chaos run` sets the variable for the `chaos` process it
starts.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import chaosk8s
import requests
from chaoslib.exceptions import ActivityFailed
from kubernetes import client
from kubernetes.config import ConfigException, kube_config, load_incluster_config
from kubernetes.stream import stream

from env.settings import EnvSettings

#: The label every object of `deploy/` carries with its role (api, hub, postgresql, redis...).
COMPONENT = "app.kubernetes.io/component"
#: How often a wait asks the API server again (s).
POLL_S = 0.25


def kubeconfig_in_use() -> Path:
    """The kubeconfig chaosk8s and the kubernetes client load (`$KUBECONFIG`, else
    `~/.kube/config`), as they see it."""
    return Path(kube_config.KUBE_CONFIG_DEFAULT_LOCATION).expanduser()


def secrets_of(env: EnvSettings) -> dict[str, str]:
    """chaosk8s's `secrets` for the cluster of `env`: the context, and TLS verified (chaosk8s's
    default is not to).

    Raises:
        ActivityFailed: chaosk8s would load another kubeconfig than `env.kubeconfig` (it reads
            the process's `KUBECONFIG`), and so act on another cluster than the one asked.
    """
    if env.kubeconfig:
        wanted = Path(env.kubeconfig).resolve()
        loaded = kubeconfig_in_use().resolve()
        if loaded != wanted:
            raise ActivityFailed(
                f"CWH_KUBECONFIG is {wanted} but chaosk8s would load {loaded}: it reads the "
                "KUBECONFIG variable; run through `cwh chaos run` (which sets it) or export "
                f"KUBECONFIG={wanted}"
            )
    out = {"KUBERNETES_VERIFY_SSL": "true"}
    if env.kube_context:
        out["KUBERNETES_CONTEXT"] = env.kube_context
    return out


def selector(component: str, **labels: str) -> str:
    """The label selector of a component's pods: `app.kubernetes.io/component=api,...`."""
    return ",".join([f"{COMPONENT}={component}", *(f"{k}={v}" for k, v in labels.items())])


@dataclass(frozen=True)
class Kube:
    """A connection to the cluster of the settings (`connect`)."""

    env: EnvSettings
    api: client.ApiClient

    @property
    def namespace(self) -> str:
        return self.env.namespace

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    def pods(self, label_selector: str) -> list[Pod]:
        """The namespace's pods matching `label_selector`, by name."""
        found = self.core.list_namespaced_pod(self.namespace, label_selector=label_selector)
        return sorted((Pod.of(p) for p in found.items), key=lambda p: p.name)

    def session(self) -> requests.Session:
        """A requests session that authenticates as the client does (token or client
        certificate) and trusts what it trusts."""
        cfg = self.api.configuration
        session = requests.Session()
        for auth in cfg.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                session.headers[auth["key"]] = auth["value"]
        if cfg.cert_file:
            session.cert = (cfg.cert_file, cfg.key_file)
        session.verify = cfg.ssl_ca_cert or bool(cfg.verify_ssl)
        return session

    def service_url(self, service: str, port: int | str) -> str:
        """The API server's proxy to a Service of the namespace (no trailing slash)."""
        host = self.api.configuration.host.rstrip("/")
        return f"{host}/api/v1/namespaces/{self.namespace}/services/{service}:{port}/proxy"

    def pod_url(self, pod: str, port: int | str) -> str:
        """The API server's proxy to one pod's port (no trailing slash)."""
        host = self.api.configuration.host.rstrip("/")
        return f"{host}/api/v1/namespaces/{self.namespace}/pods/{pod}:{port}/proxy"

    def exec(self, pod: str, container: str, command: list[str], timeout_s: float = 30) -> str:
        """Run `command` in a container of `pod` (the API's `pods/exec`) and return its
        standard output, once it has exited.

        Args:
            timeout_s: how long the command may run (s).

        Raises:
            ActivityFailed: the command could not run, exited non-zero, was still running after
                `timeout_s` (its output so far would be partial), or ended without the exit
                status the API server sends on channel 3.
        """
        what = f"{' '.join(command)} in {pod}"
        ws = stream(
            self.core.connect_get_namespaced_pod_exec,
            pod,
            self.namespace,
            container=container,
            command=command,
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
            _preload_content=False,
        )
        try:
            ws.run_forever(timeout=timeout_s)
            # The API server closes the stream once the command exits: open, it still runs.
            running = ws.is_open()
            out = ws.read_stdout(timeout=0)
            err = ws.read_stderr(timeout=0)
            status = ws.read_channel(3)  # the exec's outcome, a Status object
        finally:
            ws.close()
        if running:
            raise ActivityFailed(f"{what}: still running after {timeout_s:g} s")
        if not status:
            raise ActivityFailed(f"{what}: ended without an exit status (stderr: {err.strip()!r})")
        if json.loads(status).get("status") != "Success":
            raise ActivityFailed(f"{what}: {status} {err.strip()}")
        return str(out)


def connect(env: EnvSettings) -> Kube:
    """A client for the cluster and namespace of `env`: its kubeconfig and context, loaded
    explicitly; none named: the pod's service account inside a cluster, else what chaosk8s
    loads (`$KUBECONFIG`, `~/.kube/config`).

    Raises:
        ActivityFailed: the settings are not the kubernetes runtime's, or the kubeconfig is
            not there.
    """
    if env.runtime != "kubernetes":
        raise ActivityFailed(f"the {env.runtime} runtime has no Kubernetes API")
    if not env.kubeconfig:
        # In a pod (the game day's CronJob): its service account. chaosk8s's own client
        # falls back to http://localhost there unless CHAOSTOOLKIT_IN_POD is set (the CronJob
        # sets it for chaosk8s's actions); ours asks the library directly.
        cfg = client.Configuration()
        try:
            load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except ConfigException:  # not in a pod
            return Kube(env=env, api=chaosk8s.create_k8s_api_client(secrets_of(env)))
        return Kube(env=env, api=client.ApiClient(cfg))
    if not Path(env.kubeconfig).is_file():
        raise ActivityFailed(f"CWH_KUBECONFIG={env.kubeconfig}: no such file")
    api = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]  # unannotated
        config_file=env.kubeconfig, context=env.kube_context or None, persist_config=False
    )
    return Kube(env=env, api=api)


@dataclass(frozen=True)
class Pod:
    """What the experiments read of a pod (the API's V1Pod, whose fields are all optional).

    Attributes:
        name, uid: the pod's; a StatefulSet's replacement keeps the name, never the uid.
        owner: the kind of its controller (ReplicaSet, StatefulSet, DaemonSet, Job...; "" for
            a pod without one).
        node: the node it was scheduled on ("" before).
        phase: Pending, Running, Succeeded, Failed or Unknown.
        ready: it runs, is not being deleted, and its Ready condition is True.
        created: its creation time (UTC), None when the API gave none.
    """

    name: str
    uid: str
    owner: str
    node: str
    phase: str
    ready: bool
    created: datetime | None

    @classmethod
    def of(cls, pod: client.V1Pod) -> Pod:
        meta = pod.metadata or client.V1ObjectMeta()
        status = pod.status or client.V1PodStatus()
        conditions = status.conditions or []
        ready_ = (
            meta.deletion_timestamp is None
            and status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in conditions)
        )
        controller = next((o for o in meta.owner_references or [] if o.controller), None)
        return cls(
            name=meta.name or "",
            uid=meta.uid or "",
            owner=controller.kind if controller else "",
            node=(pod.spec.node_name if pod.spec else None) or "",
            phase=status.phase or "",
            ready=ready_,
            created=meta.creation_timestamp,
        )

    def journal(self) -> dict[str, Any]:
        """What the fault journal keeps of it."""
        return {"pod": self.name, "uid": self.uid, "node": self.node, "ready": self.ready}


def secret_value(kube: Kube, name: str, key: str) -> str:
    """One key of a Secret of the namespace, decoded."""
    data = kube.core.read_namespaced_secret(name, kube.namespace).data or {}
    if key not in data:
        raise ActivityFailed(f"Secret {name} has no {key}")
    return base64.b64decode(data[key]).decode()
