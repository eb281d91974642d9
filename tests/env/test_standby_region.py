"""A second region beside the session's environment: its PostgreSQL is a Patroni standby
cluster cloned and fed over the region link (the fault proxy, with the cross-region delay);
writes in the primary region arrive there no sooner than that delay; its services wait for the
promotion; promoted, it serves a phone of the primary region (its token, its request) and takes
writes of its own while the primary region goes on untouched. Its global entry point sends the
phones to it once it serves, for good, also across its restart."""

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

pytestmark = [pytest.mark.env, pytest.mark.dr]


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
    local_env: LocalEnvironment, standby: LocalEnvironment, request: pytest.FixtureRequest
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

    # A write in the primary region reaches both of the standby's members.
    query(primary["urls"]["write"], "CREATE TABLE IF NOT EXISTS t_region (k text PRIMARY KEY)")
    request.addfinalizer(lambda: query(primary["urls"]["write"], "DROP TABLE t_region"))
    key = uuid.uuid4().hex
    query(primary["urls"]["write"], "INSERT INTO t_region VALUES (%s)", (key,))
    committed = time.monotonic()
    for name in pg:
        url = status["urls"]["members"][name]
        poll(
            lambda url=url: query(url, "SELECT 1 FROM t_region WHERE k = %s", (key,)),
            15,
            f"the primary region's row on {name}",
        )
    seen_after = time.monotonic() - committed
    # The primary sees the standby leader's confirmations a round trip of the link late (2 x
    # 35 ms), asynchronous, under its own name: never taken for a synchronous standby.
    at_primary = primary["urls"]["members"][primary["primary"]]
    sender = (
        "SELECT EXTRACT(EPOCH FROM write_lag)::float8, sync_state FROM pg_stat_replication"
        " WHERE starts_with(application_name, 'drpg')"
    )
    lag, sync_state = poll(
        lambda: (rows := query(at_primary, sender)) and rows[0][0] is not None and rows[0],
        15,
        "the standby leader's write lag at the primary",
    )
    assert lag >= 0.06, f"write lag {lag * 1000:.0f} ms over a 2 x 35 ms link"
    assert sync_state == "async"
    assert "drpg" not in query(at_primary, "SHOW synchronous_standby_names")[0][0]
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

    # Before the failover the entry point sends the phone to the primary region; its
    # connection stays open (kept alive, 10 s at the region's frontend).
    entry_url = status["region"]["global_entry"]["url"]
    assert http.get(f"{entry_url}/openapi.json", timeout=10).status_code == 200
    began = time.monotonic()
    done = standby.promote()
    assert (done["timeline"] or 0) >= 2, done
    poll(
        lambda: standby.status()["region"]["global_entry"]["regions"]["primary-region"] == "MAINT",
        15,
        "the entry point leaving the primary region",
    )
    # That connection was cut at the failover: a write on it would have gone to the primary
    # region's database, which no longer takes the writes (when the promotion outlasts the
    # frontend's keep-alive, the frontend closed it first: either way, nothing lands there).
    try:
        r = http.post(
            f"{entry_url}/v1/requests",
            json={"provider": "gdrive", "document": "doc-001.txt", "instruction": "late"},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
            timeout=10,
        )
        late = r.json().get("request_id") if r.status_code in (200, 201, 202) else None
    except requests.ConnectionError:
        late = None
    assert late is None or not query(
        primary["urls"]["write"], "SELECT 1 FROM requests WHERE request_id = %s", (late,)
    ), "a write through the entry point reached the primary region after the failover"
    # Its services start once it takes writes; the phone's token and request are good there.
    promoted = wait_healthy(standby, 240)
    serving_s = time.monotonic() - began
    print(
        f"standby up {up_s:.1f} s; row seen {seen_after * 1000:.0f} ms after its commit; "
        f"write lag {lag * 1000:.0f} ms; "
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

    # The global entry point: once the region is promoted and serves, the phones are sent
    # there for good, though the primary region still serves too (its database is no longer
    # the one that takes the writes: sending phones back would split them).
    entry = promoted["region"]["global_entry"]
    assert entry["failed_over"], entry
    assert entry["regions"]["primary-region"] == "MAINT", entry
    assert entry["url"] == entry_url
    auth = {"Authorization": f"Bearer {token}"}

    def submit_through_the_entry() -> str | None:
        try:
            r = http.post(
                f"{entry['url']}/v1/requests",
                json={"provider": "gdrive", "document": "doc-001.txt", "instruction": "away"},
                headers={**auth, "Idempotency-Key": uuid.uuid4().hex},
                timeout=10,
            )
        except requests.ConnectionError:
            return None  # its check has not seen the region serve yet
        return str(r.json()["request_id"]) if r.status_code in (200, 201, 202) else None

    def stored_in(status: dict, rid: str) -> bool:
        sql = "SELECT 1 FROM requests WHERE request_id = %s"
        return bool(query(status["urls"]["write"], sql, (rid,)))

    moved = poll(submit_through_the_entry, 30, "a submit through the entry point")
    assert stored_in(promoted, moved)
    assert not stored_in(primary, moved)

    # Restarted, the promoted region comes back as it was: promoted, serving, without asking
    # anything of the primary region.
    standby.down()
    standby.up(timeout_s=240)
    again_up = wait_healthy(standby, 120)
    assert again_up["region"]["role"] == "promoted"
    r = http.get(f"{again_up['urls']['https']}/v1/requests/{moved}", headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    # And its entry point still sends the phones to it (no failback by a restart).
    assert again_up["region"]["global_entry"]["regions"]["primary-region"] == "MAINT"
    after_restart = poll(submit_through_the_entry, 30, "a submit after the restart")
    assert stored_in(again_up, after_restart)
