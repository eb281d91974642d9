"""The supervisor starts what the topology describes: one process per replica that runs at
start, named and with the ports the topology gives it; secrets never on a command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from env import topology
from env.secrets import Secrets
from env.settings import EnvSettings
from env.supervisor import Supervisor
from env.topology import SERVICE_ROLES


@pytest.fixture
def supervisor(tmp_path: Path) -> Supervisor:
    return Supervisor(EnvSettings(base_port=18000, run_dir=tmp_path / "run"))


@pytest.fixture
def secrets(tmp_path: Path) -> Secrets:
    return Secrets.load_or_create(tmp_path / "secrets.json")


def test_one_process_per_initial_replica_in_stage_order(supervisor, secrets):
    stages = supervisor.define(secrets)
    topo = supervisor.topology
    # The topology's stages, and those with only a check or a job (empty), in STAGES' order.
    assert [s for s, comps in stages if comps] == [s for s, _ in topo.stages()]
    assert [s for s, comps in stages if not comps] == ["sync_standby", "backup_stanza"]
    assert [s for s, _ in stages] == [s for s in topology.STAGES if s in dict(stages)]
    defined = {c.name: c for _, comps in stages for c in comps}
    assert sorted(defined) == sorted(r.name for r in topo.initial_replicas())
    for name, comp in defined.items():
        w = topo.owner(name)
        assert comp.kind == w.kind
        assert comp.ports == dict(w.slot(name).ports)
        # Services are restarted on a failed liveness probe, on their own port.
        if w.kind in SERVICE_ROLES:
            assert comp.liveness is not None
            assert comp.liveness.url == f"http://127.0.0.1:{comp.ports['http']}/health/live"
        else:
            assert comp.liveness is None
    api3 = defined["api3"]
    assert api3.env["CW_NAME"] == "api3"
    assert api3.env["CW_PORT"] == str(EnvSettings(base_port=18000).ports.api(3))
    assert api3.env["CW_REGISTRATION_SECRET"] == secrets.registration_secret
    assert "CW_REGISTRATION_SECRET" not in defined["worker1"].env


def test_no_secret_on_a_command_line(supervisor, secrets):
    values = [v for v in vars(secrets).values() if v]
    assert len(values) >= 4
    for _, comps in supervisor.define(secrets):
        for comp in comps:
            line = " ".join(comp.argv)
            assert not [v for v in values if v in line], comp.name


def test_a_configured_toxiproxy_keeps_its_stage(tmp_path, secrets):
    """Nothing to start for it, but its stage's check creates the proxies before PostgreSQL."""
    sup = Supervisor(
        EnvSettings(
            base_port=18000, run_dir=tmp_path / "run", toxiproxy_url="http://127.0.0.1:8474"
        )
    )
    stages = sup.define(secrets)
    assert stages[1] == ("faultproxy", [])
    assert "faultproxy" in topology.waits_for("postgresql")
