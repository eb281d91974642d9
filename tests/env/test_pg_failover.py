"""PostgreSQL primary failures under a steady write loop: RTO within the promise, nothing lost."""

from __future__ import annotations

import pytest

from env.configs import worst_case_failover_s
from env.local import LocalEnvironment
from experiments.pg_failover import (
    KILL_PATRONI,
    KILL_POSTGRES,
    Fault,
    measure_failover,
    pg_members,
    primary_of,
)
from tests.helpers import assert_postgres_kill_recovered

pytestmark = [pytest.mark.env, pytest.mark.fault]


def test_sigkill_primary_postgres(local_env: LocalEnvironment, record_property):
    result = measure_failover(local_env, KILL_POSTGRES)
    record_property("failover", result)
    print(result)
    assert_postgres_kill_recovered(result)


def test_sigkill_primary_patroni(local_env: LocalEnvironment, record_property):
    """The primary's Patroni dies and stays down: its leader key expires, a replica takes over.

    Its orphaned postmaster keeps running, but HAProxy checks Patroni's REST API, so clients are
    cut off from it; when Patroni returns it demotes and rewinds it into a replica.
    """
    result = measure_failover(local_env, KILL_PATRONI)
    record_property("failover", result)
    print(result)
    killed = result["killed"]
    assert result["primary_before"] == killed["name"]
    assert result["primary_after"] != killed["name"], "the primary did not change"
    assert result["not_ok_after_fault"] > 0
    assert result["rto_s"] <= worst_case_failover_s(), result
    rec = result["reconciliation"]
    assert rec["acknowledged"] > 0
    assert rec["lost"] == 0, rec
    # measure_failover restored it: the old primary is back, as a replica.
    final = local_env.state()
    assert final.healthy
    assert pg_members(final)[killed["name"]].role in ("replica", "sync replica")


def test_a_fault_that_hurts_no_write_is_measured_as_an_rto_of_zero(local_env: LocalEnvironment):
    """A fault that takes effect without failing or holding any write measures 0 s, and the
    caller judges it; the measurement used to poll for a positive RTO and time out after
    minutes with "writes recovered", which blamed the writes for a fault that never hit them."""
    harmless = Fault("harmless", lambda env, status: {"name": primary_of(status)}, _always)
    result = measure_failover(local_env, harmless)
    assert result["rto_s"] == 0, result
    assert result["not_ok_after_fault"] == 0, result
    assert result["primary_after"] == result["primary_before"] == result["killed"]["name"]
    assert result["reconciliation"]["lost"] == 0


def _always(killed: object, now: object) -> bool:
    return True
