"""Rendered configs are accepted by the real binaries that will read them."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from env import configs
from env.failover_timing import PROFILES
from env.layout import Layout
from env.process import wait_until
from env.secrets import Secrets, ensure_environment_tls
from env.settings import EnvSettings


@pytest.fixture
def rendered(tmp_path: Path):
    settings = EnvSettings(base_port=23000, run_dir=tmp_path)
    layout = Layout(tmp_path)
    layout.haproxy_dir.mkdir(parents=True)
    layout.prometheus_dir.mkdir(parents=True)
    secrets = Secrets.load_or_create(tmp_path / "secrets.json")
    ensure_environment_tls(layout, (os.getuid(), os.getgid()))
    return settings, layout, secrets


def test_patroni_timing_obeys_patronis_rule_and_the_readme_bound():
    rule = configs.PATRONI_LOOP_WAIT_S + 2 * configs.PATRONI_RETRY_TIMEOUT_S
    assert rule <= configs.PATRONI_TTL_S
    assert configs.worst_case_failover_s() == 14


def test_patroni_config_is_synchronous_and_fast(rendered):
    settings, layout, secrets = rendered
    conf = yaml.safe_load(configs.patroni_config(settings, layout, secrets, 1))
    dcs = conf["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True
    assert dcs["ttl"] == 10
    assert dcs["loop_wait"] == 2
    assert conf["postgresql"]["listen"] == f"127.0.0.1:{settings.ports.postgres(1)}"
    assert conf["restapi"]["listen"] == f"127.0.0.1:{settings.ports.patroni(1)}"
    assert conf["etcd3"]["hosts"] == [f"127.0.0.1:{settings.ports.etcd_client}"]
    # A clone does not wait for its source's spread checkpoint (Patroni turns the dict into
    # pg_basebackup's --checkpoint=fast).
    assert conf["postgresql"]["basebackup"] == {"checkpoint": "fast"}


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (make deps)")
@pytest.mark.parametrize("failover", sorted(PROFILES))
def test_haproxy_accepts_its_config(rendered, failover: str):
    settings, layout, secrets = rendered
    settings = dataclasses.replace(settings, failover=failover)  # its checks' timing
    cfg = layout.haproxy_dir / "haproxy.cfg"
    cfg.write_text(configs.haproxy_config(settings, layout, secrets))
    result = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make deps)")
def test_promtool_accepts_the_prometheus_config(rendered):
    settings, layout, _ = rendered
    cfg = layout.prometheus_dir / "prometheus.yml"
    cfg.write_text(configs.prometheus_config(settings, layout))
    result = subprocess.run(
        ["promtool", "check", "config", str(cfg)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_secrets_are_created_once_and_private(tmp_path: Path):
    first = Secrets.load_or_create(tmp_path / "s.json")
    assert Secrets.load_or_create(tmp_path / "s.json") == first
    assert (tmp_path / "s.json").stat().st_mode & 0o077 == 0


def test_postgres_members_refuse_plaintext_and_verify_each_other(rendered):
    settings, layout, secrets = rendered
    conf = yaml.safe_load(configs.patroni_config(settings, layout, secrets, 0))["postgresql"]
    params = conf["parameters"]
    assert params["ssl"] == "on"
    assert params["ssl_cert_file"] == str(layout.server_cert("postgres"))
    assert params["ssl_key_file"] == str(layout.server_key("postgres"))
    hba = [line.split() for line in conf["pg_hba"]]
    tcp = [rule for rule in hba if rule[0] != "local"]
    # Every TCP rule that lets someone in asks for TLS; plaintext is rejected, replication too.
    assert all(rule[0] == "hostssl" for rule in tcp if rule[-1] != "reject")
    assert ["hostnossl", "all", "all", "0.0.0.0/0", "reject"] in hba
    assert ["hostnossl", "replication", "all", "0.0.0.0/0", "reject"] in hba
    allowed = {user for rule in tcp if rule[0] == "hostssl" for user in rule[2].split(",")}
    assert {"cloudwatcher", "replicator", "rewinder", "postgres"} <= allowed
    # Patroni's own connections, pg_rewind's and the standbys' replication verify the server.
    for account in ("superuser", "replication", "rewind"):
        auth = conf["authentication"][account]
        assert auth["sslmode"] == "verify-full", account
        assert auth["sslrootcert"] == str(layout.ca_cert), account


def test_pgbouncer_demands_tls_on_both_sides(rendered):
    settings, layout, _ = rendered
    ini = dict(
        line.split(" = ", 1)
        for line in configs.pgbouncer_config(settings, layout).splitlines()
        if " = " in line
    )
    assert ini["client_tls_sslmode"] == "require"
    assert ini["client_tls_cert_file"] == str(layout.server_cert("postgres"))
    assert ini["server_tls_sslmode"] == "verify-full"
    assert ini["server_tls_ca_file"] == str(layout.ca_cert)


def test_redis_speaks_only_tls_and_only_to_known_users(rendered):
    settings, layout, secrets = rendered
    conf = configs.redis_config(settings, layout, secrets, 2)
    lines = conf.splitlines()
    assert "port 0" in lines
    assert f"tls-port {settings.ports.redis(2)}" in lines
    assert any(line.startswith("user default off ") for line in lines)
    for setting in ("tls-cluster yes", "tls-replication yes"):
        assert setting in lines
    # Clients and replicas reach the node through the fault proxy: its TLS port is announced.
    assert f"cluster-announce-tls-port {settings.ports.proxy_redis(2)}" in lines
    # Passwords only as hashes in ACL rules (masterauth is the one the replica must send).
    for password in (secrets.redis_app, secrets.redis_admin, secrets.redis_exporter):
        assert password not in conf
    app = next(line for line in lines if line.startswith(f"user {configs.REDIS_APP_USER} "))
    assert " -@all " in app
    assert " ~req:* " in app
    assert "+@all" not in app


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis not installed (make deps)")
def test_redis_accepts_its_config(rendered, tmp_path: Path):
    """The real redis-server loads the rendered file (ACL rules included), checked without
    listening anywhere: `--port 0 --tls-port 0` on the command line override the file's."""
    settings, layout, secrets = rendered
    layout.redis_dir(0).mkdir(parents=True)
    cfg = layout.redis_dir(0) / "redis.conf"
    cfg.write_text(configs.redis_config(settings, layout, secrets, 0))
    sock, log = tmp_path / "r.sock", tmp_path / "redis.log"
    argv = ["redis-server", str(cfg), "--port", "0", "--tls-port", "0"]
    argv += ["--cluster-enabled", "no", "--appendonly", "no", "--unixsocket", str(sock)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: sock.exists() or proc.poll() is not None, 10, "redis socket")
        assert proc.poll() is None, log.read_text()
        env = {**os.environ, "REDISCLI_AUTH": secrets.redis_app}
        denied = subprocess.run(
            ["redis-cli", "-s", str(sock), "--user", configs.REDIS_APP_USER, "FLUSHALL"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert "NOPERM" in denied.stdout + denied.stderr
    finally:
        proc.terminate()
        proc.wait(10)
