"""`down` stops everything, even after the supervisor itself crashed and left orphans behind."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from env.local import LocalEnvironment
from env.process import pid_alive, processes_of
from tests.helpers import members, poll, wait_healthy

pytestmark = [pytest.mark.env, pytest.mark.teardown]


def test_down_after_a_supervisor_crash_leaves_no_process_and_frees_ports(
    local_env: LocalEnvironment,
):
    status = wait_healthy(local_env)
    pids = [c["pid"] for c in status["components"] if c["pid"]]
    postmasters = [m["postgres_pid"] for m in members(status).values()]
    sup = local_env.supervisor_pid()
    assert sup is not None
    found = {p.pid for p in processes_of(local_env.settings.run_dir)}
    # The sweep sees every component, postmasters included (their titles hide the marker).
    assert {sup, *pids, *postmasters} <= found

    # The worst case: the supervisor dies, and a Patroni dies, orphaning its postmaster.
    os.kill(sup, signal.SIGKILL)
    victim = next(iter(members(status).values()))
    os.kill(victim["patroni_pid"], signal.SIGKILL)
    poll(lambda: not pid_alive(sup) and not pid_alive(victim["patroni_pid"]), 5, "both dead")
    assert pid_alive(victim["postgres_pid"]), "the orphaned postmaster is still running"

    local_env.down()

    assert processes_of(local_env.settings.run_dir) == []
    for pid in [*pids, *postmasters]:
        assert not pid_alive(pid), f"pid {pid} still alive"
    for comp in status["components"]:
        for port in comp["ports"].values():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))  # raises if anything still listens
    assert local_env.supervisor_status() is None
