"""The harness's accuracy, measured: faults planted in the reference system in known numbers
(`reference_impl/planted.py`) must come out of a fleet run as exactly those numbers, the very
requests and keys the services say they planted, with the RPO their acknowledgements imply;
also across a PostgreSQL failover."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from env.local import LocalEnvironment
from experiments.pg_failover import KILL_POSTGRES
from slo.ledger import read_jsonl
from slo.recovery import recovery_report
from tests.helpers import finish_fleet, fleet, poll, port_of, served_after, wait_healthy

pytestmark = [pytest.mark.env, pytest.mark.fault]

#: Planted at least this many of each kind per run.
N = 3
#: Armed per replica: more than N / replicas, as a phone sticks to one API replica (cookie).
PER_REPLICA = 2
FAULTS = {"api": ("lose_acks", "duplicate_keys"), "worker": ("swallow_notifications",)}


def planted(status: dict[str, Any], component: str, body: dict[str, Any] | None = None) -> Any:
    url = f"http://127.0.0.1:{port_of(status, component)}/admin/planted"
    resp = requests.post(url, json=body, timeout=5) if body else requests.get(url, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def replicas(status: dict[str, Any]) -> dict[str, str]:
    """component -> its role, for the roles that plant."""
    return {c["component"]: c["kind"] for c in status["components"] if c["kind"] in FAULTS}


def records(status: dict[str, Any]) -> dict[str, list[str]]:
    """fault -> every id the services planted it on (request ids, idempotency keys)."""
    out: dict[str, list[str]] = {f: [] for faults in FAULTS.values() for f in faults}
    for name in replicas(status):
        for fault, ids in planted(status, name)["planted"].items():
            if fault in out:
                out[fault] += ids
    return out


def plant_during(
    status: dict[str, Any], run: Callable[[], Any], then: Callable[[], None] = lambda: None
) -> tuple[Any, dict[str, list[str]]]:
    """Arm every replica, run the fleet (`run`) meanwhile; once at least N of each kind were
    planted, disarm (the record stays) and call `then` while the fleet still runs."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(run=run()))
    for name, role in replicas(status).items():
        planted(status, name, {"reset": True})
        planted(status, name, dict.fromkeys(FAULTS[role], PER_REPLICA))
    thread.start()
    try:
        poll(
            lambda: all(len(ids) >= N for ids in records(status).values()) or not thread.is_alive(),
            150,
            f"{N} of each fault planted",
            interval_s=0.5,
        )
        for name in replicas(status):
            planted(status, name, {"disarm": True})
        found = records(status)
        assert all(len(ids) >= N for ids in found.values()), found
        then()
    finally:
        thread.join(timeout=400)
        for name in replicas(status):
            planted(status, name, {"reset": True})
    return result["run"], found


@pytest.fixture
def retrying_phones() -> Iterator[None]:
    """Phones that retry a third of their acknowledged submits with the same key (what the
    planted duplicates need) and never go offline (no replays to blur the count)."""
    saved = {k: os.environ.get(k) for k in ("CWH_RESUBMIT_CHANCE", "CWH_OFFLINE_CHANCE")}
    os.environ.update(CWH_RESUBMIT_CHANCE="0.3", CWH_OFFLINE_CHANCE="0")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def acked_walls(out: Path) -> dict[str, float]:
    """request id -> when its acknowledgement arrived (wall clock), from the ledger."""
    walls: dict[str, float] = {}
    for op in read_jsonl(out / "ledger.jsonl"):
        if op.kind == "submit" and op.outcome == "ok" and op.detail:
            walls.setdefault(op.detail["request_id"], op.invoked_wall + op.latency_s)
    return walls


def assert_exactly_what_was_planted(rec: dict[str, Any], found: dict[str, list[str]]) -> None:
    assert rec["unknown"] == 0, rec
    assert (rec["lost"], sorted(rec["lost_ids"])) == (
        len(found["lose_acks"]),
        sorted(found["lose_acks"]),
    ), rec
    assert (rec["duplicated"], sorted(rec["duplicated_keys"])) == (
        len(found["duplicate_keys"]),
        sorted(found["duplicate_keys"]),
    ), rec
    assert (rec["never_notified"], sorted(rec["never_notified_ids"])) == (
        len(found["swallow_notifications"]),
        sorted(found["swallow_notifications"]),
    ), rec


@pytest.mark.usefixtures("retrying_phones")
def test_a_fleet_reports_exactly_the_planted_faults(local_env: LocalEnvironment, tmp_path):
    status = wait_healthy(local_env)

    def finish() -> None:
        # Every fault planted: the fleet has done its part (its phones stop gracefully, so
        # every acknowledgement in flight still reaches its phone).
        finish_fleet(tmp_path, "every fault planted")

    (code, out, summary), found = plant_during(
        status, lambda: fleet(status, tmp_path, users=10, duration_s=75), then=finish
    )
    rec = summary["reconciliation"]
    assert_exactly_what_was_planted(rec, found)
    # RPO of a run without faults: the oldest lost acknowledgement, to the end of the run.
    acked = acked_walls(out)
    expected = summary["window"]["end"] - min(acked[r] for r in found["lose_acks"])
    assert rec["rpo_s"] == round(expected, 3)
    assert summary["verdict"] == "fail"
    assert code == 1


@pytest.mark.usefixtures("retrying_phones")
def test_planted_faults_are_counted_exactly_across_a_failover(
    local_env: LocalEnvironment, tmp_path
):
    status = wait_healthy(local_env)
    fault: dict[str, Any] = {}

    def failover() -> None:
        time.sleep(1)  # the last planted acknowledgements reach their phones first
        fault["wall"] = time.time()
        killed = KILL_POSTGRES.inject(local_env, local_env.state())
        poll(
            lambda: KILL_POSTGRES.took_effect(killed, local_env.state()),
            local_env.settings.timeout(60),
            "a new primary serves",
            interval_s=0.2,
        )
        fault["killed"] = killed
        # Phones keep working well after the failover, then the fleet finishes (120 s bound).
        finish_fleet(
            tmp_path, "phones served 20 s after the failover", served_after(fault["wall"] + 20)
        )

    (_, out, summary), found = plant_during(
        status, lambda: fleet(status, tmp_path, users=10, duration_s=120), then=failover
    )
    ops = read_jsonl(out / "ledger.jsonl")
    # The failover happened under load: phones kept working well after it.
    assert max(o.invoked_wall for o in ops) > fault["wall"] + 15
    rec = summary["reconciliation"]
    assert_exactly_what_was_planted(rec, found)
    # The RPO the planted losses imply: each acknowledgement to the fault that came next.
    report = recovery_report(ops, fault["wall"], rec, events=[fault["wall"]])
    acked = acked_walls(out)
    expected = fault["wall"] - min(acked[r] for r in found["lose_acks"])
    assert report["rpo_s"]["max"] == round(expected, 3)
    assert report["lost"] == len(found["lose_acks"])
    wait_healthy(local_env, timeout_s=120)
