"""Which cluster the kubernetes runtime's own calls go to with no kubeconfig named: the pod's
service account inside a cluster (the game day's CronJob), never chaosk8s's fallback to
http://localhost that it takes in a pod unless CHAOSTOOLKIT_IN_POD is set."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.config import ConfigException

from env.settings import EnvSettings
from experiments.kube import api

IN_CLUSTER = EnvSettings(base_port=20000, runtime="kubernetes", namespace="cloudwatcher")


def test_in_a_pod_the_service_account_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def incluster(client_configuration: Any) -> None:
        client_configuration.host = "https://10.96.0.1:443"
        client_configuration.api_key = {"authorization": "Bearer sa-token"}

    monkeypatch.setattr(api, "load_incluster_config", incluster)
    kube = api.connect(IN_CLUSTER)
    assert kube.api.configuration.host == "https://10.96.0.1:443"
    assert kube.api.configuration.api_key == {"authorization": "Bearer sa-token"}


def test_outside_a_pod_chaosk8s_loads_the_usual_config(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_in_a_pod(client_configuration: Any) -> None:
        raise ConfigException("Service host/port is not set.")

    chosen: list[str] = []
    monkeypatch.setattr(api, "load_incluster_config", not_in_a_pod)
    monkeypatch.setattr(
        api.chaosk8s, "create_k8s_api_client", lambda secrets: chosen.append("chaosk8s") or "c"
    )
    assert api.connect(IN_CLUSTER).api == "c"
    assert chosen == ["chaosk8s"]
