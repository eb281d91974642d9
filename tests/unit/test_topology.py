"""The topology as data: its shape, its bounds from the HPA specs, and its own consistency."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from env import hpa, topology
from env.settings import EnvSettings
from env.topology import STAGES, TopologyError, Workload


@pytest.fixture(scope="module")
def specs() -> dict[str, hpa.HPASpec]:
    return hpa.load()


def test_the_default_environment_is_the_seeds_topology(specs):
    topo = topology.build(EnvSettings(), specs)
    stages = [s for s, _ in topo.stages()]
    # Every stage but those with only a check or a job to run (`Supervisor.define`).
    assert stages == [s for s in STAGES if s not in ("sync_standby", "backup_stanza")]
    api, worker, hub = topo.workload("api"), topo.workload("worker"), topo.workload("hub")
    # The seed: API 3-10 on CPU, workers 3-20 on queue depth, PDB min available 2.
    assert (api.min_replicas, api.max_replicas, api.autoscaled) == (3, 10, True)
    assert (worker.min_replicas, worker.max_replicas, worker.autoscaled) == (3, 20, True)
    assert (hub.min_replicas, hub.max_replicas, hub.autoscaled) == (2, 2, False)
    assert api.min_available == worker.min_available == hub.min_available == 2
    assert api.resources.cpu_request_m == 200
    assert api.load_balancer == "api"
    assert [r.name for r in api.initial] == ["api1", "api2", "api3"]
    assert api.slot("api10").ports["http"] == EnvSettings().ports.api(10)
    assert [r.name for r in topo.workload("pg").initial] == ["pg0", "pg1", "pg2"]
    assert topo.owner("redis5").name == "redis"


def test_every_port_is_one_the_port_check_knows(specs):
    """The preflight refuses to start on a taken port: it must know every slot's ports."""
    settings = EnvSettings(base_port=23000)
    topo = topology.build(settings, specs)
    assert set(topo.ports()) <= set(settings.listening_ports())


def test_dependencies_start_first(specs):
    topo = topology.build(EnvSettings(), specs)
    started: set[str] = set()
    for stage, workloads in topo.stages():
        for w in workloads:
            assert set(w.depends_on) <= started, (w.name, w.depends_on)
            # Its dependencies' stages are ones its stage waits for, not merely earlier ones.
            deps = {topo.workload(d).stage for d in w.depends_on}
            assert deps <= topology.waits_for(stage), (w.name, deps)
        started |= {w.name for w in workloads}


def test_settings_shape_the_topology(specs):
    small = EnvSettings(services=False, fault_proxy=False, pg_members=1)
    topo = topology.build(small, specs)
    assert [s for s, _ in topo.stages()][-1] == "prometheus"
    assert "faultproxy" not in [w.name for w in topo.workloads]
    assert len(topo.workload("pg").initial) == 1
    with pytest.raises(KeyError, match="no workload 'api'"):
        topo.workload("api")
    # A start count below the HPA's minimum is kept: the autoscaler raises it when it runs.
    assert topology.build(EnvSettings(api_replicas=1), specs).workload("api").replicas == 1


def test_an_hpa_beyond_the_slots_names_its_file_and_line(specs, tmp_path: Path):
    text = (
        (hpa.DEFAULT_DIR / "hpa-api.yaml").read_text().replace("maxReplicas: 10", "maxReplicas: 11")
    )
    (tmp_path / "hpa-api.yaml").write_text(text)
    with pytest.raises(TopologyError, match=r"hpa-api\.yaml:\d+: api maxReplicas 11"):
        topology.build(EnvSettings(), hpa.load(tmp_path))


def test_contradictions_are_refused(specs):
    topo = topology.build(EnvSettings(), specs)
    api = topo.workload("api")

    def with_api(w: Workload) -> topology.Topology:
        return replace(topo, workloads=tuple(w if x.name == "api" else x for x in topo.workloads))

    with pytest.raises(TopologyError, match="budget 4 above its minimum 3"):
        topology.check(with_api(replace(api, min_available=4)))
    with pytest.raises(TopologyError, match="does not start before it"):
        topology.check(with_api(replace(api, depends_on=("worker",))))
    # Earlier in STAGES is not enough: the stage must wait for it.
    redis_exporter = topo.workload("redis-exporter")
    with pytest.raises(TopologyError, match="redis depends on haproxy"):
        topology.check(
            replace(
                topo,
                workloads=tuple(
                    replace(w, depends_on=("haproxy",)) if w.name == "redis" else w
                    for w in topo.workloads
                ),
            )
        )
    assert "redis" in redis_exporter.depends_on
    with pytest.raises(TopologyError, match="not in the topology"):
        topology.check(with_api(replace(api, depends_on=("kafka",))))
    with pytest.raises(TopologyError, match="do not fit its 10 slots"):
        topology.check(with_api(replace(api, max_replicas=11)))
    clash = replace(api.slots[0], ports={"http": EnvSettings().ports.prometheus})
    with pytest.raises(TopologyError, match=r"port \d+: api1 and prometheus"):
        topology.check(with_api(replace(api, slots=(clash, *api.slots[1:]))))
