"""`bench/cpu.py`: the CPU accounting behind `make bench-api`'s profile table. A real child that
burns CPU must show up under its role with about the time it burned; PostgreSQL's processes are
told apart by their titles."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.cpu import postgres_group, snapshot, spent
from env.process import wait_until

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"


def test_postgres_processes_are_grouped_by_what_they_do() -> None:
    assert postgres_group("postgres: cwh: walsender replicator 127.0.0.1(5432) streaming") == (
        "postgres: walsender"
    )
    assert postgres_group("postgres: cwh: startup recovering 000000010000000000000005") == (
        "postgres: startup"
    )
    assert postgres_group("postgres: cwh: cloudwatcher cloudwatcher 127.0.0.1(4242) idle") == (
        "postgres: backend"
    )
    assert postgres_group("/usr/lib/postgresql/15/bin/postgres") == "postgres: postmaster"


def test_a_child_that_burns_cpu_is_counted_under_its_role() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", BURN + "import sys; sys.stdin.read()"],
        env={**os.environ, "CW_ROLE": "burner"},
        stdin=subprocess.PIPE,
    )
    try:
        before = snapshot()
        assert before[child.pid][0] == "burner"
        # The child burns 0.3 s of CPU, then waits on stdin: alive for the later snapshots.
        wait_until(
            lambda: spent(before, snapshot()).get("burner", 0.0) >= 0.25, 30, "the child burned"
        )
        after = snapshot()
        assert 0.25 <= spent(before, after)["burner"] < 2.0
        assert after[os.getpid()][0] == "load generator (this benchmark)"
    finally:
        child.kill()
        child.communicate(timeout=10)  # closes its stdin pipe too


def test_time_is_counted_from_the_first_snapshot_and_never_negative() -> None:
    before = {1: ("api", 10.0), 2: ("worker", 5.0), 3: ("api", 1.0)}
    after = {1: ("api", 12.5), 2: ("worker", 5.0), 4: ("api", 0.5), 5: ("redis", 0.0)}
    used = spent(before, after)
    # pid 4 started meanwhile: all of its time counts; pid 3 ended: its time is gone.
    assert used == {"api": 3.0, "worker": 0.0, "redis": 0.0}
    assert next(iter(used)) == "api"  # the biggest first
    # A pid reused by another role counts from zero, not from the old process's time.
    assert spent({7: ("hub", 9.0)}, {7: ("api", 1.0)}) == {"api": 1.0}
