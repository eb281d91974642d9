"""The failure-detection profiles (env/failover_timing.py): each obeys Patroni's rule, renders
into every component's configuration, and moves the config-to-RTO model's bounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from env import configs, failover_model
from env.failover_timing import PROFILES, SLOWEST, STANDARD, FailoverTiming
from env.layout import Layout
from env.secrets import Secrets, ensure_environment_tls
from env.settings import EnvSettings, SettingsError


def test_a_profile_that_breaks_patronis_rule_is_refused():
    with pytest.raises(ValueError, match="loop_wait"):
        FailoverTiming("bad", 5, 2, 2, 500, 2, 1, 1000, 0.5)


def test_the_waits_use_the_slowest_profile_and_the_default_is_standard():
    assert EnvSettings().timing == STANDARD
    for t in PROFILES.values():
        assert configs.worst_case_failover_s(t) <= configs.worst_case_failover_s()
        assert t.redis_node_timeout_ms <= configs.REDIS_NODE_TIMEOUT_MS
    assert SLOWEST.ttl_s == configs.PATRONI_TTL_S


def test_an_unknown_profile_is_refused_by_name():
    with pytest.raises(SettingsError, match="CWH_FAILOVER='quick': one of standard, fast"):
        EnvSettings.from_environ({"CWH_FAILOVER": "quick"})
    assert EnvSettings.from_environ({"CWH_FAILOVER": "fast"}).failover == "fast"


def test_the_fast_profile_brings_every_goal_within_its_bound():
    """Its bounds are what #17's p95 goals need, up to the steps no setting shortens (the
    promotion, the phone's retry after a 503)."""
    fast, std = failover_model.bounds(PROFILES["fast"]), failover_model.bounds(STANDARD)
    for experiment, path in failover_model.GOALS_P95_S:
        assert fast[experiment][path].seconds < std[experiment][path].seconds
    node = fast["pg-lose-primary-node"]["write"]
    assert node.formula().startswith("ttl 5 + loop_wait 1 + promote 1 + rise x inter 0.5")
    crash = fast["pg-kill-primary"]["write"]
    assert crash.seconds == 1 + 1 + 0.5 + 0.5 + failover_model.CLIENT_RETRY_S


@pytest.fixture
def fast_rendered(tmp_path: Path):
    settings = EnvSettings(base_port=23000, run_dir=tmp_path, failover="fast")
    layout = Layout(tmp_path)
    layout.haproxy_dir.mkdir(parents=True)
    secrets = Secrets.load_or_create(tmp_path / "secrets.json")
    ensure_environment_tls(layout, (os.getuid(), os.getgid()))
    return settings, layout, secrets


def test_the_fast_profile_is_what_each_component_is_configured_with(fast_rendered):
    settings, layout, secrets = fast_rendered
    dcs = yaml.safe_load(configs.patroni_config(settings, layout, secrets, 0))["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (5, 1, 2)
    assert "inter 500ms fall 2 rise 1" in configs.haproxy_config(settings, layout, secrets)
    assert "server_login_retry = 0.5\n" in configs.pgbouncer_config(settings, layout)
    assert "cluster-node-timeout 1000\n" in configs.redis_config(settings, layout, secrets, 0)
