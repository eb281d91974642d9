"""The local environment as a context manager: native processes under one supervisor.

    with LocalEnvironment(settings) as env:
        status = env.status()

`__enter__` brings everything up (or finds it already up) and stops what it started when start-up
fails; `__exit__` brings it down. `up()` and `down()` are the same steps for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from env import backup, etcd, network, region
from env.configs import PATRONI_REST_USER
from env.failover_timing import PROFILES
from env.files import ensure_run_dir
from env.layout import Layout
from env.process import (
    MARKER,
    DeadlineExceeded,
    check_traversable,
    pid_alive,
    processes_of,
    terminate_then_kill,
)
from env.secrets import Secrets
from env.settings import RUNTIMES, EnvSettings
from env.state import EnvStatus

ProgressFn = Callable[[str, dict[str, Any]], None]


def bindable(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now (a port left in TIME_WAIT by the
    last run is free: servers bind with SO_REUSEADDR, and so does this check)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 now, chosen by the kernel (for a helper process's listener)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def busy_ports(ports: dict[int, str], free: Callable[[int], bool]) -> list[str]:
    """`port (what)` for each of `ports` that `free` says is taken, in port order."""
    return [f"{port} ({what})" for port, what in sorted(ports.items()) if not free(port)]


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> range:
    """The ports the kernel hands outgoing connections (Linux's default 32768-60999 when it
    cannot be read: not Linux)."""
    try:
        low, high = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def reserved_ports(path: Path = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")) -> set[int]:
    """Ports the kernel never hands outgoing connections (`ip_local_reserved_ports`: "8080,
    30000-30100"), the standard way to keep servers' ports inside the ephemeral range safe."""
    try:
        text = path.read_text().strip()
    except OSError:
        return set()
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        with contextlib.suppress(ValueError):
            out |= set(range(int(low), int(high or low) + 1))
    return out


def ephemeral_ports(
    ports: dict[int, str], ephemeral: range, reserved: set[int] | frozenset[int] = frozenset()
) -> list[str]:
    """`port (what)` for each of `ports` inside the kernel's ephemeral range and not reserved,
    in port order. Any outgoing connection may hold such a port when a server needs it: a
    start-up that fails at random (CI saw a Redis bus at 33052 taken so), hence refused."""
    return [
        f"{port} ({what})"
        for port, what in sorted(ports.items())
        if port in ephemeral and port not in reserved
    ]


class EnvironmentStartError(RuntimeError):
    """Start-up failed. `component` names what did not come up, `log` where its log is."""

    def __init__(self, component: str, log: str, reason: str) -> None:
        where = f" (log: {log})" if log else ""
        super().__init__(f"{component} did not come up: {reason}{where}")
        self.component = component
        self.log = log
        self.reason = reason


def adopt_runtime(settings: EnvSettings, layout: Layout) -> EnvSettings:
    """`settings` with the runtime and the failover profile the run directory records (what
    `up` started, until `down` removed it), whatever the caller's `CWH_RUNTIME` and
    `CWH_FAILOVER` say: a status, a `down` or an experiment that took the other runtime would
    number pids wrongly and leave containers behind, and a restore or a report that took the
    other profile would configure or describe timings the environment does not run with."""
    runtime, failover = settings.runtime, settings.failover
    with contextlib.suppress(OSError):
        recorded = layout.runtime_record.read_text().strip()
        # Only the runtime: backups (and the rest) are what was asked, on either runtime.
        runtime = recorded if recorded in RUNTIMES else runtime
    with contextlib.suppress(OSError):
        profile = layout.failover_record.read_text().strip()
        failover = profile if profile in PROFILES else failover
    if (runtime, failover) == (settings.runtime, settings.failover):
        return settings
    return dataclasses.replace(settings, runtime=runtime, failover=failover)


class LocalEnvironment:
    """Starts, inspects and stops the local environment described by `settings`."""

    def __init__(self, settings: EnvSettings, progress: ProgressFn | None = None) -> None:
        #: What was asked for; `settings` is what runs in the run directory (`adopt_runtime`).
        self.requested = settings
        self.layout = Layout(settings.run_dir)
        self.settings = adopt_runtime(settings, self.layout)
        self.progress = progress
        self._admin = f"http://127.0.0.1:{settings.ports.supervisor}"
        # Kept so that the supervisor, our child when we started it, is reaped in `down`.
        self._supervisor_proc: subprocess.Popen[bytes] | None = None

    # ---- the supervisor --------------------------------------------------------------------

    def supervisor_pid(self) -> int | None:
        try:
            pid = int(self.layout.supervisor_pid.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def supervisor_status(self) -> dict[str, Any] | None:
        """The supervisor's `/status`, or None when it does not answer."""
        try:
            resp = requests.get(self._admin + "/status", timeout=2)
        except requests.RequestException:
            return None
        return resp.json() if resp.ok else None

    def _admin_post(
        self, path: str, body: dict[str, Any] | None = None, timeout_s: float = 5.0
    ) -> dict[str, Any]:
        resp = requests.post(self._admin + path, json=body or {}, timeout=timeout_s)
        if not resp.ok:
            raise RuntimeError(f"supervisor {path}: {resp.status_code} {resp.text}")
        result: dict[str, Any] = resp.json()
        return result

    def hold(self, component: str, seconds: float) -> dict[str, Any]:
        """Keep `component` from being restarted for `seconds` (so a kill stays a kill)."""
        return self._admin_post(f"/components/{component}/hold", {"seconds": seconds})

    def release(self, component: str) -> dict[str, Any]:
        """Let the supervisor restart `component` again (at once if it is down)."""
        return self._admin_post(f"/components/{component}/release")

    def workloads(self) -> dict[str, Any]:
        """Every scalable workload (replicas, bounds, budget) and the autoscaler's last
        decisions: the supervisor's `/workloads`."""
        resp = requests.get(self._admin + "/workloads", timeout=5)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def scale(self, workload: str, replicas: int) -> dict[str, Any]:
        """Scale `workload` to `replicas` now, as `kubectl scale` does: new replicas join the
        load balancer once ready, removed ones drain first, the disruption budget holds (the
        result's `refused` says when it stopped a removal). Returns when done."""
        # Adding waits for readiness, removing for a drain: minutes, not seconds.
        timeout = self.settings.timeout(300)
        return self._admin_post(f"/workloads/{workload}/scale", {"replicas": replicas}, timeout)

    def rollout(self, workload: str) -> dict[str, Any]:
        """Replace every replica of `workload` one by one (surge 1, unavailable 0): each new one
        is routed to before an old one drains. Returns when done (`refused`: why it stopped)."""
        n = len(self.workload_replicas(workload))
        timeout = self.settings.timeout(60 + 120 * n)
        return self._admin_post(f"/workloads/{workload}/rollout", None, timeout)

    def workload_replicas(self, workload: str) -> list[str]:
        """The replicas of `workload` running now."""
        for w in self.workloads()["workloads"]:
            if w["name"] == workload:
                return list(w["replicas"])
        raise KeyError(f"no scalable workload {workload!r}")

    def pgbackrest(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """A pgBackRest command on the backup repository host (`env/backup.py`), as the user
        that owns the repository: files it writes must stay that user's."""
        if not self.settings.backups:
            raise RuntimeError("this environment has no backups (CWH_BACKUPS=0)")
        repo = self.layout.backup_repo
        if not repo.exists():
            raise RuntimeError(f"no backup repository at {repo}: is the environment up?")
        owner = repo.stat()
        as_owner = os.geteuid() == 0 and owner.st_uid != 0
        try:
            return subprocess.run(
                backup.repo_command(self.layout, *args),
                capture_output=True,
                text=True,
                timeout=self.settings.timeout(timeout_s),
                cwd=self.layout.backup_dir,
                user=owner.st_uid if as_owner else None,
                group=owner.st_gid if as_owner else None,
                extra_groups=[] if as_owner else None,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"pgbackrest {args[0]} took over {self.settings.timeout(timeout_s):g} s"
            ) from None

    def backup(self, kind: str = "full") -> dict[str, Any]:
        """Take a backup now (`full`, `diff` or `incr`); the repository's newest one back.
        RuntimeError with pgBackRest's reason when it fails (another backup running holds the
        stanza's lock: never two at once)."""
        if kind not in ("full", "diff", "incr"):
            raise ValueError(f"backup type {kind!r}: one of full, diff, incr")
        done = self.pgbackrest("backup", f"--type={kind}", timeout_s=900)
        if done.returncode != 0:
            raise RuntimeError(f"pgbackrest backup: {(done.stdout + done.stderr).strip()}")
        return self.backups()[-1]

    def promote(self) -> dict[str, Any]:
        """Promote this standby region's database (`env.region.promote`): its leader becomes
        a primary on a new timeline. RegionError when it is no standby region."""
        if not self.settings.standby:
            raise region.RegionError(
                f"the environment on {self.settings.base_port} is a primary region "
                "(CWH_STANDBY_OF is not set): nothing to promote"
            )
        return asyncio.run(region.promote(self.settings, Secrets.load(self.layout.secrets)))

    def backups(self) -> list[dict[str, Any]]:
        """The repository's backups, oldest first: label, type, start and stop (epoch s),
        size and size in the repository (bytes), and the WAL range a restore of it needs."""
        done = self.pgbackrest("info", "--output=json")
        if done.returncode != 0:
            raise RuntimeError(f"pgbackrest info: {(done.stdout + done.stderr).strip()}")
        return backup.listing(json.loads(done.stdout))

    def autoscale(self, enabled: bool) -> dict[str, Any]:
        """Switch the local autoscaler on or off (its state and last decisions back)."""
        return self._admin_post("/autoscaler", {"enabled": enabled})

    def etcd_token(self) -> str:
        """A token for etcd's gateway (header `Authorization`): it refuses key-value calls
        without one."""
        return etcd.token(
            self.settings.ports.etcd_client, Secrets.load(self.layout.secrets).etcd_root
        )

    def patroni_auth(self) -> tuple[str, str]:
        """(user, password) for the unsafe endpoints of Patroni's REST API (`/switchover`, ...)."""
        return PATRONI_REST_USER, Secrets.load(self.layout.secrets).patroni_rest

    def reload_prometheus(self, timeout_s: float = 30.0) -> None:
        """Make Prometheus reread its configuration and rules (SIGHUP: its HTTP lifecycle API is
        off, so a web page cannot reload or stop it), and wait until it has.

        Raises:
            RuntimeError: Prometheus is not running, or its reload failed (see its log).
            DeadlineExceeded: no reload within `timeout_s` (scaled).
        """
        pid = self.component("prometheus")["pid"]
        if pid is None:
            raise RuntimeError("prometheus is not running")
        url = f"http://127.0.0.1:{self.settings.ports.prometheus}/metrics"

        def reload_state() -> dict[str, float]:
            text = requests.get(url, timeout=5).text
            return {
                sample.name: sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name.startswith("prometheus_config_last_reload_")
            }

        before = reload_state()["prometheus_config_last_reload_success_timestamp_seconds"]
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + self.settings.timeout(timeout_s)
        while True:
            now = reload_state()
            if now["prometheus_config_last_reload_success_timestamp_seconds"] > before:
                return
            if now["prometheus_config_last_reload_successful"] == 0:
                log = self.layout.log("prometheus")
                raise RuntimeError(f"Prometheus could not reload its configuration (log: {log})")
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"Prometheus did not reload in {timeout_s:.0f} s")
            time.sleep(0.1)

    def component(self, name: str) -> dict[str, Any]:
        status = self.supervisor_status()
        if status is None:
            raise RuntimeError("the supervisor does not answer: is the environment up?")
        for comp in status["components"]:
            if comp["name"] == name:
                result: dict[str, Any] = comp
                return result
        raise KeyError(name)

    # ---- up --------------------------------------------------------------------------------

    def up(self, timeout_s: float = 240.0) -> dict[str, Any]:
        """Bring the environment up, or wait for the one already starting; return its status.

        Raises:
            EnvironmentStartError: a component did not come up; what was started is stopped.
                Also on the kubernetes runtime, which `up` does not start.
        """
        if self.requested.runtime == "kubernetes":
            raise EnvironmentStartError(
                "runtime",
                "",
                "the kubernetes runtime is a cluster the manifests were applied to "
                "(make kind-up, or make staging-chaos): `up` does not start it",
            )
        self._preflight()
        status = self.supervisor_status()
        running = status is not None and status.get("phase") != "stopping"
        if running and self.settings.failover != self.requested.failover:
            raise EnvironmentStartError(
                "failover",
                "",
                f"the environment in {self.settings.run_dir} runs with the "
                f"{self.settings.failover} failover profile, not {self.requested.failover}: "
                "bring it down first (cwh env down); its data is kept, and the next up writes "
                "the new profile's timings into the cluster",
            )
        if not running:
            self.settings = dataclasses.replace(self.settings, failover=self.requested.failover)
        if self.settings.runtime != self.requested.runtime:
            if status is not None and status.get("phase") != "stopping":
                raise EnvironmentStartError(
                    "runtime",
                    "",
                    f"the environment in {self.settings.run_dir} runs on the "
                    f"{self.settings.runtime} runtime, not {self.requested.runtime}: "
                    "bring it down first (cwh env down)",
                )
            self.down()  # what is left of it, removed as its own runtime's
            self.settings = self.requested
            status = None
        if status is None or status.get("phase") == "stopping":
            # A runtime record without a supervisor: it crashed, and containers may be left.
            left = self.layout.runtime_record.exists()
            if status is not None or self.supervisor_pid() is not None or left:
                self.down()
            self._ports_free()
            if network.containers(self.settings):
                self._prepare_containers()
            self._spawn_supervisor()
        deadline = time.monotonic() + self.settings.timeout(timeout_s)
        last_stage = None
        while True:
            status = self.supervisor_status()
            if status is not None:
                if status["stage"] != last_stage and self.progress:
                    self.progress("stage", status)
                last_stage = status["stage"]
                if status["phase"] == "ready":
                    if self.progress:
                        self.progress("ready", status)
                    return status
                if status["phase"] == "failed":
                    break
            elif self.supervisor_pid() is None:
                break  # exited: start-up failed, or it could not even start
            if time.monotonic() >= deadline:
                self.down()
                raise EnvironmentStartError(
                    (status or {}).get("stage") or "supervisor",
                    str(self.layout.log("supervisor")),
                    f"not ready after {self.settings.timeout(timeout_s):.0f} s",
                )
            time.sleep(0.1)  # the supervisor answers from memory: a cheap ask
        self._wait_supervisor_exit(self.settings.timeout(120))
        self.down()
        raise self._startup_error()

    def _prepare_containers(self) -> None:
        """A Docker engine (started here when none answers) and this tree's image (built
        when missing: `env/images.py`), before the supervisor creates the containers."""
        import docker

        from env import containers, engine, images

        def say(message: str) -> None:
            if self.progress:
                self.progress("stage", {"stage": message})

        try:
            if engine.ensure():
                # `down` stops it again; an engine someone else started stays as it was.
                self.layout.dockerd_started.write_text("started by `up`\n")
                say("started dockerd")
            images.ensure_stack(docker.from_env(), progress=say)
        except Exception as exc:  # whatever failed, an engine we started does not stay on
            if self.layout.dockerd_started.exists():
                engine.stop_if_ours(containers.LABEL)
                self.layout.dockerd_started.unlink(missing_ok=True)
            raise EnvironmentStartError("containers", "", str(exc)) from None

    def _startup_error(self) -> EnvironmentStartError:
        try:
            err = json.loads(self.layout.startup_error.read_text())
            return EnvironmentStartError(err["component"], err["log"], err["reason"])
        except (FileNotFoundError, ValueError, KeyError):
            return EnvironmentStartError(
                "supervisor", str(self.layout.log("supervisor")), "exited during start-up"
            )

    def _preflight(self) -> None:
        ensure_run_dir(self.layout.run_dir)
        check_traversable(self.layout.run_dir, self.settings.pg_os_user)

    def _ports_free(self) -> None:
        """Refuse to start, naming the port, when one this environment needs is taken (by
        another environment whose base is 10000 away: its Redis cluster bus; or anything), or
        may be taken at random (inside the kernel's ephemeral range)."""
        ports = self.settings.listening_ports()
        eph = ephemeral_range()
        if risky := ephemeral_ports(ports, eph, reserved_ports()):
            raise EnvironmentStartError(
                "ports",
                "",
                f"{', '.join(risky[:4])}{' ...' if len(risky) > 4 else ''} lie in the kernel's"
                f" ephemeral range ({eph.start}-{eph.stop - 1}, net.ipv4.ip_local_port_range),"
                " where any outgoing connection may hold them; choose a lower CWH_BASE_PORT"
                " (its ports + 10000 carry the Redis Cluster bus), or reserve them"
                " (net.ipv4.ip_local_reserved_ports)",
            )
        if busy := busy_ports(ports, bindable):
            raise EnvironmentStartError(
                "ports",
                "",
                f"in use: {', '.join(busy[:8])}{' ...' if len(busy) > 8 else ''}; choose another"
                " CWH_BASE_PORT (bases at least 200 apart, and not 10000 apart: Redis Cluster's"
                " bus is each node's port + 10000)",
            )

    def _spawn_supervisor(self) -> None:
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.layout.startup_error.unlink()
        env = {**os.environ, **self.settings.to_environ(), MARKER: str(self.settings.run_dir)}
        self.layout.runtime_record.write_text(self.settings.runtime + "\n")
        self.layout.failover_record.write_text(self.settings.failover + "\n")
        # The supervisor imports this project: make sure it can, installed or not.
        project_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
        with open(self.layout.log("supervisor"), "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "env.supervisor"],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=project_root,
                start_new_session=True,
            )
        self._supervisor_proc = proc
        # It writes its pid file itself; wait for it, or for its early death.
        deadline = time.monotonic() + self.settings.timeout(15)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EnvironmentStartError(
                    "supervisor",
                    str(self.layout.log("supervisor")),
                    f"exited at start with code {proc.returncode}",
                )
            if self.supervisor_status() is not None:
                return
            time.sleep(0.1)
        raise EnvironmentStartError(
            "supervisor", str(self.layout.log("supervisor")), "admin API did not answer"
        )

    # ---- down ------------------------------------------------------------------------------

    def down(self, timeout_s: float = 120.0) -> list[int]:
        """Stop everything this run directory's environment runs; return pids swept at the end.

        Asks the supervisor to stop the components in order; then whatever still carries the
        environment's marker (orphans of a killed supervisor, detached postmasters) gets SIGTERM,
        then SIGKILL.
        """
        timeout = self.settings.timeout(timeout_s)
        if self.supervisor_status() is not None:
            with contextlib.suppress(requests.RequestException, RuntimeError):
                self._admin_post("/shutdown")
        pid = self.supervisor_pid()
        if pid is not None:
            with contextlib.suppress(DeadlineExceeded):
                self._wait_supervisor_exit(timeout)
            if pid_alive(pid):
                terminate_then_kill([pid], 5)
        leftovers = [p.pid for p in processes_of(self.settings.run_dir)]
        if leftovers:
            terminate_then_kill(leftovers, self.settings.timeout(10))
        if network.containers(self.settings):
            self._remove_containers()
        with contextlib.suppress(FileNotFoundError):
            self.layout.supervisor_pid.unlink()
        self.layout.runtime_record.unlink(missing_ok=True)
        self.layout.failover_record.unlink(missing_ok=True)
        if self._supervisor_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._supervisor_proc.wait(timeout=5)
            self._supervisor_proc = None
        return leftovers

    def _remove_containers(self) -> None:
        """What a supervisor that died could not remove (containers, the network), then the
        engine if our `up` started it and no environment's container is left on it."""
        from env import containers, engine

        containers.remove_all(self.settings)
        # Stopped once no environment's container is left on it; until then the record stays,
        # and a later `down` tries again.
        if self.layout.dockerd_started.exists() and (
            engine.stop_if_ours(containers.LABEL) or engine.started_here() is None
        ):
            self.layout.dockerd_started.unlink(missing_ok=True)

    def reset(self) -> None:
        """Stop whatever runs in the run directory and delete it: the next `up` starts afresh.

        For tests and benchmarks, whose results must not depend on an earlier run's state.
        """
        self.down()
        shutil.rmtree(self.settings.run_dir, ignore_errors=True)

    def _wait_supervisor_exit(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.supervisor_pid() is not None:
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"supervisor still running after {timeout_s:.0f} s")
            time.sleep(0.1)

    # ---- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Every component with role, pid, ports, health and lag, and the connection URLs."""
        from env.status import collect_status  # status pulls in asyncpg; keep `down` light

        return collect_status(self.settings, self.supervisor_status())

    def state(self) -> EnvStatus:
        """`status()`, typed: `state().component("api2").port()`, `state().primary`."""
        return EnvStatus.from_json(self.status())

    # ---- context manager -------------------------------------------------------------------

    def __enter__(self) -> LocalEnvironment:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


__all__ = ["EnvironmentStartError", "LocalEnvironment"]
