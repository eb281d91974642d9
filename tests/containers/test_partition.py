"""A real network partition of the PostgreSQL primary (containers runtime only): cut off from
its replicas and etcd while its clients still reach it, the split-brain case Patroni fences."""

from __future__ import annotations

import json

import pytest

from env import containers
from env.configs import PATRONI_LOOP_WAIT_S, PATRONI_TTL_S
from env.local import LocalEnvironment
from experiments.pg_partition import measure_partition

pytestmark = [pytest.mark.containers]


def test_a_partitioned_primary_is_fenced_and_replaced(
    containers_env: LocalEnvironment, boxed_status: dict, record_property
) -> None:
    result = measure_partition(containers_env, rate_per_s=20)
    record_property("partition", result)
    print(json.dumps(result, indent=1, default=str))
    killed = result["killed"]
    # The cut was real: the member lost etcd and its peers, and the majority side moved on.
    assert {"etcd", "faultproxy"} <= set(killed["cut_from"])
    assert result["primary_after"] != killed["name"]
    assert result["timeline_after"] > killed["timeline"]
    # Fenced: the isolated member stopped claiming the primary role (HAProxy's check) once its
    # leader key could no longer be renewed: within the key's TTL and a loop or two, before the
    # partition healed; the window where both claimed it is measured, whatever it was.
    assert result["fenced_after_s"] is not None, result
    assert result["fenced_after_s"] <= PATRONI_TTL_S + 2 * PATRONI_LOOP_WAIT_S + 5, result
    assert result["fenced_after_s"] < result["healed_after_s"]
    assert result["both_primary_s"] is not None
    # Whatever was lost had been acknowledged by the isolated member after the cut, and was
    # among the rows it committed that the new primary lacks: the measurement agrees with
    # itself from both sides, write by write.
    rec = result["reconciliation"]
    assert set(result["lost_by_server"]) <= {str(killed["postgres_port"])}, result
    assert set(rec["lost_ids"]) <= set(result["acknowledged_by_isolated_ids"]), result
    rows = result["isolated_rows"]
    assert rows["committed"] is not None, rows  # the isolated member was read before the heal
    assert set(rec["lost_ids"]) <= set(rows["missing_ids"]), result
    # Healed, and whole again.
    assert containers.partitioned_from(containers_env.settings, killed["name"]) == []
    assert containers_env.state().healthy
