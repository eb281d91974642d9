"""The API's autoscaler end to end: a ramp of CPU pressure takes the API above 3 replicas and,
once it stops, back to 3; the autoscaling SLOs read it from Prometheus and pass; the same data
judged with a wrong threshold, or with the seed's 5-minute window against the session's short
one, fails them.

The session's HPA specs are `deploy/base/`'s with 60 s scale-down windows (`tests/conftest.py`),
so the way back takes a minute or two, not the five minutes the shipped spec waits.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from env.local import LocalEnvironment
from env.process import DeadlineExceeded
from scenarios.pressure import InBackground, ramp
from slo.definitions import DEFAULT_DIR
from slo.sources import Window
from tests.conftest import FAST_SCALE_DOWN_WINDOW_S
from tests.helpers import gate, poll, wait_healthy

pytestmark = pytest.mark.env

SCALING_SLOS = (
    "api-replicas-min",
    "api-replicas-max",
    "api-replicas-available",
    "api-scale-up-reaction",
    "api-scale-down-stabilized",
    "api-no-flapping",
)
#: Reads per second at the top of the ramp: well past what three replicas serve below the
#: HPA's 77 % (70 % and its tolerance) of their 200m request. A read costs 1.7-3 ms of CPU
#: here, from run to run: 160 a second once took three replicas to 79 %, 250 another time to
#: only 66-74 %, within the tolerance, and the HPA rightly never acted (CI), or crossed it
#: back and forth. 400 puts three replicas at 110 % and more, and a size within the band
#: exists for any cost in that range.
PEAK = 400.0
#: Pressure is kept on until the HPA has made no change for this long (at most MAX_HOLD_S):
#: after its last reaction (and the wrong check's SETTLE_S) the workload runs at its new size,
#: above a 20 % threshold all along, for longer than `api-scale-up-reaction`'s 60 s bound, with
#: 25 s to spare for the new replica's readiness and a scrape.
QUIET_S, MAX_HOLD_S = 90, 420
#: The wrong threshold's check starts a new episode this long after a reaction (the shipped
#: 30 s is for a new replica's load to show in the metric; at 20 % there is no doubt).
SETTLE_S = 5


CURRENT = 'kube_horizontalpodautoscaler_status_current_replicas{horizontalpodautoscaler="api"}'


def api_replicas(env: LocalEnvironment) -> int:
    view = env.workloads()
    return len(next(w for w in view["workloads"] if w["name"] == "api")["replicas"])


def brief(decision: dict[str, Any], t0: float) -> str:
    """One HPA decision in a line: when (s into the test), what, and the metric it read."""
    metrics = "; ".join(
        f"{m['metric']} {m['utilization']}% -> {m['replicas']} {m['note']}".strip()
        for m in decision["metrics"]
    )
    return (
        f"+{decision['at'] - t0:.0f}s {decision['current']}->{decision['desired']}"
        f" ({decision['reason']}; {metrics or 'no metric'})"
    )


def prometheus_has(status: dict[str, Any], t: float) -> bool:
    """Prometheus holds a scrape of the supervisor's kube-state-metrics taken after `t`."""
    r = requests.get(
        f"{status['urls']['prometheus']}/api/v1/query",
        params={"query": f"timestamp({CURRENT})"},
        timeout=5,
    )
    result = r.json()["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) > t


def definitions(out: Path, **changes: str) -> Path:
    """The shipped definitions, with `key: old` -> `key: new` changed in every file that has
    it (`window="5m->20s"` changes `window: 5m` to `window: 20s`)."""
    out.mkdir(parents=True)
    for f in DEFAULT_DIR.glob("*.y*ml"):
        text = f.read_text()
        for key, change in changes.items():
            old, new = change.split("->")
            text = re.sub(rf"(\b{key}: ){re.escape(old)}\b", rf"\g<1>{new}", text)
        (out / f.name).write_text(text)
    return out


def settled_after(out: Path, name: str, seconds: float) -> Path:
    """`out`'s SLO `name` with its scaling check's `settle` set to `seconds`."""
    path = out / f"{name}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["indicator"]["spec"]["thresholdMetric"]["metricSource"]["spec"]["settle"] = seconds
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


# Bounded by its own polls: 150 s out, 420 s settling, 240 s back, then the gate.
@pytest.mark.timeout(1000)
def test_a_ramp_scales_the_api_out_and_back_within_its_slos(
    local_env: LocalEnvironment, tmp_path: Path
):
    status = wait_healthy(local_env)
    assert api_replicas(local_env) == 3
    started = time.time()
    driver = InBackground(
        status["urls"]["https"],
        status["tls_certificate"],
        status.get("registration_secret") or "",
        ramp(PEAK, up_s=30, hold_s=600),
    )
    local_env.autoscale(True)
    try:
        with driver:
            decisions: list[str] = []  # the HPA's distinct decisions, for a failure to show

            def scaled_out() -> int | bool:
                n = api_replicas(local_env)
                if (last := local_env.workloads()["autoscaler"]["api"]["last"]) is not None:
                    seen = brief(last, started)
                    if not decisions or decisions[-1] != seen:
                        decisions.append(seen)
                return n > 3 and n

            try:
                first = poll(scaled_out, 150, "the API scaled out by its HPA", 1.0)
            except DeadlineExceeded as exc:
                raise AssertionError(f"{exc}; its decisions: {decisions[-12:]}") from None
            # The pressure goes on until the HPA has settled (no change for QUIET_S: what a
            # wrong threshold is judged on below), bounded, then stops.
            peak, count, changed = first, first, time.monotonic()
            until = time.monotonic() + MAX_HOLD_S
            seen = [(round(time.time() - started), first)]  # (s into the run, replicas)
            while time.monotonic() < until and time.monotonic() - changed < QUIET_S:
                time.sleep(1.0)  # the load's duration, watched each second; not a synchronization
                if (n := api_replicas(local_env)) != count:
                    count, changed, peak = n, time.monotonic(), max(peak, n)
                    seen.append((round(time.time() - started), n))
            assert time.monotonic() - changed >= QUIET_S, f"the HPA never settled: {seen}"
            scaled_out_at = time.time()  # the pressure stops now (stop() then drains)
            tally = driver.stop()
        # Back to the minimum: the session's 60 s window, then one replica per 10 s.
        poll(lambda: api_replicas(local_env) == 3, 240, "the API back at 3 replicas", 1.0)
        back_at = time.time()
    finally:
        local_env.autoscale(False)
        local_env.scale("api", 3)
    assert tally is not None, "the pressure driver died"
    print(f"pressure: {tally}, peak {peak} replicas")
    assert tally.ok > 0, tally
    # Scaling out and in fails nothing: no error answer. The driver's own timeouts (10 s) may
    # hit a few of the requests it queued on two saturated cores, never more than 0.5 %.
    assert tally.failed == 0, tally
    assert tally.errors <= tally.sent // 200, tally
    assert peak <= 10
    # The way back waited the session's window after the load stopped, less a sync period:
    # the last recommendation the load made may be up to one sync older than its end.
    sync_s = local_env.settings.autoscale_sync_s
    assert back_at - scaled_out_at >= FAST_SCALE_DOWN_WINDOW_S - sync_s
    # The window ends once Prometheus holds a scrape taken after the way back.
    poll(lambda: prometheus_has(status, back_at + 3), 30, "the last samples scraped", 1.0)
    window = Window(started, time.time())

    # The shipped SLOs, with the stabilization window the session's specs use.
    fast = f"5m->{FAST_SCALE_DOWN_WINDOW_S}s"
    # The slack must cover a sync period and a scrape (5 s and 2 s here): a sample of the
    # HPA's metric shows what it saw at its last sync, up to a period earlier (4 s flagged a
    # correct scale-down 20.03 s after a recommendation). And less than half the window, or
    # the look-back [t - 60 + slack, t - slack] would be empty and every scale-down would pass.
    slack = "20s->8s"
    shipped = definitions(tmp_path / "d1", window=fast, slack=slack)
    verdicts = gate(status, window, tmp_path / "right", *SCALING_SLOS, definitions=shipped)
    bad = {n: verdicts[n]["reason"] for n in SCALING_SLOS if verdicts[n]["status"] != "pass"}
    assert not bad, bad
    reaction = verdicts["api-scale-up-reaction"]
    assert reaction["samples"] >= 1, reaction  # an episode was judged, not a vacuous pass
    flaps = verdicts["api-no-flapping"]
    assert flaps["samples"] >= 2, flaps  # up and down were seen

    # A wrong threshold (20 % instead of 70 %): the API "should" have grown long before.
    miss = definitions(tmp_path / "d2", window=fast, slack=slack, threshold="70->20")
    miss = settled_after(miss, "api-scale-up-reaction", SETTLE_S)
    wrong = gate(status, window, tmp_path / "wrong", "api-scale-up-reaction", definitions=miss)
    assert wrong["api-scale-up-reaction"]["status"] == "fail", wrong["api-scale-up-reaction"]
    # The seed's 5-minute window against the session's 60 s one: every scale-down was early.
    seed = gate(status, window, tmp_path / "seed", "api-scale-down-stabilized")
    assert seed["api-scale-down-stabilized"]["status"] == "fail", seed
    wait_healthy(local_env)
