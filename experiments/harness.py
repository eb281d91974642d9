"""What every chaos activity shares: the run folder, the environment, the fault journal, and the
one restore that puts everything back.

Chaos Toolkit runs an experiment's activities in one Python process, but the state an activity
leaves (a fault injected, the fleet started) is also written to the run folder, so `cwh chaos`,
the safety control and a later `cwh chaos stop` see it from other processes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from env.configs import cluster_name
from env.local import LocalEnvironment
from env.settings import EnvSettings
from experiments.pg_failover import wait_healthy

log = logging.getLogger("cwh.chaos")

RUN_DIR_VAR = "CWH_CHAOS_RUN_DIR"
#: Knob values of a service that injects nothing (reference_impl.knobs.Knobs' defaults).
CLEAN_KNOBS = {"latency_ms": 0, "error_rate": 0, "rate_429": 0, "outage": False}
KNOB_SERVICES = ("llm", "sharepoint", "gdrive")


def settings() -> EnvSettings:
    return EnvSettings.from_environ()


def environment() -> LocalEnvironment:
    return LocalEnvironment(settings())


def service_metric(component: str, name: str, **labels: str) -> float:
    """The sum of a service's samples `name` whose labels include `labels` (0 when none)."""
    return scrape_sum(environment().component(component)["ports"]["http"], name, **labels)


def scrape_sum(port: int, name: str, /, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels`, from 127.0.0.1:port."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def stop_file() -> Path:
    """`cwh chaos stop` creates it; the safety control of any running experiment sees it."""
    return settings().run_dir / "chaos-stop"


def run_dir() -> Path:
    """The run folder: `CWH_CHAOS_RUN_DIR` (set by `cwh chaos run` or the harness control),
    else a new `reports/<UTC>-chaos` folder for a bare `chaos run`."""
    if not os.environ.get(RUN_DIR_VAR):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        os.environ[RUN_DIR_VAR] = str(Path("reports", f"{stamp}-chaos").resolve())
    path = Path(os.environ[RUN_DIR_VAR])
    path.mkdir(parents=True, exist_ok=True)
    return path


def faults_path() -> Path:
    return run_dir() / "faults.jsonl"


def mark(event: str, fault: str, **detail: Any) -> dict[str, Any]:
    """Append to the fault journal: `inject` (the clock RTO counts from) or `restore`."""
    entry = {"event": event, "fault": fault, "wall": time.time(), **detail}
    with open(faults_path(), "a") as f:
        f.write(json.dumps(entry) + "\n")
    log.info("fault %s: %s %s", event, fault, detail)
    return entry


def fault_journal() -> list[dict[str, Any]]:
    path = faults_path()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def open_faults() -> list[dict[str, Any]]:
    """Faults injected and not yet restored, oldest first."""
    restored = {e["fault"] for e in fault_journal() if e["event"] == "restore"}
    return [e for e in fault_journal() if e["event"] == "inject" and e["fault"] not in restored]


def restore_all(wait_s: float = 120) -> dict[str, Any]:
    """Undo every fault this harness can inject, whatever happened: toxics removed and proxies
    enabled, held components released, service knobs clean; then wait for full health.
    Idempotent, and safe to call when nothing was injected."""
    env = environment()
    s = env.settings
    done: dict[str, Any] = {"toxics_reset": False, "released": [], "knobs_reset": []}
    if s.fault_proxy:
        try:
            done["toxics_reset"] = requests.post(f"{s.fault_api_url}/reset", timeout=5).ok
        except requests.RequestException as exc:
            log.warning("fault proxy reset failed: %s", exc)
    sup = env.supervisor_status() or {}
    for comp in sup.get("components", []):
        if comp.get("held_for_s"):
            env.release(comp["name"])
            done["released"].append(comp["name"])
    status = env.status()
    for comp in status["components"]:
        if comp["component"] in KNOB_SERVICES and comp["ports"].get("http"):
            url = f"http://127.0.0.1:{comp['ports']['http']}/admin/knobs"
            try:
                requests.post(url, json=CLEAN_KNOBS, timeout=5)
                done["knobs_reset"].append(comp["component"])
            except requests.RequestException as exc:
                log.warning("knobs of %s not reset: %s", comp["component"], exc)
    for fault in open_faults():
        mark("restore", fault["fault"], by="restore_all")
    if wait_s > 0:
        try:
            done["healthy"] = bool(wait_healthy(env, wait_s / 2)["healthy"])
        except TimeoutError:
            # A member whose history diverged (promoted, then lost to an older primary that
            # came back) never streams again by itself: clone it afresh from the primary.
            done["reinitialized"] = reinitialize_stuck_members()
            done["stale_sync_key"] = clear_stale_sync_key()
            done["healthy"] = bool(wait_healthy(env, wait_s)["healthy"])
    return done


def clear_stale_sync_key() -> dict[str, Any] | None:
    """Delete Patroni's `/sync` key when it names a leader that is no longer the primary.

    After a cascade, Patroni 3.0.2 was seen looping on "Synchronous replication key updated
    by someone else" with the key still naming the interim leader: no member was ever marked
    synchronous again. Without the key the leader writes a fresh one on its next loop.
    """
    env = environment()
    s = env.settings
    key = f"/service/{cluster_name(s)}/sync"
    url = f"http://127.0.0.1:{s.ports.etcd_client}/v3/kv"
    b64 = base64.b64encode(key.encode()).decode()
    auth = {"Authorization": env.etcd_token()}
    found = requests.post(f"{url}/range", json={"key": b64}, headers=auth, timeout=5).json()
    kvs = found.get("kvs", [])
    if not kvs:
        return None
    value = json.loads(base64.b64decode(kvs[0]["value"]))
    primary = env.status()["primary"]
    if primary is None or value.get("leader") == primary:
        return None
    deleted = requests.post(f"{url}/deleterange", json={"key": b64}, headers=auth, timeout=5)
    deleted.raise_for_status()
    log.warning("deleted a stale %s naming %s (primary: %s)", key, value.get("leader"), primary)
    return {"key": key, "was": value, "primary": primary}


def reinitialize_stuck_members() -> list[str]:
    """Patroni's `POST /reinitialize` on every unhealthy non-primary PostgreSQL member while a
    primary serves; returns their names."""
    env = environment()
    status = env.status()
    rows = [c for c in status["components"] if c["kind"] == "postgresql"]
    if not any(r["role"] == "primary" and r["healthy"] for r in rows):
        return []
    out = []
    for r in rows:
        if r["role"] != "primary" and not r["healthy"] and r["ports"].get("patroni"):
            resp = requests.post(
                f"http://127.0.0.1:{r['ports']['patroni']}/reinitialize",
                json={"force": True},
                auth=env.patroni_auth(),
                timeout=10,
            )
            log.warning("reinitialize %s: %s %s", r["component"], resp.status_code, resp.text)
            out.append(r["component"])
    return out
