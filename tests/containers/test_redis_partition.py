"""A real network partition of a Redis master (containers runtime only): cut off from its replica
and the cluster bus while a client on the host still writes to it. The cluster fails over; the
isolated master must stop accepting writes, and what it accepted meanwhile is lost."""

from __future__ import annotations

import json

import pytest

from env.configs import REDIS_NODE_TIMEOUT_MS
from env.local import LocalEnvironment
from env.process import wait_until
from experiments.redis_partition import measure_redis_partition

pytestmark = [pytest.mark.containers]

#: The isolated master notices it lost the majority once its peers are PFAIL (no pong for
#: `cluster-node-timeout`, pinged from half of it on); a cron tick (100 ms) later it marks the
#: cluster down. Twice the timeout, and two seconds for a loaded 2-core machine.
REFUSAL_BOUND_S = 2 * REDIS_NODE_TIMEOUT_MS / 1000 + 2


def test_a_partitioned_redis_master_is_replaced_and_its_writes_counted(
    containers_env: LocalEnvironment, boxed_status: dict, record_property
) -> None:
    result = measure_redis_partition(containers_env, rate_per_s=20, hold_s=10)
    record_property("redis_partition", result)
    print(json.dumps(result, indent=1, default=str))
    master = result["master"]
    # The cut was real: while it held, the master's namespace dropped every other node's
    # address, and the majority side moved its slots to its replica.
    assert result["partitioned_from_during_cut"] == result["cut_ips"], result
    assert len(result["cut_from"]) == containers_env.settings.redis_nodes - 1
    assert result["promoted"] in result["replicas"], result
    assert result["slot_owner_during_cut"] == result["promoted"] != master, result
    assert result["promoted_after_s"] is not None
    # Nothing but `cluster-node-timeout` fences it (no min-replicas-to-write): it refused
    # within the bound, and accepted nothing after its first refusal.
    assert result["refused_after_s"] is not None, result
    assert result["refused_after_s"] <= REFUSAL_BOUND_S, result
    assert result["accepted_after_refusal"] == 0, result
    assert set(result["refusals"]) == {"CLUSTERDOWN"}, result
    # What it accepted once the cut was in place reached no replica: lost, every one; and
    # nothing acknowledged before the cut began was (it had replicated). A write in flight as
    # the rules went in may have reached the replica or not. Every key was read back.
    assert result["unknown"] == 0, result
    assert result["lost_acked_before_cut"] == 0, result
    assert set(result["lost_keys"]) <= set(result["acked_while_cut_keys"]), result
    assert set(result["acked_sent_after_cut_keys"]) <= set(result["lost_keys"]), result
    assert result["accepted_sent_after_cut"] > 0, result  # nothing else fenced it sooner
    # Healed: the old master rejoined as a replica, and the environment is whole again.
    assert result["partitioned_from_after_heal"] == []
    assert result["role_after"] == "slave"
    wait_until(
        lambda: containers_env.state().healthy,
        containers_env.settings.timeout(120),
        "the environment healthy after the heal",
        1.0,
    )
