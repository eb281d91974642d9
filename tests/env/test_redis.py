"""Redis Cluster: every shard serves, and a killed master's replica takes over."""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import pytest
from redis import Redis
from redis.cluster import RedisCluster

from env.local import LocalEnvironment
from env.process import pid_alive
from tests.helpers import poll, redis_options, wait_healthy

pytestmark = pytest.mark.env


def cluster(status: dict[str, Any]) -> RedisCluster:
    """The whole cluster as the harness's admin user, over TLS verified against the CA."""
    return RedisCluster.from_url(
        status["urls"]["redis"],
        ssl_ca_certs=status["tls_certificate"],
        socket_timeout=2,
        decode_responses=True,
    )


def nodes_view(rc: RedisCluster) -> list[dict]:
    """CLUSTER NODES from any live node, parsed into dicts."""
    raw = rc.cluster_nodes()
    return [{"addr": addr, **info} for addr, info in raw.items()]


def keys_per_master(rc: RedisCluster, per_master: int = 5) -> dict[str, list[str]]:
    """Keys whose slots fall on each master, `per_master` of them for each."""
    out: dict[str, list[str]] = {}
    masters = {n.name for n in rc.get_primaries()}
    i = 0
    while any(len(out.get(m, [])) < per_master for m in masters):
        key = f"k:{uuid.uuid4().hex[:8]}:{i}"
        node = rc.get_node_from_key(key)
        if len(out.setdefault(node.name, [])) < per_master:
            out[node.name].append(key)
        i += 1
    return out


def test_keys_on_every_shard_are_written_and_read_back(local_env: LocalEnvironment):
    rc = cluster(wait_healthy(local_env))
    try:
        by_master = keys_per_master(rc)
        assert len(by_master) == local_env.settings.redis_masters
        for keys in by_master.values():
            for key in keys:
                rc.set(key, key[::-1], ex=300)
        for keys in by_master.values():
            for key in keys:
                assert rc.get(key) == key[::-1]
                assert 0 < rc.ttl(key) <= 300
    finally:
        rc.close()


def test_killed_master_is_replaced_by_its_replica(local_env: LocalEnvironment, record_property):
    status = wait_healthy(local_env)
    settings = local_env.settings
    rc = cluster(status)
    try:
        victim = next(
            c for c in status["components"] if c["kind"] == "redis" and c["role"] == "master"
        )
        # Clients know a node by the address it announces: its fault-proxy port.
        node = int(victim["component"].removeprefix("redis"))
        victim_port = (
            settings.ports.proxy_redis(node) if settings.fault_proxy else victim["ports"]["redis"]
        )
        view = nodes_view(rc)
        victim_id = next(n["node_id"] for n in view if n["addr"].endswith(f":{victim_port}"))
        replica = next(n for n in view if n.get("master_id") == victim_id)
        # Data written and replicated before the fault must survive it.
        keys = keys_per_master(rc, 3)[f"127.0.0.1:{victim_port}"]
        for key in keys:
            rc.set(key, "before-fault")
        victim_client = rc.get_node(host="127.0.0.1", port=victim_port).redis_connection
        assert victim_client.execute_command("WAIT", 1, 2000) >= 1

        local_env.hold(victim["component"], 120)
        os.kill(victim["pid"], signal.SIGKILL)
        poll(lambda: not pid_alive(victim["pid"]), 5, "redis master dead")

        def promoted() -> bool:
            # Ask the replica itself; the killed node cannot answer.
            host, port = replica["addr"].split(":")
            r = Redis(
                host=host,
                port=int(port),
                socket_timeout=1,
                decode_responses=True,
                **redis_options(status),
            )
            try:
                return r.info("replication")["role"] == "master"
            finally:
                r.close()

        started = time.monotonic()
        poll(promoted, settings.timeout(30), f"replica {replica['addr']} promoted")
        record_property("redis_failover_s", round(time.monotonic() - started, 2))
        rc.nodes_manager.initialize()
        for key in keys:
            assert rc.get(key) == "before-fault"
    finally:
        rc.close()
        local_env.release(victim["component"])
    # The old master returns as a replica of its replacement.
    wait_healthy(local_env, timeout_s=60)
