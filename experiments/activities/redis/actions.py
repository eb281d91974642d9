"""Redis Cluster faults: SIGKILL a master (its replica must take over), or partition a master
from its clients (its proxy disabled; the cluster bus stays up, so no failover happens and
requests for its slots fail until the partition heals)."""

from __future__ import annotations

import os
import signal
from typing import Any

from env.process import pid_alive, wait_until
from experiments import harness
from experiments.activities.network.actions import disable_proxy
from experiments.activities.redis.probes import masters, masters_in
from experiments.settings import Configuration


def kill_master(
    node: str = "", down_s: float = 30, timeout_s: float = 30, *, configuration: Configuration
) -> dict[str, Any]:
    """SIGKILL a master (`node` like "redis0", default the first master) and keep it down for
    `down_s`; returns once its replica is master and the cluster state is ok.

    On the kubernetes runtime, the master's pod deleted through chaosk8s with a 1 s grace (a
    StatefulSet's pod is never force-deleted; `experiments.kube.members.delete_redis_master`);
    its StatefulSet starts it again once it stopped, so `down_s` does not apply."""
    s = harness.settings_of(configuration)
    if s.env.runtime == "kubernetes":
        from experiments.kube.api import connect
        from experiments.kube.members import delete_redis_master

        return delete_redis_master(s, connect(s.env), node, timeout_s)
    env = harness.environment(s)
    before = masters_in(env.state())
    name = node or sorted(before)[0]
    if name not in before:
        raise RuntimeError(f"{name} is not a master (masters: {sorted(before)})")
    comp = env.component(name)
    env.hold(name, down_s)
    pid = int(comp["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 5, f"{name} (pid {pid}) dead")
    entry = harness.mark(s, "inject", f"kill-{name}", component=name, pid=pid)

    def promoted() -> dict[str, Any] | None:
        status = env.state()
        now = masters_in(status)
        ok = status.redis_cluster_state == "ok" and len(now) == len(before) and name not in now
        return now if ok else None

    now = wait_until(promoted, env.settings.timeout(timeout_s), f"a replica of {name} promoted")
    return {
        "killed": name,
        "pid": pid,
        "masters_after": sorted(now),
        "injected_wall": entry["wall"],
    }


def partition_master(node: str = "", *, configuration: Configuration) -> dict[str, Any]:
    """Cut a master (default the first) off from its clients: its proxy disabled."""
    name = node or sorted(masters(configuration=configuration))[0]
    disable_proxy(name, configuration=configuration)
    return {"partitioned": name}
