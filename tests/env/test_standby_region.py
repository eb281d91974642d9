"""A second region beside the session's environment: its PostgreSQL is a Patroni standby
cluster cloned and fed over the region link (the fault proxy, with the cross-region delay);
writes in the primary region arrive there no sooner than that delay; its services wait for the
promotion; promoted, it serves a phone of the primary region (its token, its request) and takes
writes of its own while the primary region goes on untouched."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from env import configs
from env.local import LocalEnvironment
from env.process import processes_of
from env.settings import EnvSettings
from tests.helpers import members, poll, query, wait_healthy

pytestmark = pytest.mark.env


@pytest.fixture
def standby(local_env: LocalEnvironment, env_settings: EnvSettings) -> Iterator[LocalEnvironment]:
    """A small second region (two members, three Redis masters, one or two replicas of each
    service, no autoscaler), always removed."""
    base = env_settings.base_port + 600  # + 400 is the lifecycle tests' environment
    settings = EnvSettings(
        base_port=base,
        run_dir=Path(f"/var/tmp/cwh-test-{base}"),
        timeout_scale=env_settings.timeout_scale,
        pg_members=2,
        redis_replicas_per_master=0,
        api_replicas=2,
        hub_replicas=1,
        worker_replicas=1,
        scheduler_replicas=1,
        autoscale=False,
        backups=False,
        standby_of=env_settings.base_port,
        standby_source_dir=str(env_settings.run_dir),
    )
    env = LocalEnvironment(settings)
    env.reset()
    try:
        yield env
    finally:
        env.reset()
        assert processes_of(settings.run_dir) == []


def phone(status: dict) -> tuple[requests.Session, str]:
    """A phone registered in the region of `status`: its session (the region's CA trusted) and
    its bearer token."""
    http = requests.Session()
    # REQUESTS_CA_BUNDLE, when set, would override the session's CA: trust this one only.
    http.trust_env = False
    http.verify = status["tls_certificate"]
    base = status["urls"]["https"]
    r = http.post(
        f"{base}/v1/devices",
        json={"platform": "ios", "name": "traveller"},
        headers={"X-Registration-Secret": status["registration_secret"]},
        timeout=10,
    )
    r.raise_for_status()
    dev = r.json()
    r = http.post(
        f"{base}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": dev["client_id"],
            "client_secret": dev["client_secret"],
        },
        timeout=10,
    )
    r.raise_for_status()
    return http, r.json()["access_token"]


def test_a_standby_region_follows_the_primary_over_a_slow_link_and_takes_over_when_promoted(
    local_env: LocalEnvironment, standby: LocalEnvironment
):
    primary = wait_healthy(local_env)
    began = time.monotonic()
    standby.up(timeout_s=240)
    up_s = time.monotonic() - began
    status = wait_healthy(standby, 60)
    pg = members(status)
    assert pg["pg0"]["role"] == "standby leader" or pg["pg1"]["role"] == "standby leader", pg
    assert sorted(m["role"] for m in pg.values()) == ["replica", "standby leader"]
    assert status["region"]["role"] == "standby"
    assert status["region"]["streaming"]
    assert status["primary"] is None  # nothing there takes writes yet
    # Its services wait for the promotion: none runs.
    assert not [c for c in status["components"] if c["kind"] in ("api", "hub", "worker")]
    # The link carries the cross-region delay, and the status does not call it a fault.
    link = requests.get(
        f"{standby.settings.fault_api_url}/proxies/{configs.REGION_LINK}", timeout=5
    ).json()
    assert link["upstream"] == f"127.0.0.1:{local_env.settings.ports.haproxy_write}"
    assert sorted(t["attributes"]["latency"] for t in link["toxics"]) == [35, 35]
    fault_proxy = next(c for c in status["components"] if c["component"] == "faultproxy")
    assert fault_proxy["healthy"], fault_proxy

    # A write in the primary region reaches both of the standby's members, and not sooner
    # than the link's delay (35 ms, jitter 3 ms) after its commit returned.
    query(primary["urls"]["write"], "CREATE TABLE IF NOT EXISTS t_region (k text PRIMARY KEY)")
    key = uuid.uuid4().hex
    query(primary["urls"]["write"], "INSERT INTO t_region VALUES (%s)", (key,))
    committed = time.monotonic()
    seen_after = []
    for name in pg:
        url = status["urls"]["members"][name]
        poll(
            lambda url=url: query(url, "SELECT 1 FROM t_region WHERE k = %s", (key,)),
            15,
            f"the primary region's row on {name}",
            0.005,
        )
        seen_after.append(time.monotonic() - committed)
    # The first member polled saw it no sooner than the delay; the second, later still.
    seen_after = seen_after[0]
    assert seen_after >= 0.03, f"seen {seen_after * 1000:.0f} ms after the commit"
    # Read-only until promoted, whatever path a client takes.
    assert query(status["urls"]["read"], "SELECT pg_is_in_recovery()")[0][0] is True

    # A phone of the primary region submits a request there; it reaches the standby.
    http, token = phone(primary)
    r = http.post(
        f"{primary['urls']['https']}/v1/requests",
        json={"provider": "gdrive", "document": "doc-001.txt", "instruction": "travel"},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
        timeout=10,
    )
    r.raise_for_status()
    request_id = r.json()["request_id"]
    poll(
        lambda: query(
            status["urls"]["members"]["pg0"],
            "SELECT 1 FROM requests WHERE request_id = %s",
            (request_id,),
        ),
        15,
        "the phone's request on the standby",
    )

    began = time.monotonic()
    done = standby.promote()
    assert (done["timeline"] or 0) >= 2, done
    # Its services start once it takes writes; the phone's token and request are good there.
    promoted = wait_healthy(standby, 240)
    serving_s = time.monotonic() - began
    print(
        f"standby up {up_s:.1f} s; row seen {seen_after * 1000:.0f} ms after its commit; "
        f"promoted in {done['seconds']} s; serving (services ready) {serving_s:.1f} s after"
    )
    r = http.get(
        f"{promoted['urls']['https']}/v1/requests/{request_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["request_id"] == request_id
    assert promoted["region"]["role"] == "promoted"
    assert promoted["primary"] == done["leader"]
    assert query(promoted["urls"]["write"], "SELECT pg_is_in_recovery()")[0][0] is False
    # Its own writes now: the primary region neither has them nor lost anything.
    mine = uuid.uuid4().hex
    query(promoted["urls"]["write"], "INSERT INTO t_region VALUES (%s)", (mine,))
    assert query(primary["urls"]["write"], "SELECT 1 FROM t_region WHERE k = %s", (mine,)) == []
    assert query(primary["urls"]["write"], "SELECT 1 FROM t_region WHERE k = %s", (key,))
    # A second promotion is refused with a reason.
    with pytest.raises(Exception, match="not a standby cluster"):
        standby.promote()
    assert wait_healthy(local_env)["primary"] == primary["primary"]
