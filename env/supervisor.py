"""The local environment's supervisor: starts every component in order, restarts what crashes.

It plays the kubelet's part for processes on one machine. `cwh env up` starts it detached; it
renders configs, starts the components stage by stage (each stage once the stages it waits for
are ready, several at once: `topology.STAGE_PREREQUISITES`, `env/startgraph.py`), then watches
them: a component that exits is restarted with exponential backoff, the way
Kubernetes restarts a crashed container. Fault injection needs a crashed process to *stay* down for
a while (so that a failover really happens), so restarts can be held through the admin API.

Its admin API (holds, scaling, the autoscaler's switch, kube-state-metrics) is `env/admin.py`;
what runs is `env/topology.py`, how each replica runs here `env/commands.py`, what "ready" means
`env/readiness.py` (shared with `cwh env status`), the configs and secrets written before the
start `env/rundir.py`, the stores' one-time set-up `env/bootstrap.py`, scaling `env/scaling.py`
and the autoscaler's loop `env/autoscaling.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from env import (
    bootstrap,
    configs,
    etcd,
    hpa,
    images,
    liveness,
    network,
    patroni_api,
    probes,
    readiness,
    region,
    rundir,
    startgraph,
    topology,
)
from env.admin import admin_app, metrics_app
from env.autoscaler import ControllerConfig
from env.autoscaling import LocalAutoscaler
from env.bootstrap import StartupError
from env.commands import PROJECT_ROOT, Commands
from env.containers import ContainerProcess, ContainersRuntime, ReplicaSpec
from env.files import UntrustedRunDir, ensure_run_dir, write_file
from env.layout import Layout
from env.liveness import LivenessProbe
from env.process import MARKER, Proc, processes_of, terminate_then_kill, user_ids
from env.scaling import Scaler
from env.secrets import Secrets, client_tls_context
from env.settings import EnvSettings
from env.topology import SERVICE_ROLES, Replica, Topology, Workload
from env.users import RunAs, decide

log = logging.getLogger("cwh.supervisor")


BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
#: A component that stayed up this long starts again from the first backoff step.
BACKOFF_RESET_AFTER_S = 60.0
#: How often a starting stage's readiness is asked: often in its first seconds, when most
#: stages become ready (each poll is a connection or two), less after.
READY_POLL_FIRST_S = 0.1
READY_POLL_FIRST_FOR_S = 2.0
READY_POLL_S = 0.2
#: How often a starting API or hub replica is asked whether it may join the load balancer.
JOIN_POLL_S = 0.1


@dataclass
class Component:
    """One supervised process.

    Attributes:
        name: unique name (`etcd`, `pg0`, `redis3`, ...), also its log file's name.
        kind: what it is (`patroni`, `redis`, ...), for status and grouping.
        argv: command line.
        ports: named ports it listens on.
        as_user: (uid, gid) to run as, or None to run as the supervisor's user.
        grace_s: how long SIGTERM may take before SIGKILL.
        liveness: restart the process when this probe fails (None: only when it exits).
    """

    name: str
    kind: str
    argv: list[str]
    ports: dict[str, int]
    log_path: Path
    as_user: tuple[int, int] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    grace_s: float = 10.0
    proc: Proc | None = None
    state: str = "new"  # new | running | exited | held | stopped
    restarts: int = 0  # since the supervisor started
    crash_streak: int = 0  # restarts without a long enough run in between: drives the backoff
    started_at: float = 0.0  # monotonic
    started_wall: float = 0.0
    exit_code: int | None = None
    held_until: float = 0.0  # monotonic; restarts wait while now < held_until
    watcher: asyncio.Task[None] | None = None
    liveness: LivenessProbe | None = None
    prober: asyncio.Task[None] | None = None
    stop_reason: str = ""  # why the supervisor itself is stopping the process now
    last_restart_reason: str = ""
    workload: str = ""  # the topology's workload it is a replica of
    joined: bool = False  # registered in the load balancer (API, hub): the keeper keeps it there
    host: str = "127.0.0.1"  # where the other replicas reach it (`env.network.host`)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "ports": self.ports,
            "log": str(self.log_path),
            "uptime_s": round(now - self.started_at, 1) if self.pid else None,
            "held_for_s": round(self.held_until - now, 1) if self.held_until > now else 0,
            "last_restart_reason": self.last_restart_reason,
            "workload": self.workload,
            "container": getattr(self.proc, "id", "")[:12] if self.pid else "",
        }


async def always() -> bool:
    """The readiness of a stage that is only a job: done when the job returns."""
    return True


class Supervisor:
    """Starts, watches and stops the components of one local environment."""

    def __init__(self, settings: EnvSettings) -> None:
        self.settings = settings
        self.layout = Layout(settings.run_dir)
        self.components: dict[str, Component] = {}
        self.phase = "starting"  # starting | ready | failed | stopping
        self.stage = ""
        self.error: dict[str, str] | None = None
        self.stopping = False
        self.done = asyncio.Event()
        self.pg_ids = user_ids(settings.pg_os_user)
        #: The supervisor's own control loops (HAProxy's servers, the autoscaler) by name.
        self.controllers: dict[str, asyncio.Task[None]] = {}
        self.scaler = Scaler(self, settings.timeout_scale)
        self.autoscaler: LocalAutoscaler | None = None
        self.commands: Commands | None = None
        #: What each start stage waits for, and how long (set by `start_all`).
        self.checks: dict[str, tuple[Callable[[], Awaitable[bool]], float]] = {}
        #: A standby region starts its services once, when promoted.
        self.services_started = False
        #: The containers runtime's side (None: replicas are processes here).
        self.containers: ContainersRuntime | None = None
        self.metrics_runner: web.AppRunner | None = None
        #: `start_all` while it runs (`run`): `shutdown` cancels it before stopping anything.
        self.starting: asyncio.Task[None] | None = None

    @functools.cached_property
    def run_as(self) -> RunAs:
        """Who runs what (decided once: it starts a probe process as the service user)."""
        return decide(self.settings.service_os_user, PROJECT_ROOT)

    def prepare(self) -> Secrets:
        """Check the run directory, then write every config, key and secret into it."""
        return rundir.prepare(self.settings, self.run_as, self.pg_ids)

    # ---- component definitions -------------------------------------------------------------

    def _component(self, name: str, kind: str, argv: list[str], **kw: Any) -> Component:
        binary = argv[0]
        in_image = network.containers(self.settings)  # the image has every binary (make images)
        if not in_image and shutil.which(binary) is None and not Path(binary).exists():
            raise StartupError(name, self.layout.log(name), f"{binary} not found: run `make deps`")
        comp = Component(name=name, kind=kind, argv=argv, log_path=self.layout.log(name), **kw)
        self.components[name] = comp
        return comp

    @functools.cached_property
    def hpas(self) -> dict[str, hpa.HPASpec]:
        """The HorizontalPodAutoscalers of `deploy/base/` (the one spec of how things scale), or
        of the folder the settings name instead."""
        return hpa.load(self.settings.hpa_dir)

    @functools.cached_property
    def topology(self) -> Topology:
        """What runs: the settings' shape, the bounds of `deploy/base/`'s HPAs."""
        return topology.build(self.settings, self.hpas)

    def running(self, workload: str) -> list[Component]:
        """The replicas of `workload` that run (or restart) now, in slot order."""
        w = self.topology.workload(workload)
        return [
            c
            for r in w.slots
            if (c := self.components.get(r.name)) is not None and c.state != "stopped"
        ]

    def new_replica(self, w: Workload, r: Replica) -> Component:
        """The process of a replica added at run time (started by the caller)."""
        assert self.commands is not None, "replicas are added once the environment runs"
        return self.component(w, r, self.commands)

    async def retire(self, comp: Component) -> None:
        """Stop a replica for good and forget it (a scale-in, a rollout's old replica)."""
        await self.stop([comp])
        if comp.prober is not None:
            comp.prober.cancel()
        self.components.pop(comp.name, None)
        if self.containers is not None and isinstance(comp.proc, ContainerProcess):
            await self.containers.remove(comp.proc)

    def define(self, secrets: Secrets) -> list[tuple[str, list[Component]]]:
        """The stages in `topology.STAGES`' order, each with a process for every replica that
        runs at start (started together); a stage with nothing to start is there for its
        check (`start_all`)."""
        commands = self.commands = Commands(
            self.settings,
            self.layout,
            secrets,
            pg_user=self.pg_ids,
            service_user=self.run_as.service,
            python_user=self.run_as.python,
            exporter_queries=rundir.exporter_queries(self.layout),
            topo=self.topology,
            **(images.IN_IMAGE if self.containers is not None else {}),
        )
        stages = [
            (stage, [self.component(w, r, commands) for w in workloads for r in w.initial])
            for stage, workloads in self.topology.stages()
        ]
        # Stages with nothing to start, only a check to wait for.
        if self.settings.fault_proxy and self.settings.toxiproxy_url:
            # A Toxiproxy of the user's: the stage's check creates its proxies, before
            # PostgreSQL's replicas stream through them.
            stages.append(("faultproxy", []))
        # Patroni's synchronous standby, which only the end of the start waits for.
        stages.append(("sync_standby", []))
        if self.settings.backups and not self.settings.standby:  # a standby's is the primary's
            stages.append(("backup_stanza", []))
        return sorted(stages, key=lambda stage: topology.STAGES.index(stage[0]))

    def component(self, w: Workload, r: Replica, commands: Commands) -> Component:
        """The supervised process of replica `r` (registered under its name)."""
        spec = commands.for_replica(w, r)
        return self._component(
            r.name,
            w.kind,
            spec.argv,
            workload=w.name,
            ports=dict(r.ports),
            env=spec.env,
            cwd=spec.cwd,
            as_user=spec.as_user,
            grace_s=spec.grace_s,
            liveness=spec.liveness,
            host=network.host(self.settings, r.name),
        )

    async def fault_proxy_ready(self) -> bool:
        """Every proxy of the configuration exists (created now on a configured Toxiproxy)."""
        url = self.settings.fault_api_url
        wanted = configs.fault_proxies(self.settings)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            if self.settings.toxiproxy_url:
                async with http.post(f"{url}/populate", json=wanted) as resp:
                    resp.raise_for_status()
            async with http.get(f"{url}/proxies") as resp:
                have = await resp.json()
        return all(p["name"] in have for p in wanted)

    # ---- running processes -----------------------------------------------------------------

    async def spawn(self, comp: Component) -> None:
        comp.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            MARKER: str(self.settings.run_dir),
            **comp.env,
        }
        kwargs: dict[str, Any] = {}
        if comp.as_user is not None:
            kwargs.update(user=comp.as_user[0], group=comp.as_user[1], extra_groups=[])
        with open(comp.log_path, "ab") as logf:
            logf.write(
                f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                f"supervisor: starting {' '.join(comp.argv)}\n".encode()
            )
            logf.flush()
        if self.containers is not None:
            spec = ReplicaSpec(
                name=comp.name,
                argv=comp.argv,
                env={"LANG": "C.UTF-8", MARKER: str(self.settings.run_dir), **comp.env},
                cwd=comp.cwd or self.settings.run_dir,
                # The cluster bus stays on the network: only clients come from the host.
                ports=tuple(p for name, p in comp.ports.items() if name != "bus"),
                as_user=comp.as_user,
                log_path=comp.log_path,
            )
            comp.proc = await self.containers.start(spec)
        else:
            comp.proc = await self._start_process(comp, env, kwargs)
        self._started(comp)

    async def _start_process(
        self, comp: Component, env: dict[str, str], kwargs: dict[str, Any]
    ) -> Proc:
        with open(comp.log_path, "ab") as logf:
            return await asyncio.create_subprocess_exec(
                *comp.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                # Inside the run directory, so `processes_of` finds it even with its title
                # rewritten over its environment.
                cwd=str(comp.cwd or self.settings.run_dir),
                start_new_session=True,
                **kwargs,
            )

    def _started(self, comp: Component) -> None:
        assert comp.proc is not None
        comp.state = "running"
        comp.exit_code = None
        comp.started_at = time.monotonic()
        comp.started_wall = time.time()
        log.info("started %s (pid %s)", comp.name, comp.proc.pid)
        comp.watcher = asyncio.create_task(self.watch(comp), name=f"watch-{comp.name}")
        if comp.liveness is not None:
            proc = comp.proc

            def running() -> bool:
                return comp.proc is proc and proc.returncode is None and not self.stopping

            async def restart(reason: str) -> None:
                comp.stop_reason = reason
                await self.stop([comp], final=False)

            comp.prober = asyncio.create_task(
                liveness.watch(comp.liveness, running, restart), name=f"live-{comp.name}"
            )

    async def watch(self, comp: Component) -> None:
        """Wait for the process to exit, then restart it with backoff unless held or stopping."""
        assert comp.proc is not None
        code = await comp.proc.wait()
        comp.exit_code = code
        if self.stopping or comp.state == "stopped":
            comp.state = "stopped"
            return
        comp.state = "exited"
        # Killed at its memory limit (containers): said so, as Kubernetes says OOMKilled.
        oom = " (OOM-killed at its memory limit)" if getattr(comp.proc, "oom_killed", False) else ""
        comp.last_restart_reason, comp.stop_reason = comp.stop_reason or f"exit {code}{oom}", ""
        uptime = time.monotonic() - comp.started_at
        if uptime > BACKOFF_RESET_AFTER_S:
            comp.crash_streak = 0
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(comp.crash_streak, 10))
        log.warning(
            "%s exited with %s after %.1f s (%s); restart in %.1f s",
            comp.name,
            code,
            uptime,
            comp.last_restart_reason,
            delay,
        )
        restart_at = time.monotonic() + delay
        while not self.stopping:
            now = time.monotonic()
            if comp.held_until > now:
                comp.state = "held"
                await asyncio.sleep(min(0.2, comp.held_until - now))
                continue
            if now >= restart_at:
                break
            comp.state = "exited"
            await asyncio.sleep(min(0.2, restart_at - now))
        if self.stopping:
            comp.state = "stopped"
            return
        comp.restarts += 1
        comp.crash_streak += 1
        while not self.stopping:
            try:
                await self.spawn(comp)
                return
            except Exception as exc:  # a restart that cannot happen now must not end the watch
                log.exception("%s could not be restarted; trying again", comp.name)
                comp.last_restart_reason = f"restart failed: {exc!r}"
                await asyncio.sleep(BACKOFF_MAX_S)

    async def stop(self, comps: list[Component], final: bool = True) -> None:
        """SIGTERM, then SIGKILL after each component's grace period. `final`: it stays
        stopped; otherwise its watcher restarts it (a liveness restart)."""
        for comp in comps:
            if final:
                comp.state = "stopped"
            if comp.proc and comp.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    comp.proc.send_signal(signal.SIGTERM)

        async def reap(comp: Component) -> None:
            if not comp.proc or comp.proc.returncode is not None:
                return
            try:
                await asyncio.wait_for(comp.proc.wait(), comp.grace_s * self.settings.timeout_scale)
            except TimeoutError:
                log.warning("%s did not stop in time: SIGKILL", comp.name)
                with contextlib.suppress(ProcessLookupError):
                    comp.proc.kill()
                try:
                    # A process dies at once; a container's exit is seen within seconds.
                    await asyncio.wait_for(comp.proc.wait(), 30)
                except TimeoutError:
                    log.error("%s still not gone 30 s after SIGKILL; going on", comp.name)

        await asyncio.gather(*(reap(c) for c in comps))

    # ---- readiness -------------------------------------------------------------------------

    async def wait_ready(
        self,
        stage: str,
        comps: list[Component],
        check: Callable[[], Awaitable[bool]],
        timeout_s: float,
    ) -> None:
        """Poll `check` until it holds; fail naming the first component that died or the stage."""
        began = time.monotonic()
        deadline = began + self.settings.timeout(timeout_s)
        last_error = "not ready"
        while True:
            for comp in comps:
                exited = comp.proc is not None and comp.proc.returncode is not None
                if exited and comp.crash_streak > 2:
                    raise StartupError(
                        comp.name, comp.log_path, f"keeps exiting (last exit code {comp.exit_code})"
                    )
            try:
                if await check():
                    return
            except Exception as exc:
                last_error = repr(exc)
            if time.monotonic() >= deadline:
                culprit = next(
                    (c for c in comps if c.proc is None or c.proc.returncode is not None),
                    comps[0] if comps else None,
                )
                if culprit is None:  # nothing of ours: an external server (Toxiproxy's URL)
                    raise StartupError(stage, self.layout.log(stage), f"{stage}: {last_error}")
                raise StartupError(culprit.name, culprit.log_path, f"{stage}: {last_error}")
            early = time.monotonic() - began < READY_POLL_FIRST_FOR_S
            await asyncio.sleep(READY_POLL_FIRST_S if early else READY_POLL_S)

    async def open_containers(self) -> None:
        """The containers runtime's network, and the supervisor's metrics on its bridge."""
        self.containers = ContainersRuntime(self.settings, images.stack_tag())
        self.stage = "containers"
        await self.containers.open()
        runner = web.AppRunner(metrics_app(self), access_log=None)
        await runner.setup()
        gateway = network.gateway(self.settings)
        await web.TCPSite(runner, gateway, self.settings.ports.supervisor).start()
        self.metrics_runner = runner

    async def start_all(self) -> None:
        """Start every stage as soon as the stages it waits for are ready
        (`topology.STAGE_PREREQUISITES`), several at once; the first that fails ends the start,
        the others cancelled (their processes stay for `shutdown` to stop)."""
        if self.stopping:  # stopped before the start began: nothing may start
            return
        if network.containers(self.settings):
            await self.open_containers()
        secrets = self.prepare()
        stages = dict(self.define(secrets))
        for warning in self.privileges()["warnings"]:
            log.warning("%s", warning)
        if self.commands is not None and self.commands.malloc is None:
            log.warning(
                "the services run on glibc's malloc, whose arenas fragment under a long soak: "
                "apt-get install libjemalloc2 (or make deps)"
            )
        s = self.settings
        tls = client_tls_context(self.layout.ca_cert)
        ready = readiness.Checks(s, secrets, tls)
        self.checks = {
            "etcd": (ready.etcd, 20),
            "backup": (ready.backup, 20),
            # A second region's first member is cloned across the region link (up to 1 s each
            # way): the copy takes as long as the database's size needs, not a local clone's.
            "postgresql": (
                functools.partial(ready.pg_streaming, sync=False),
                300 if s.standby else 90,
            ),
            "sync_standby": (ready.postgresql, 60),
            # Nothing to wait for: the stage is the job it runs (`run_stage`).
            "backup_stanza": (always, 1),
            "haproxy": (ready.haproxy, 20),
            "pgbouncer": (ready.pgbouncer, 20),
            "redis": (ready.redis, 30),
            "faultproxy": (self.fault_proxy_ready, 20),
            "exporters": (ready.exporters, 20),
            "prometheus": (ready.prometheus, 30),
            # The service stages' checks are their replicas' (`services_ready`).
        }
        began = time.monotonic()
        promoted: asyncio.Task[bool] | None = None

        async def run(stage: str) -> None:
            nonlocal promoted
            comps = stages[stage]
            if stage in topology.SERVICE_STAGES and s.standby:
                # Asked once for every service stage: they all start, or none does.
                if promoted is None:
                    promoted = asyncio.create_task(region.promoted(s, secrets, tls))
                if await promoted:
                    if "entry-keeper" not in self.controllers:
                        await self.take_entry()  # promoted before this start: the phones are its
                else:
                    # Its services would start against a read-only database: they start when
                    # it is promoted (pilot light), which the region watch sees.
                    for comp in comps:  # not started, so not reported as down either
                        self.components.pop(comp.name, None)
                    if "region-watch" not in self.controllers:
                        self.control(
                            "region-watch", lambda: self.start_services_when_promoted(secrets)
                        )
                    return
            try:
                await self.run_stage(stage, comps, secrets, tls)
            except StartupError:
                raise
            except Exception as exc:  # named after its stage: several run at once
                log.exception("stage %s failed", stage)
                raise StartupError(stage, self.layout.log("supervisor"), repr(exc)) from exc

        def running(now: list[str]) -> None:
            self.stage = ", ".join(now)

        await startgraph.run_graph(list(stages), topology.STAGE_PREREQUISITES, run, running)
        if "services" in stages and "region-watch" not in self.controllers:
            self.start_service_controllers()
        self.stage = ""
        self.phase = "ready"
        log.info("environment ready in %.2f s", time.monotonic() - began)

    async def run_stage(
        self, stage: str, comps: list[Component], secrets: Secrets, tls: ssl.SSLContext
    ) -> None:
        """Start one stage's components and wait until the stage is ready, with what must
        happen around it (forming the Redis cluster, joining the load balancer, ...)."""
        s, ports = self.settings, self.settings.ports
        began = time.monotonic()
        log.info("stage %s: starting %s", stage, ", ".join(c.name for c in comps))
        for comp in comps:
            await self.spawn(comp)
        if stage == "redis":
            redis_ports = [ports.redis(n) for n in range(s.redis_nodes)]
            redis_creds = configs.redis_admin_credentials(self.layout, secrets)
            await self.form_redis_cluster(comps, redis_ports, redis_creds)
        joins: list[asyncio.Task[None]] = []
        check: Callable[[], Awaitable[bool]]
        if stage in topology.SERVICE_STAGES:
            await self.publish_services()
            # Each API and hub replica joins HAProxy once it is ready, as a scaled-out one does:
            # one that joined before it listened would be marked down by its first checks and
            # need `rise` more at `downinter` to come back.
            joins = [
                asyncio.create_task(self.join_when_ready(c), name=f"join-{c.name}")
                for c in comps
                if c.kind in ("api", "hub")
            ]
            check, timeout_s = functools.partial(self.services_ready, comps), 90.0
        else:
            check, timeout_s = self.checks[stage]
        # A stage with nothing of its own to start watches what its check is about.
        watched = self.running("pg") if stage == "sync_standby" else comps
        try:
            await self.wait_ready(stage, watched, check, timeout_s)
        finally:
            for task in joins:
                task.cancel()
        if stage == "postgresql":
            patroni_ports = [ports.patroni(m) for m in range(s.pg_members)]
            if not s.standby:  # a standby's database is a copy
                await bootstrap.create_app_database(self.settings, secrets, patroni_ports, tls)
            # A cluster created under another CWH_FAILOVER keeps that profile's timings in etcd
            # (a standby region's too: its own etcd).
            try:
                changed = await patroni_api.apply_timing(s.timing, patroni_ports, secrets)
            except patroni_api.PatroniConfigError as exc:
                raise bootstrap.StartupError(
                    "patroni", self.layout.log("pg0"), f"its timings: {exc}"
                ) from None
            if changed:
                log.info("Patroni's timings set to the %s profile's: %s", s.failover, changed)
        if stage == "backup_stanza":
            await bootstrap.create_backup_stanza(self.settings, self.run_as.python)
        if stage == "faultproxy" and s.standby:
            await region.add_link_latency(s)
        if stage == "etcd" and await etcd.enable_auth(ports.etcd_client, secrets.etcd_root):
            log.info("etcd: authentication enabled (user %s)", etcd.ROOT_USER)
        log.info("stage %s: ready in %.2f s", stage, time.monotonic() - began)

    def start_service_controllers(self) -> None:
        """The loops that keep the services in the load balancer and at the HPA's size."""
        s = self.settings
        self.control("lb-keeper", self.keep_lb_registered)
        self.autoscaler = LocalAutoscaler(
            self.topology,
            self.hpas,
            self.running,
            self.scaler,
            ControllerConfig(sync_period_s=s.autoscale_sync_s),
            enabled=s.autoscale,
        )
        autoscaler = self.autoscaler
        self.control("autoscaler", lambda: autoscaler.run(lambda: self.stopping))

    async def take_entry(self) -> None:
        """A promoted region takes the global entry point for good (`region.fail_over_entry`:
        the decision is written first), and keeps it: the entry keeper holds the primary
        region's server off whatever restarts, within a second. Its own errors are logged,
        never raised: the region's services start all the same."""
        try:
            await region.fail_over_entry(self.settings, self.layout)
        except Exception:
            log.exception("the global entry point's failover is not written")
        if "entry-keeper" not in self.controllers:
            self.control("entry-keeper", self.keep_entry)

    async def keep_entry(self) -> None:
        while not self.stopping:
            await asyncio.sleep(1.0)  # the keeper's period
            await region.keep_entry(self.layout)

    async def start_services_when_promoted(self, secrets: Secrets) -> None:
        """A standby region's watch: once its database takes writes (a promotion), start the
        services stage, once. A stage that fails to start is logged and reported as the
        supervisor's error (its controllers run all the same, for the replicas that did start);
        the region stays without the rest until someone looks."""
        assert self.commands is not None
        commands = self.commands
        tls = client_tls_context(self.layout.ca_cert)
        lost: tuple[float, float] | None = None
        while not self.stopping and not self.services_started:
            await asyncio.sleep(1.0)  # the watch's period
            try:
                if not await region.promoted(self.settings, secrets, tls):
                    lost = await self.watch_primary_region(secrets, tls, lost)
                    continue
            except Exception:  # whatever it was, the watch goes on, its evidence kept
                log.exception("the region watch's check failed")
                continue
            self.services_started = True
            log.info("the region was promoted: taking the phones, starting its services")
            await self.take_entry()
            try:
                for service_stage in topology.SERVICE_STAGES:
                    self.stage = service_stage
                    comps = [
                        self.component(w, r, commands)
                        for stage, workloads in self.topology.stages()
                        if stage == service_stage
                        for w in workloads
                        for r in w.initial
                    ]
                    await self.run_stage(service_stage, comps, secrets, tls)
            except Exception as exc:  # whatever it was, it must be seen, not end the watch
                log.exception("the promoted region's services did not start")
                log_path = exc.log_path if isinstance(exc, StartupError) else self.layout.logs
                self.error = {
                    "component": getattr(exc, "component", "services"),
                    "log": str(log_path),
                    "reason": getattr(exc, "reason", repr(exc)),
                }
            finally:
                self.stage = ""
                if "lb-keeper" not in self.controllers:
                    self.start_service_controllers()
        while not self.stopping:  # a control loop that ends is started again: stay
            await asyncio.sleep(60)

    async def watch_primary_region(
        self, secrets: Secrets, tls: ssl.SSLContext, lost: tuple[float, float] | None
    ) -> tuple[float, float] | None:
        """The automatic failover of a standby region (`region_failover_s` > 0): once the
        primary region has been found lost (`region.primary_region_lost`) at every conclusive
        check for that long, promote this region, writing what happens
        (`region.failover_record`: before the promotion, then with its result).

        `lost`: the first and the last check (monotonic clock) of the current stretch of
        checks that found it lost; returned updated, None when it is not lost
        (`region.failover_clock`)."""
        s = self.settings
        if not s.region_failover_s:
            return None
        found = await region.primary_region_lost(s, secrets, tls)
        now = time.monotonic()
        before = lost
        lost, due = region.failover_clock(lost, found, now, s.region_failover_s)
        if before is not None and found is False:
            log.info("the primary region answers again: no failover")
        if lost is not None and lost[0] == now:
            log.warning(
                "the primary region does not answer (API, Patroni, link): promoting this "
                "region if that lasts %g s",
                s.region_failover_s,
            )
        if not due or lost is None:
            return lost
        log.warning("the primary region lost for %.1f s: promoting this region", now - lost[0])
        # The last WAL position the link brought: what the promoted cluster starts from.
        record = {
            "lost_since": time.time() - (now - lost[0]),
            "promote_began": time.time(),
            "received_lsn": await region.received_lsn(s, secrets, tls),
            "automatic": True,
        }
        path = region.failover_record(self.layout)
        write_file(path, json.dumps(record))  # first: a promotion that times out still shows
        try:
            done = await region.promote(s, secrets)
        except (region.RegionError, OSError, aiohttp.ClientError, TimeoutError):
            log.exception("the automatic promotion failed; tried again at the next check")
            return lost
        write_file(path, json.dumps({**record, **done}))
        log.warning("promoted: %s leads on timeline %s", done["leader"], done["timeline"])
        return lost

    def control(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a control loop for as long as the supervisor runs. Each loop survives its own
        errors; should one end anyway, it is logged and started again, never left dead and
        unseen (a controller that silently stopped would look like a healthy environment)."""

        def ended(task: asyncio.Task[None]) -> None:
            if self.stopping or task.cancelled():
                return
            log.error("control loop %s ended (%r): starting it again", name, task.exception())
            self.control(name, loop)

        task = asyncio.create_task(loop(), name=name)
        task.add_done_callback(ended)
        self.controllers[name] = task

    def service_components(self, *roles: str) -> list[Component]:
        return [c for c in self.components.values() if c.kind in roles]

    async def services_ready(self, comps: list[Component]) -> bool:
        """Every replica of `comps` (one service stage's) ready, and those behind HAProxy
        (API, hub) marked UP there."""
        oks = await asyncio.gather(
            *(readiness.replica_ready(self.topology.owner(c.name), c) for c in comps)
        )
        if not all(oks):
            return False
        balanced: dict[str, set[str]] = {}
        for c in comps:
            backend = self.topology.owner(c.name).load_balancer
            if backend is not None:
                balanced.setdefault(backend, set()).add(c.name)
        if not balanced:
            return True
        rows = await probes.haproxy_stat(self.layout)
        return all(
            set(probes.haproxy_servers_up(rows, backend)) == names
            for backend, names in balanced.items()
        )

    async def publish_services(self) -> None:
        """Tell Prometheus which service replicas to scrape."""
        for _, workloads in self.topology.stages():
            for w in workloads:
                if w.kind in SERVICE_ROLES:
                    await self.scaler.publish(w)

    async def join_when_ready(self, comp: Component) -> None:
        """Put an API or hub replica into its HAProxy server-template slot once its readiness
        probe passes (slots are named like the replicas: api1 is the api1 slot, so a restarted
        replica, on the same port, needs nothing new). Tried again until it is done, or the
        caller cancels it."""
        w = self.topology.owner(comp.name)
        slot = f"{comp.kind}/{comp.name}"
        while True:
            try:
                if await readiness.replica_ready(w, comp):
                    port = comp.ports["http"]
                    await probes.haproxy_command(
                        self.layout, f"set server {slot} addr {comp.host} port {port}"
                    )
                    await probes.haproxy_command(self.layout, f"set server {slot} state ready")
                    comp.joined = True
                    return
            except Exception as exc:  # starting, or HAProxy restarting: next turn
                log.debug("%s not joined yet: %r", comp.name, exc)
            await asyncio.sleep(JOIN_POLL_S)

    async def keep_lb_registered(self) -> None:
        """Put back, within a second, the API and hub servers HAProxy lost.

        They join the HTTPS frontend at run time; an HAProxy that crashed and was restarted, or
        was reloaded, starts from its configuration, where their slots point nowhere, and the
        frontend would answer 503 for good. The controller's way: compare what HAProxy has with
        what should be, and fix the difference, whatever caused it.
        """
        while not self.stopping:
            await asyncio.sleep(1.0)
            haproxy = self.components.get("haproxy")
            if haproxy is None or haproxy.pid is None:
                continue
            try:
                for backend in ("api", "hub"):
                    have = probes.haproxy_server_ports(
                        await probes.haproxy_command(self.layout, f"show servers state {backend}")
                    )
                    # Only replicas that joined: a new one joins once ready (env/scaling.py).
                    want = {
                        f"{backend}/{c.name}": c.ports["http"]
                        for c in self.service_components(backend)
                        if c.joined
                    }
                    hosts = {c.name: c.host for c in self.service_components(backend)}
                    for command in probes.haproxy_registrations(have, want, hosts):
                        log.info("haproxy lost a server: %s", command)
                        await probes.haproxy_command(self.layout, command)
            except (OSError, TimeoutError) as exc:  # HAProxy (re)starting: next second
                log.debug("haproxy runtime API: %r", exc)
            except Exception:  # never the end of the controller: log, try again next second
                log.exception("keeping HAProxy's servers registered")

    async def form_redis_cluster(
        self, comps: list[Component], ports: list[int], creds: probes.RedisCredentials
    ) -> None:
        """Create the cluster the first time; later starts find it in each node's nodes.conf."""

        async def all_answer() -> bool:
            answers = await asyncio.gather(
                *(probes.redis_call(p, "PING", creds=creds) for p in ports),
                return_exceptions=True,
            )
            return all(a is True or a == b"PONG" for a in answers)

        await self.wait_ready("redis", comps, all_answer, 20)
        await bootstrap.create_redis_cluster(self.settings, ports, creds)

    # ---- shutdown --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.phase = "stopping"
        if self.starting is not None and not self.starting.done():
            # Stopped during start-up (Ctrl-C, `down`): no stage may start anything more.
            self.starting.cancel()
            await asyncio.wait([self.starting])
        for task in self.controllers.values():
            task.cancel()
        # The start order backwards: services first (a draining worker still needs the
        # database), etcd last.
        for _, workloads in reversed(self.topology.stages()):
            names = {w.name for w in workloads}
            comps = [c for c in self.components.values() if c.workload in names]
            if comps:
                log.info("stopping %s", ", ".join(c.name for c in comps))
                await self.stop(comps)
        if self.containers is not None:  # everything of ours went with its container
            await self.containers.close()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        # Postmasters detach from Patroni (setsid) and outlive a killed Patroni: sweep them.
        leftovers = [p.pid for p in processes_of(self.settings.run_dir)]
        if leftovers:
            log.warning("stopping %d leftover processes: %s", len(leftovers), leftovers)
            await asyncio.to_thread(
                terminate_then_kill, leftovers, self.settings.timeout(10), signal.SIGTERM
            )
        self.done.set()

    # ---- admin API -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "stage": self.stage,
            "error": self.error,
            "pid": os.getpid(),
            "run_dir": str(self.settings.run_dir),
            "base_port": self.settings.base_port,
            "runtime": self.settings.runtime,
            "failover": self.settings.failover,
            "components": [c.describe() for c in self.components.values()],
            **self.privileges(),
        }

    def privileges(self) -> dict[str, Any]:
        """Components on root that should not be (`runs_as_root`), and the warnings saying why."""
        if "run_as" not in self.__dict__:  # not decided yet: nothing started
            return {"runs_as_root": [], "warnings": []}
        # The backup repository host runs as the Python user too: the scheduler, which starts
        # backups in its repository, is Python (`env/commands.py`).
        python = [
            c.name
            for c in self.components.values()
            if c.argv[0] == sys.executable or c.kind == "pgbackrest_repo"
        ]
        fallback = self.run_as.python_fallback(python)
        stays_root = python if fallback else []
        if self.run_as.service is None and os.geteuid() == 0:
            stays_root = [c.name for c in self.components.values() if c.as_user is None]
        warnings = [*self.run_as.warnings, *([fallback] if fallback else [])]
        return {"runs_as_root": stays_root, "warnings": warnings}


async def run(settings: EnvSettings) -> int:
    sup = Supervisor(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(sup.shutdown()))
    runner = web.AppRunner(admin_app(sup), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.ports.supervisor)
    await site.start()
    if sup.stopping:
        # Stopped (SIGTERM, `down`) before the start began: start nothing, or it would all run
        # on with nobody to stop it.
        log.info("stopped before start-up")
    else:
        sup.starting = asyncio.create_task(sup.start_all(), name="start")
    try:
        if sup.starting is not None:
            await sup.starting
    except asyncio.CancelledError:
        if not sup.stopping:
            raise
        log.info("stopped during start-up")
    except StartupError as exc:
        log.error("%s", exc)
        sup.phase = "failed"
        sup.error = {"component": exc.component, "log": str(exc.log_path), "reason": exc.reason}
    except Exception as exc:
        log.exception("start-up failed")
        sup.phase = "failed"
        sup.error = {"component": sup.stage or "supervisor", "log": "", "reason": repr(exc)}
    if sup.phase == "failed":
        # The CLI may only look after we are gone: leave the error where it will find it.
        Layout(settings.run_dir).startup_error.write_text(json.dumps(sup.error))
        await sup.shutdown()
    await sup.done.wait()
    await runner.cleanup()
    return 0 if sup.phase != "failed" else 1


def main() -> None:
    settings = EnvSettings.from_environ()
    layout = Layout(settings.run_dir)
    try:
        ensure_run_dir(layout.run_dir)  # before anything is written into it
    except UntrustedRunDir as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    layout.supervisor_pid.write_text(str(os.getpid()))
    with contextlib.suppress(FileNotFoundError):
        layout.startup_error.unlink()
    try:
        code = asyncio.run(run(settings))
    finally:
        with contextlib.suppress(FileNotFoundError):
            layout.supervisor_pid.unlink()
    sys.exit(code)


if __name__ == "__main__":
    main()
