"""Rendered configs are accepted by the real binaries that will read them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from env import configs
from env.layout import Layout
from env.secrets import Secrets, ensure_tls_certificate
from env.settings import EnvSettings


@pytest.fixture
def rendered(tmp_path: Path):
    settings = EnvSettings(base_port=23000, run_dir=tmp_path)
    layout = Layout(tmp_path)
    layout.haproxy_dir.mkdir(parents=True)
    layout.prometheus_dir.mkdir(parents=True)
    secrets = Secrets.load_or_create(tmp_path / "secrets.json")
    ensure_tls_certificate(layout.tls_pem, layout.tls_cert)
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


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (make deps)")
def test_haproxy_accepts_its_config(rendered):
    settings, layout, secrets = rendered
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
