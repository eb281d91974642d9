"""`down` stops everything: no process of the environment is left, and its ports are free."""

from __future__ import annotations

import socket

import pytest

from env.local import LocalEnvironment
from env.process import processes_of

pytestmark = [pytest.mark.env, pytest.mark.teardown]


def test_down_leaves_no_process_and_frees_ports(local_env: LocalEnvironment):
    status = local_env.status()
    pids = [c["pid"] for c in status["components"] if c["pid"]]
    pids += [c.get("postgres_pid") for c in status["components"] if c.get("postgres_pid")]
    before = processes_of(local_env.settings.run_dir)
    # Precondition: the check below would pass vacuously on an environment already down.
    assert len(before) >= len(pids) >= 15

    local_env.down()

    assert processes_of(local_env.settings.run_dir) == []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            assert state == "Z", f"pid {pid} still alive"
        except FileNotFoundError:
            pass
    for comp in status["components"]:
        for port in comp["ports"].values():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))  # raises if anything still listens
    assert local_env.supervisor_status() is None
