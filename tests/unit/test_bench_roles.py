"""The no-fault soak's failover count (`bench/roles.py`) and its noisy neighbour
(`bench/noise.py`): what counts as a failover, what a probe's gap hides, and that the busy
processes really burn CPU and never outlive the benchmark."""

from __future__ import annotations

import subprocess
import sys

from bench.noise import cpu_seconds, noisy_neighbours
from bench.roles import RoleSample, role_changes
from env.process import pid_alive, wait_until

PG = {"pg0": "leader", "pg1": "sync_standby", "pg2": "replica"}
MASTERS = ("7300", "7301", "7302")


def steady(n: int, start: float = 0.0) -> list[RoleSample]:
    return [RoleSample(start + t, PG, 1, MASTERS, 6) for t in range(n)]


def test_a_steady_cluster_has_no_failover() -> None:
    got = role_changes(steady(30))
    assert got.total == 0
    assert (got.samples, got.pg_samples, got.redis_samples) == (30, 30, 30)
    assert got.events == []


def test_a_sync_standby_moving_between_replicas_is_not_a_failover() -> None:
    swapped = {"pg0": "leader", "pg1": "replica", "pg2": "sync_standby"}
    got = role_changes([*steady(5), RoleSample(5, swapped, 1, MASTERS, 6)])
    assert got.total == 0


def test_a_postgresql_failover_counts_once_across_leader_timeline_and_demotion() -> None:
    after = {"pg0": "replica", "pg1": "leader", "pg2": "sync_standby"}
    samples = [*steady(5), RoleSample(5, after, 2, MASTERS, 6), RoleSample(6, after, 2, MASTERS, 6)]
    got = role_changes(samples)
    assert (got.pg_leader_changes, got.pg_timeline_changes, got.pg_demotions) == (1, 1, 1)
    assert got.total == 1
    assert got.events == [
        "5 s: PostgreSQL pg0 demoted (leader -> replica)",
        "5 s: PostgreSQL leader pg0 -> pg1",
        "5 s: timeline 1 -> 2",
    ]


def test_a_leader_that_lost_and_took_back_its_lock_between_samples_shows_in_the_timeline() -> None:
    got = role_changes([*steady(3), RoleSample(3, PG, 2, MASTERS, 6)])
    assert got.pg_leader_changes == 0
    assert got.total == 1


def test_a_probe_gap_hides_no_change_that_outlived_it() -> None:
    after = {"pg0": "replica", "pg1": "leader", "pg2": "sync_standby"}
    gap = RoleSample(3, {}, None, (), None, ("patroni: ConnectionError", "redis: TimeoutError"))
    samples = [*steady(3), gap, RoleSample(4, after, 2, ("7300", "7301", "7305"), 7)]
    got = role_changes(samples)
    assert got.pg_leader_changes == 1
    assert (got.redis_master_changes, got.redis_epoch_bumps) == (1, 1)
    assert got.total == 2
    assert got.pg_samples == 4


def test_an_epoch_bump_without_a_new_master_is_an_attempt_and_counts() -> None:
    got = role_changes([*steady(3), RoleSample(3, PG, 1, MASTERS, 8)])
    assert got.redis_master_changes == 0
    assert got.redis_epoch_bumps == 2
    assert got.total == 2


def test_no_leader_in_a_sample_is_no_change_by_itself() -> None:
    headless = {"pg0": "replica", "pg1": "replica", "pg2": "replica"}
    got = role_changes([*steady(2), RoleSample(2, headless, None, MASTERS, 6), *steady(2, 3)])
    assert got.pg_leader_changes == 0
    assert got.pg_demotions == 1  # pg0 was seen as a replica: it lost the lock once
    assert got.total == 1


def test_the_noisy_neighbour_burns_cpu_and_is_stopped_on_leaving() -> None:
    with noisy_neighbours(2) as pids:
        assert len(pids) == 2
        wait_until(lambda: cpu_seconds(pids) > 0.3, 20, "the neighbours to burn CPU")
        assert all(pid_alive(p) for p in pids)
    assert not any(pid_alive(p) for p in pids)


def test_the_noisy_neighbour_never_outlives_its_parent() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from bench.noise import noisy_neighbours\n"
            "with noisy_neighbours(1) as pids:\n"
            "    print(pids[0], flush=True)\n"
            "    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert pid_alive(child)
    finally:
        parent.kill()  # SIGKILL: no finally of the parent's runs
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
    wait_until(lambda: not pid_alive(child), 20, "the orphaned neighbour to exit")


def test_two_promotions_hidden_by_a_gap_count_twice_and_a_stale_epoch_not_again() -> None:
    got = role_changes([*steady(2), RoleSample(2, PG, 3, MASTERS, 6)])
    assert got.pg_timeline_changes == 2
    assert got.total == 2
    # A node that has not heard of the bump yet answers 6 after another answered 7.
    late = [*steady(2), RoleSample(2, PG, 1, MASTERS, 7), RoleSample(3, PG, 1, MASTERS, 6)]
    late.append(RoleSample(4, PG, 1, MASTERS, 7))
    assert role_changes(late).redis_epoch_bumps == 1
