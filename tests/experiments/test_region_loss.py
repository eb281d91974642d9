"""The region-loss drill as users run it (`cwh chaos run dr-region-loss`): a second region is
built beside the environment, the phones use the global entry point, the whole primary region
is SIGKILLed at once; the second region promotes itself after its silence window and takes the
phones; RTO and RPO come from the ledger, and the tail the asynchronous link never carried is
counted in the database's own terms too. The restore leaves the machine as it was: the primary
region back, the second region gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from env.process import pid_alive, processes_of
from tests.experiments.test_chaos import cwh_chaos, injected, load
from tests.helpers import wait_healthy

pytestmark = [pytest.mark.env, pytest.mark.fault, pytest.mark.dr]

#: The cross-region link's delay each way in this test.
LINK_MS = 1000


def test_the_second_region_takes_over_when_the_primary_region_is_lost(local_env, tmp_path):
    before = wait_healthy(local_env)
    supervisor = local_env.supervisor_pid()
    assert supervisor is not None
    # A slow link (1 s each way, the most a region may have): the last second of writes is in
    # flight at the loss, so there is always a tail to measure. Exit 0: the gate passed (RTO,
    # RPO, nothing duplicated, every result notified); the lost tail is the RPO's to bound.
    out = cwh_chaos(
        local_env, tmp_path, "dr-region-loss", fleet_s=120, CWH_CHAOS_LINK_LATENCY_MS=str(LINK_MS)
    )
    (loss,) = injected(out)
    assert loss["fault"] == "lose-region"
    # The region's network went with it: the link's end in the second region was cut, so what
    # was still crossing it is lost (else the link's delay delivers it after the loss).
    assert loss["link_cut"] == "cut", loss
    # The whole region really went: every component of it, its supervisor too (which is why
    # nothing restarted), and a new supervisor brought it back.
    names = {c["component"] for c in before["components"]}
    assert {"pg0", "pg1", "pg2", "haproxy", "pgbouncer", "api1", "hub1"} <= names
    assert names <= set(loss["components"])
    assert loss["processes"] > len(names)
    assert not pid_alive(supervisor)
    assert local_env.supervisor_pid() not in (None, supervisor)

    # The second region promoted itself once the silence had lasted its window, not before.
    failover = load(out, "region-failover.json")
    assert failover["automatic"]
    assert failover["promotion_began_s"] >= failover["failover_after_s"]
    assert failover["timeline"] >= 2
    assert failover["promotion_began_s"] <= failover["promoted_s"] <= failover["serving_s"]
    chaos = load(out, "chaos.json")
    assert chaos["region"]["failover"] == failover
    # The phones recovered through the global entry point, and no write before the promotion
    # can have counted: nothing took writes then.
    assert chaos["recovered"] == {"write": True, "read": True, "notification": True}
    assert failover["promoted_s"] <= chaos["rto_s"]["write"] < 900
    assert chaos["unknown"] == 0
    assert chaos["acknowledged"] > 0
    # The tail, exactly. The WAL in flight: the primary writes every second (the scheduler's
    # heartbeat), and a second of it was on the link.
    assert failover["wal_not_carried_bytes"] > 0, failover
    # Each acknowledged request lost (ledger, read back through the second region) is one the
    # lost region committed and never sent (database against database), and was acknowledged
    # within the link's delay (and its jitter, and the ack's way back) before the loss.
    divergence = chaos["region"]["divergence"]
    assert divergence["committed"] > 0
    lost = load(out, "summary.json")["reconciliation"]["lost_request_ids"]  # all, not 20
    assert len(lost) == chaos["lost"]
    assert set(lost) <= set(divergence["not_carried_ids"])
    assert divergence["not_carried"] >= chaos["lost"]
    if divergence["not_carried"]:
        assert divergence["newest_s_before_loss"] < 3 * LINK_MS / 1000, divergence
    assert chaos["rpo_s"]["max"] < 3 * LINK_MS / 1000
    print(
        f"region loss: promoted at +{failover['promoted_s']} s, serving at "
        f"+{failover['serving_s']} s; RTO write {chaos['rto_s']['write']} s, notification "
        f"{chaos['rto_s']['notification']} s; lost {chaos['lost']} of {chaos['acknowledged']} "
        f"acknowledged (RPO {chaos['rpo_s']['max']} s); {divergence['not_carried']} of "
        f"{divergence['committed']} committed never carried; "
        f"{failover['wal_not_carried_bytes']} bytes of WAL"
    )

    # The machine as the run found it: the second region gone, the primary region whole.
    second = Path(load(out, "journal.json")["run"][0]["output"]["run_dir"])
    assert second.name.endswith("-region2")
    assert not second.exists()
    # ... its logs kept in the run folder first: a clone that never came up is told by them.
    kept = out / "second-region-logs"
    assert (kept / "supervisor.log").exists()
    assert "replica has been created using basebackup" in (kept / "pg0.log").read_text()
    assert processes_of(second) == []
    after = wait_healthy(local_env)
    assert after["region"]["role"] == "primary"
