"""The containers runtime's addresses (env/network.py) and the configs rendered with them."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from env import configs, network
from env.layout import Layout
from env.settings import SERVICE_SLOTS, EnvSettings, SettingsError

LOCAL = EnvSettings(base_port=17000)
BOXED = EnvSettings(base_port=17000, runtime="containers", backups=False)


def test_local_replicas_are_on_loopback() -> None:
    assert network.host(LOCAL, "pg1") == "127.0.0.1"
    assert network.bind(LOCAL) == "127.0.0.1"
    assert network.all_ips(LOCAL) == ()


def test_every_replica_of_the_largest_topology_has_its_own_address() -> None:
    names = [
        *network.SINGLE,
        *(f"pg{i}" for i in range(9)),
        *(f"postgres-exporter{i}" for i in range(9)),
        *(f"redis{i}" for i in range(10)),
        *(f"{kind}{i}" for kind, top in SERVICE_SLOTS.items() for i in range(1, top + 1)),
    ]
    ips = [network.host(BOXED, n) for n in names]
    assert len(set(ips)) == len(names)
    net = network.subnet(BOXED)
    gateway = ipaddress.IPv4Address(network.gateway(BOXED))
    for ip in map(ipaddress.IPv4Address, ips):
        assert ip in net
        assert ip not in (net.network_address, net.broadcast_address, gateway)
    assert set(ips) <= set(network.all_ips(BOXED))


def test_two_environments_far_enough_apart_get_two_subnets() -> None:
    other = EnvSettings(base_port=19000, runtime="containers", backups=False)
    assert network.subnet(other) != network.subnet(BOXED)


def test_an_unknown_replica_has_no_address() -> None:
    with pytest.raises(network.AddressError, match="nope"):
        network.host(BOXED, "nope3")
    with pytest.raises(network.AddressError):
        network.host(BOXED, "api11")  # beyond the slots


def test_settings_refuse_an_unknown_runtime_and_a_small_subnet() -> None:
    with pytest.raises(SettingsError, match="CWH_RUNTIME"):
        EnvSettings(runtime="vm")
    with pytest.raises(SettingsError, match="CWH_CONTAINER_SUBNET"):
        EnvSettings(runtime="containers", container_subnet="10.1.2.0/25", backups=False)
    with pytest.raises(SettingsError, match="CWH_CONTAINER_SUBNET"):
        EnvSettings(runtime="containers", container_subnet="not-a-net", backups=False)


def test_both_runtimes_have_backups_by_default_and_a_standby_region_none() -> None:
    env = {"CWH_RUNTIME": "containers", "CWH_BASE_PORT": "17000"}
    assert EnvSettings.from_environ(env).backups is True
    assert EnvSettings.from_environ({"CWH_BASE_PORT": "17000"}).backups is True
    standby = {"CWH_BASE_PORT": "17400", "CWH_STANDBY_OF": "17000"}
    assert EnvSettings.from_environ(standby).backups is False


def test_patroni_reaches_etcd_and_advertises_its_container(tmp_path: Path) -> None:
    from env.secrets import Secrets

    secrets = Secrets.load_or_create(tmp_path / "secrets.json")
    conf = yaml.safe_load(configs.patroni_config(BOXED, Layout(tmp_path), secrets, 1))
    pg1, etcd = network.host(BOXED, "pg1"), network.host(BOXED, "etcd")
    assert conf["restapi"]["listen"] == f"0.0.0.0:{BOXED.ports.patroni(1)}"
    assert conf["restapi"]["connect_address"] == f"{pg1}:{BOXED.ports.patroni(1)}"
    assert conf["etcd3"]["hosts"] == [f"{etcd}:{BOXED.ports.etcd_client}"]
    # Replicas stream through the fault proxy's container.
    proxy = network.host(BOXED, "faultproxy")
    assert conf["postgresql"]["connect_address"] == f"{proxy}:{BOXED.ports.proxy_pg_link(1)}"
    assert any(str(network.subnet(BOXED)) in rule for rule in conf["postgresql"]["pg_hba"])


def test_haproxy_routes_to_the_members_containers(tmp_path: Path) -> None:
    from env.secrets import Secrets

    secrets = Secrets.load_or_create(tmp_path / "secrets.json")
    cfg = configs.haproxy_config(BOXED, Layout(tmp_path), secrets)
    for m in range(BOXED.pg_members):
        assert f"{network.host(BOXED, f'pg{m}')}:{BOXED.ports.postgres(m)}" in cfg
    assert f"bind 0.0.0.0:{BOXED.ports.haproxy_write}" in cfg
    assert "127.0.0.1" not in cfg.replace("127.0.0.1:1 check disabled", "").replace(
        f"127.0.0.1:{BOXED.ports.haproxy_write} backup", ""
    )


def test_redis_nodes_announce_their_own_address_on_the_containers_runtime(tmp_path: Path) -> None:
    from env.secrets import Secrets

    secrets = Secrets.load_or_create(tmp_path / "secrets.json")
    conf = configs.redis_config(BOXED, Layout(tmp_path), secrets, 2)
    assert f"cluster-announce-ip {network.host(BOXED, 'redis2')}\n" in conf
    assert "cluster-announce-tls-port" not in conf  # clients and the bus reach the node itself
    local = configs.redis_config(LOCAL, Layout(tmp_path), secrets, 2)
    assert "cluster-announce-ip 127.0.0.1" in local


def test_fault_proxy_listens_everywhere_and_forwards_to_containers() -> None:
    proxies = {p["name"]: p for p in configs.fault_proxies(BOXED)}
    assert proxies["postgres-write"]["listen"] == f"0.0.0.0:{BOXED.ports.proxy_pg_write}"
    assert proxies["postgres-write"]["upstream"] == (
        f"{network.host(BOXED, 'pgbouncer')}:{BOXED.ports.pgbouncer}"
    )
    local = {p["name"]: p for p in configs.fault_proxies(LOCAL)}
    assert local["postgres-write"]["upstream"] == f"127.0.0.1:{LOCAL.ports.pgbouncer}"


def test_container_faults_refuse_the_local_runtime() -> None:
    from env import containers
    from env.local import LocalEnvironment
    from experiments.pg_partition import measure_partition

    with pytest.raises(containers.NeedsContainers, match="needs the containers runtime"):
        containers.partition(LOCAL, "pg0", ["etcd"])
    with pytest.raises(containers.NeedsContainers, match="needs the containers runtime"):
        containers.pause(LOCAL, "api1")
    with pytest.raises(containers.NeedsContainers):
        measure_partition(LocalEnvironment(LOCAL))


def test_a_running_environment_keeps_its_runtime_whatever_the_caller_asks(
    tmp_path: Path,
) -> None:
    from env.local import LocalEnvironment

    local = EnvSettings(base_port=17000, run_dir=tmp_path)
    assert LocalEnvironment(local).settings.runtime == "local"  # nothing recorded
    Layout(tmp_path).runtime_record.write_text("containers\n")
    adopted = LocalEnvironment(local).settings
    assert adopted.runtime == "containers"
    assert adopted.backups is True  # backups run on either runtime: nothing else changes
    Layout(tmp_path).runtime_record.write_text("local\n")
    boxed = EnvSettings(base_port=17000, run_dir=tmp_path, runtime="containers", backups=False)
    back = LocalEnvironment(boxed)
    assert back.settings.runtime == "local"
    assert back.requested.runtime == "containers"


#: Every experiment that declares the containers runtime (its `cwh` extension).
CONTAINERS_ONLY = sorted(
    f.stem
    for f in (Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml")
    if "\n  runtimes: [containers]\n" in f.read_text()
)


@pytest.mark.parametrize("experiment", CONTAINERS_ONLY)
def test_cwh_chaos_refuses_a_containers_experiment_on_the_local_runtime(
    tmp_path: Path, experiment: str
) -> None:
    from rich.console import Console

    from cwh.chaos import ChaosOptions, run

    assert {"pg-partition-primary", "redis-partition-bus", "oom-api"} <= set(CONTAINERS_ONLY)
    console = Console(record=True, width=200)
    code, out = run(
        ChaosOptions(experiment=experiment, reports=tmp_path),
        console,
        EnvSettings(base_port=17000, run_dir=tmp_path / "run"),
    )
    assert (code, out) == (2, None)
    assert "needs the containers runtime" in console.export_text()
    assert not (tmp_path / "run" / "supervisor.pid").exists()  # nothing was started
