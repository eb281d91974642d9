"""What every chaos activity shares: its settings, the run folder, the environment, the fault
journal, and the one restore that puts everything back.

Chaos Toolkit runs an experiment's activities in one Python process, but the state an activity
leaves (a fault injected, the fleet started) is also written to the run folder, so `cwh chaos`,
the safety control and a later `cwh chaos stop` see it from other processes.

Activities take Chaos Toolkit's `configuration` and turn it into a `ChaosSettings` with
`settings_of`; everything here takes that object.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from env.configs import cluster_name
from env.local import LocalEnvironment
from env.settings import EnvSettings
from experiments.pg_failover import wait_healthy
from experiments.settings import ChaosSettings, Configuration, new_run_dir
from slo.sources import Prometheus

log = logging.getLogger("cwh.chaos")

ROOT = Path(__file__).resolve().parent.parent
#: Debian's PATH for a login shell of root: where the fleet finds anything it runs.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Knob values of a service that injects nothing: the whole of `reference_impl.knobs.Knobs`'
#: defaults, sent whole (a knob left out would stay as it was) and expected back exactly.
CLEAN_KNOBS: dict[str, Any] = {
    "latency_ms": 0.0,
    "latency_dist": "fixed",
    "error_rate": 0.0,
    "rate_429": 0.0,
    "retry_after_s": 1.0,
    "outage": False,
    "malformed_rate": 0.0,
}
#: The services (status `kind`) with `/admin/planted`: every one of the reference system.
SERVICE_ROLES = ("llm", "sharepoint", "gdrive", "gateway", "api", "hub", "worker", "scheduler")
KNOB_SERVICES = ("llm", "sharepoint", "gdrive")

#: The run folder of a bare `chaos run` (no `cwh_chaos_run_dir`): chosen once per process, by
#: the safety control (named after the experiment) or else the first activity, so every
#: activity of the experiment writes to the same one.
_bare_run_dir: list[Path] = []


def bare_run_dir(name: str = "") -> Path:
    """This process's run folder when the configuration names none."""
    if not _bare_run_dir:
        _bare_run_dir.append(new_run_dir(name))
    return _bare_run_dir[0]


def settings_of(configuration: Configuration | None) -> ChaosSettings:
    """The settings of an activity, from the `configuration` Chaos Toolkit passed it."""
    return ChaosSettings.from_configuration(configuration, default_run_dir=bare_run_dir())


def environment(s: ChaosSettings) -> LocalEnvironment:
    return LocalEnvironment(s.env)


@dataclass(frozen=True)
class FaultApi:
    """The Toxiproxy API experiments drive: the local fault proxy (or `CWH_TOXIPROXY_URL`),
    or on the kubernetes runtime the in-cluster Toxiproxy through the API server's service
    proxy, with the session that authenticates there.

    Attributes:
        url: the API's root, no trailing slash.
        session: what requests go through.
        names: a proxy's name in the experiments (the local environment's) -> its name on
            this Toxiproxy, where they differ.
    """

    url: str
    session: requests.Session = field(default_factory=requests.Session)
    names: Mapping[str, str] = field(default_factory=dict)

    def proxy_url(self, proxy: str) -> str:
        return f"{self.url}/proxies/{self.names.get(proxy, proxy)}"


#: The in-cluster Toxiproxy (`deploy/base/toxiproxy.yaml`): its Service, API port, and the
#: proxies it names otherwise than the local environment.
KUBE_TOXIPROXY = ("toxiproxy", 8474)
KUBE_PROXY_NAMES = {"postgres-write": "pg-write", "postgres-read": "pg-read"}
#: The in-cluster Prometheus (`deploy/base/prometheus.yaml`): its Service and port.
KUBE_PROMETHEUS = ("prometheus", 9090)


def fault_api(s: ChaosSettings) -> FaultApi:
    """The Toxiproxy API of the runtime."""
    if s.env.runtime != "kubernetes":
        return FaultApi(s.env.fault_api_url)
    from experiments.kube.api import connect

    kube = connect(s.env)
    return FaultApi(kube.service_url(*KUBE_TOXIPROXY), kube.session(), KUBE_PROXY_NAMES)


def prometheus(env: EnvSettings) -> Prometheus:
    """The environment's Prometheus (on the kubernetes runtime: the in-cluster one, through
    the API server's service proxy)."""
    if env.runtime != "kubernetes":
        return Prometheus(LocalEnvironment(env).state().urls["prometheus"])
    from experiments.kube.api import connect

    kube = connect(env)
    return Prometheus(kube.service_url(*KUBE_PROMETHEUS), session=kube.session())


def child_environ(env: EnvSettings, **extra: str) -> dict[str, str]:
    """The whole environment of a `cwh` child process (the fleet): the settings as `CWH_*`
    variables (its edge), this interpreter's folder on the PATH, the project importable, and
    `extra`; nothing inherited, so what the child does depends on the configuration alone."""
    return {
        "PATH": f"{Path(sys.executable).parent}:{DEFAULT_PATH}",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        **env.to_environ(),
        **extra,
    }


def service_metric(s: ChaosSettings, component: str, name: str, /, **labels: str) -> float:
    """The sum of a service's samples `name` whose labels include `labels` (0 when none)."""
    return scrape_sum(environment(s).component(component)["ports"]["http"], name, **labels)


def scrape_sum(port: int, name: str, /, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels`, from 127.0.0.1:port."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return metric_sum(text, name, **labels)


def metric_sum(text: str, name: str, /, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels`, in a `/metrics` text."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def stop_file(env: EnvSettings) -> Path:
    """`cwh chaos stop` creates it; the safety control of any running experiment sees it."""
    return env.run_dir / "chaos-stop"


def running_dir(env: EnvSettings) -> Path:
    """One file per running experiment (named by its pid, holding its run folder)."""
    return env.run_dir / "chaos-running"


def run_dir(s: ChaosSettings) -> Path:
    """The run folder, created when it does not exist yet."""
    s.run_dir.mkdir(parents=True, exist_ok=True)
    return s.run_dir


def faults_path(s: ChaosSettings) -> Path:
    return s.run_dir / "faults.jsonl"


def mark(s: ChaosSettings, event: str, fault: str, /, **detail: Any) -> dict[str, Any]:
    """Append to the fault journal: `inject` (the clock RTO counts from) or `restore`."""
    entry = {"event": event, "fault": fault, "wall": time.time(), **detail}
    with open(run_dir(s) / "faults.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    log.info("fault %s: %s %s", event, fault, detail)
    return entry


def fault_journal(s: ChaosSettings) -> list[dict[str, Any]]:
    path = faults_path(s)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def open_faults(s: ChaosSettings) -> list[dict[str, Any]]:
    """Faults injected and not yet restored, oldest first."""
    journal = fault_journal(s)
    restored = {e["fault"] for e in journal if e["event"] == "restore"}
    return [e for e in journal if e["event"] == "inject" and e["fault"] not in restored]


def restore_all(s: ChaosSettings, wait_s: float = 120, stop_fleet: bool = False) -> dict[str, Any]:
    """Undo every fault this harness can inject, whatever happened: (the fleet stopped, when
    `stop_fleet`), a scaling experiment's CPU pressure stopped, toxics removed and proxies
    enabled, a lost region started again (its second region removed), a lost PostgreSQL cluster
    restored from the backups, held components released,
    service knobs and planted faults back to their defaults, open faults closed in the journal;
    then wait for full health. Idempotent, and safe to call when nothing was injected.

    Every step runs whatever the others did (best effort): one that fails is recorded under
    `errors` (step -> what went wrong) and logged, never raised. `healthy` is the environment's
    health at the end (False when it could not be established). On the kubernetes runtime,
    the steps of `experiments.kube.health.restore_steps`."""
    steps = _kube_steps(s) if s.env.runtime == "kubernetes" else _local_steps(s)
    if stop_fleet:
        steps.insert(0, ("fleet_stopped", lambda: _stop_fleet(s)))
    if wait_s > 0:
        steps.append(("healthy", lambda: _wait_whole(s, wait_s)))
    return _run_steps(steps)


def _local_steps(s: ChaosSettings) -> list[tuple[str, Callable[[], Any]]]:
    """`restore_all`'s steps on the local and containers runtimes."""
    env = environment(s)
    return [
        ("pressure_stopped", lambda: _stop_pressure(s)),
        # Before anything that asks the environment: after a region loss nothing of it runs.
        ("region_restored", lambda: _restore_lost_region(s)),
        ("toxics_reset", lambda: reset_toxics(fault_api(s) if s.env.fault_proxy else None)),
        # Partitions healed, frozen containers thawed, limits put back (containers runtime).
        ("containers_restored", lambda: _restore_containers(s)),
        ("cluster_restored", lambda: _restore_lost_cluster(env)),
        ("released", lambda: _release_held(env)),
        ("knobs_reset", lambda: _reset_service_admin(env, "knobs")),
        ("planted_reset", lambda: _reset_service_admin(env, "planted")),
        ("faults_closed", lambda: close_open_faults(s)),
    ]


def _kube_steps(s: ChaosSettings) -> list[tuple[str, Callable[[], Any]]]:
    from experiments.kube.health import restore_steps

    return restore_steps(s)


def _run_steps(steps: list[tuple[str, Callable[[], Any]]]) -> dict[str, Any]:
    done: dict[str, Any] = {"errors": {}}
    interrupted: KeyboardInterrupt | None = None
    for name, step in steps:
        if interrupted is not None and name == "healthy":
            break  # undone what it could; waiting for health is what Ctrl-C asked to skip
        try:
            done[name] = step()
        except KeyboardInterrupt as exc:
            # Ctrl-C in the middle of a restore: the remaining steps still run (each undoes a
            # fault), then the interrupt goes on to the caller.
            interrupted = exc
            done[name] = None
            done["errors"][name] = "interrupted (Ctrl-C)"
            log.error("restore step %s interrupted; the others still run", name)
        except Exception as exc:  # best effort: the next step runs whatever this one did
            done[name] = None
            done["errors"][name] = f"{type(exc).__name__}: {exc}"
            log.error("restore step %s failed: %s", name, exc)
    done["healthy"] = done.get("healthy") is True
    if interrupted is not None:
        raise interrupted
    return done


def _stop_pressure(s: ChaosSettings) -> dict[str, Any]:
    """The CPU pressure of a scaling experiment, stopped (nothing when none runs)."""
    from experiments.activities.scaling.actions import stop_pressure

    return stop_pressure(configuration=s.to_configuration())


def _stop_fleet(s: ChaosSettings) -> dict[str, Any]:
    from experiments.activities.fleet.actions import stop_fleet

    return stop_fleet(interrupt=True, timeout_s=120, configuration=s.to_configuration())


def _restore_lost_region(s: ChaosSettings) -> dict[str, Any] | None:
    """After a region-loss drill (its second region recorded in the run folder, or in the
    environment's run directory while its restore has not run): the primary region started
    again and the second region removed; None when there was none."""
    from experiments.activities.region.actions import restore_primary_region, second_region

    if second_region(s) is None:
        return None
    return restore_primary_region(configuration=s.to_configuration())


def _restore_lost_cluster(env: LocalEnvironment) -> str | None:
    """When every member's data is gone (a disaster drill stopped before its restore), restore
    the cluster from the repository: released, the members would wait forever for a leader to
    bootstrap from. The backup restored, or None when nothing was lost."""
    from env.restore import cluster_lost, restore_cluster

    if not cluster_lost(env):
        return None
    return str(restore_cluster(env)["backup"])


def _restore_containers(s: ChaosSettings) -> dict[str, list[str]] | None:
    env = environment(s).settings  # the runtime it really runs on, whatever was asked
    if env.runtime != "containers":
        return None
    from env import containers

    return containers.restore_faults(env)


def reset_toxics(api: FaultApi | None) -> bool | None:
    """Every toxic removed and every proxy enabled, verified; None without a fault proxy."""
    if api is None:
        return None
    api.session.post(f"{api.url}/reset", timeout=5).raise_for_status()
    proxies = api.session.get(f"{api.url}/proxies", timeout=5).json()
    dirty = [n for n, p in proxies.items() if p.get("toxics") or not p.get("enabled", True)]
    if dirty:
        raise RuntimeError(f"still toxic or disabled after the reset: {', '.join(dirty)}")
    return True


def _release_held(env: LocalEnvironment) -> list[str]:
    """Release every held component (each tried, whatever the others did)."""
    sup = env.supervisor_status()
    if sup is None:
        raise RuntimeError("the supervisor does not answer")
    released, failed = [], []
    for comp in sup.get("components", []):
        if comp.get("held_for_s"):
            try:
                env.release(comp["name"])
                released.append(comp["name"])
            except (RuntimeError, requests.RequestException) as exc:
                failed.append(f"{comp['name']} ({exc})")
    if failed:
        raise RuntimeError(f"not released: {', '.join(failed)}")
    return released


def _reset_service_admin(env: LocalEnvironment, what: str) -> list[str]:
    """Each service's `/admin/knobs` (the fault emulators) or `/admin/planted` (every
    service) back to its whole default, and the answer checked to be exactly that default.
    A service where planted faults are off (403) has nothing to reset."""
    services = KNOB_SERVICES if what == "knobs" else SERVICE_ROLES
    body: dict[str, Any] = CLEAN_KNOBS if what == "knobs" else {"reset": True}
    done, failed = [], []
    for comp in env.state().components:
        port = comp.ports.get("http")
        if comp.kind not in services or not port:
            continue
        try:
            resp = requests.post(f"http://127.0.0.1:{port}/admin/{what}", json=body, timeout=5)
            if what == "planted" and resp.status_code == 403:
                continue
            resp.raise_for_status()
            if not (_clean_knobs if what == "knobs" else _clean_planted)(resp.json()):
                raise RuntimeError(f"answered {resp.text.strip()}")
            done.append(comp.name)
        except (RuntimeError, ValueError, requests.RequestException) as exc:
            failed.append(f"{comp.name} ({exc})")
    if failed:
        raise RuntimeError(f"{what} not reset: {'; '.join(failed)}")
    return done


def _clean_knobs(answer: Any) -> bool:
    return bool(answer == CLEAN_KNOBS)


def _clean_planted(answer: Any) -> bool:
    """Nothing armed, nothing on record, no loop wedged, no memory leaking or held."""
    return (
        isinstance(answer, dict)
        and not any(answer.get("armed", {}).values())
        and not any(answer.get("planted", {}).values())
        and not answer.get("wedge_loop")
        and not answer.get("leak_mb_per_s")
        and not answer.get("leaked_mb")
    )


def close_open_faults(s: ChaosSettings) -> list[str]:
    closed = [f["fault"] for f in open_faults(s)]
    for fault in closed:
        mark(s, "restore", fault, by="restore_all")
    return closed


def _wait_whole(s: ChaosSettings, wait_s: float) -> bool:
    if s.env.runtime == "kubernetes":
        from experiments.kube.health import wait_whole

        return wait_whole(s, wait_s)
    env = environment(s)
    try:
        return wait_healthy(env, wait_s / 2).healthy
    except TimeoutError:
        # A member whose history diverged (promoted, then lost to an older primary that came
        # back) never streams again by itself: clone it afresh from the primary.
        reinitialize_stuck_members(env)
        clear_stale_sync_key(env)
        return wait_healthy(env, wait_s).healthy


def clear_stale_sync_key(env: LocalEnvironment) -> dict[str, Any] | None:
    """Delete Patroni's `/sync` key when it names a leader that is no longer the primary.

    After a cascade, Patroni 3.0.2 was seen looping on "Synchronous replication key updated
    by someone else" with the key still naming the interim leader: no member was ever marked
    synchronous again. Without the key the leader writes a fresh one on its next loop.
    """
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
    primary = env.state().primary
    if primary is None or value.get("leader") == primary:
        return None
    deleted = requests.post(f"{url}/deleterange", json={"key": b64}, headers=auth, timeout=5)
    deleted.raise_for_status()
    log.warning("deleted a stale %s naming %s (primary: %s)", key, value.get("leader"), primary)
    return {"key": key, "was": value, "primary": primary}


def reinitialize_stuck_members(env: LocalEnvironment) -> list[str]:
    """Patroni's `POST /reinitialize` on every unhealthy non-primary PostgreSQL member while a
    primary serves; returns their names."""
    rows = env.state().of_kind("postgresql")
    if not any(r.role == "primary" and r.healthy for r in rows):
        return []
    out = []
    for r in rows:
        if r.role != "primary" and not r.healthy and r.ports.get("patroni"):
            resp = requests.post(
                f"http://127.0.0.1:{r.port('patroni')}/reinitialize",
                json={"force": True},
                auth=env.patroni_auth(),
                timeout=10,
            )
            log.warning("reinitialize %s: %s %s", r.name, resp.status_code, resp.text)
            out.append(r.name)
    return out
