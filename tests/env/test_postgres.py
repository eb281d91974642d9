"""PostgreSQL through Patroni and HAProxy: routing, synchronous replication, lag at rest."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from env.local import LocalEnvironment
from tests.helpers import members, poll, primary_of, query, wait_healthy

pytestmark = pytest.mark.env


def test_write_through_write_path_is_readable_on_both_replicas(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    urls = status["urls"]
    key = uuid.uuid4().hex
    query(urls["write"], "CREATE TABLE IF NOT EXISTS t_visibility (k text PRIMARY KEY)")
    query(urls["write"], "INSERT INTO t_visibility VALUES (%s)", (key,))

    primary = primary_of(status)
    replicas = [name for name in members(status) if name != primary]
    assert len(replicas) == 2
    for name in replicas:
        url = urls["members"][name]
        assert query(url, "SELECT pg_is_in_recovery()")[0][0] is True, f"{name} is no replica"
        poll(
            lambda url=url: query(url, "SELECT 1 FROM t_visibility WHERE k = %s", (key,)),
            10,
            f"row visible on {name}",
        )


def test_write_path_reaches_primary_and_read_path_reaches_replicas(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    urls = status["urls"]
    assert query(urls["write"], "SELECT pg_is_in_recovery()")[0][0] is False
    seen = set()
    for _ in range(6):
        in_recovery, port = query(urls["read"], "SELECT pg_is_in_recovery(), inet_server_port()")[0]
        assert in_recovery is True
        seen.add(port)
    # Round robin over both replicas.
    assert len(seen) == 2


def test_pgbouncer_pools_transactions_to_the_primary(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    # prepare_threshold=None: named prepared statements do not survive transaction pooling.
    with psycopg.connect(
        status["urls"]["pgbouncer"], autocommit=True, prepare_threshold=None
    ) as conn:
        for _ in range(5):
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


def test_synchronous_standby_and_replay_lag_under_one_second(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    primary_url = status["urls"]["members"][primary_of(status)]
    rows = query(
        primary_url,
        "SELECT application_name, state, sync_state FROM pg_stat_replication",
    )
    assert {r[1] for r in rows} == {"streaming"}
    assert [r[2] for r in rows].count("sync") == 1, rows

    # Replay lag as PostgreSQL measures it, after some WAL to replay.
    query(status["urls"]["write"], "CREATE TABLE IF NOT EXISTS t_lag (n int)")
    query(status["urls"]["write"], "INSERT INTO t_lag SELECT generate_series(1, 1000)")
    lags = poll(
        lambda: (
            r
            if (
                r := query(
                    primary_url,
                    "SELECT EXTRACT(EPOCH FROM replay_lag)::float8 FROM pg_stat_replication",
                )
            )
            and all(x[0] is not None for x in r)
            else None
        ),
        10,
        "replay_lag reported for every replica",
    )
    assert all(lag[0] < 1.0 for lag in lags), lags


def test_heartbeat_lag_seen_by_the_application_under_one_second(local_env: LocalEnvironment):
    """The lag the application sees: a heartbeat written on the primary, read on each replica."""
    status = wait_healthy(local_env)
    urls = status["urls"]
    query(
        urls["write"],
        "CREATE TABLE IF NOT EXISTS harness_heartbeat (id int PRIMARY KEY,"
        " beat bigint NOT NULL, at timestamptz NOT NULL)",
    )
    replicas = [n for n in members(status) if n != primary_of(status)]
    worst = 0.0
    for beat in range(1, 6):
        query(
            urls["write"],
            "INSERT INTO harness_heartbeat VALUES (1, %s, clock_timestamp())"
            " ON CONFLICT (id) DO UPDATE SET beat = EXCLUDED.beat, at = EXCLUDED.at",
            (beat,),
        )
        written = time.monotonic()
        for name in replicas:
            url = urls["members"][name]
            poll(
                lambda url=url, beat=beat: query(
                    url, "SELECT 1 FROM harness_heartbeat WHERE id = 1 AND beat >= %s", (beat,)
                ),
                5,
                f"heartbeat {beat} on {name}",
                interval_s=0.005,
            )
            worst = max(worst, time.monotonic() - written)
    assert worst < 1.0, f"application-visible lag {worst:.3f} s"


def test_a_cluster_created_under_another_failover_profile_takes_the_environments(
    local_env: LocalEnvironment,
):
    """The cluster keeps its Patroni timings in etcd, so `up` must write the profile's over
    whatever it was created with (`CWH_FAILOVER` changed between two `up`s)."""
    import asyncio

    from env import patroni_api
    from env.failover_timing import PROFILES, FailoverTiming
    from env.secrets import Secrets

    settings = local_env.settings
    ports = [settings.ports.patroni(m) for m in range(settings.pg_members)]
    secrets = Secrets.load(local_env.layout.secrets)
    other = next(t for name, t in PROFILES.items() if name != settings.failover)

    def dcs_holds(timing: FailoverTiming) -> bool | None:
        # A member answers GET /config from its cache of etcd, which its watch updates a
        # moment after a change.
        config = asyncio.run(patroni_api.dynamic_config(ports))
        return all(config.get(k) == v for k, v in timing.patroni_dynamic.items()) or None

    try:
        asyncio.run(patroni_api.patch_config(ports, secrets, other.patroni_dynamic))
        poll(lambda: dcs_holds(other), 10, "the other profile's timings in the DCS")
        changed = asyncio.run(patroni_api.apply_timing(settings.timing, ports, secrets))
        assert changed == settings.timing.patroni_dynamic
        poll(lambda: dcs_holds(settings.timing), 10, "the environment's timings in the DCS")
        # Applied once, nothing is left to change.
        assert asyncio.run(patroni_api.apply_timing(settings.timing, ports, secrets)) == {}
    finally:
        asyncio.run(patroni_api.patch_config(ports, secrets, settings.timing.patroni_dynamic))
