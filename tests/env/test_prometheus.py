"""Prometheus scrapes every component of the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_api_client import PrometheusConnect

from env import hpa, topology
from env.commands import prometheus_memory_mib
from env.local import LocalEnvironment
from tests.helpers import poll, wait_healthy

pytestmark = pytest.mark.env

EXPECTED_JOBS = {"prometheus", "patroni", "haproxy", "postgres", "redis", "kube-state-metrics"}


def test_every_target_is_up(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    prom = PrometheusConnect(url=status["urls"]["prometheus"], disable_ssl=True)
    settings = local_env.settings
    # Prometheus, Patroni per member, HAProxy, the supervisor (kube-state-metrics), the
    # postgres exporter per member, a scrape per Redis node.
    expected = 1 + settings.pg_members + 1 + 1 + settings.pg_members + settings.redis_nodes
    jobs = set(EXPECTED_JOBS)
    if settings.services:
        # llm, two storage emulators, gateway, and the replicas, registered through file_sd.
        expected += 4 + settings.api_replicas + settings.hub_replicas
        expected += settings.worker_replicas + settings.scheduler_replicas
        jobs.add("services")

    def all_up() -> list[dict] | None:
        series = prom.custom_query("up")
        if len(series) == expected and all(s["value"][1] == "1" for s in series):
            return series
        return None

    series = poll(all_up, settings.timeout(60), f"{expected} targets with up == 1", 1.0)
    assert {s["metric"]["job"] for s in series} == jobs


def test_replication_and_cluster_metrics_are_scraped(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    prom = PrometheusConnect(url=status["urls"]["prometheus"], disable_ssl=True)
    settings = local_env.settings
    # Patroni says who leads; redis_exporter sees the cluster state of every node.
    leaders = poll(
        lambda: prom.custom_query("patroni_master == 1") or None,
        settings.timeout(30),
        "patroni_master series",
        1.0,
    )
    assert len(leaders) == 1
    ok_nodes = poll(
        lambda: (
            r
            if len(r := prom.custom_query("redis_cluster_state == 1")) == settings.redis_nodes
            else None
        ),
        settings.timeout(30),
        "redis_cluster_state on every node",
        1.0,
    )
    assert len(ok_nodes) == settings.redis_nodes


def test_prometheus_is_started_with_its_go_memory_limit(local_env: LocalEnvironment):
    """The running Prometheus was given the Go memory limit its settings name. Its effect, a
    resident size that levels off under the same series, is what `make bench-soak` measures."""
    wait_healthy(local_env)
    pid = local_env.component("prometheus")["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    settings = local_env.settings
    limit = prometheus_memory_mib(settings, topology.build(settings, hpa.load(settings.hpa_dir)))
    assert f"GOMEMLIMIT={limit}MiB".encode() in environ
