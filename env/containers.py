"""The containers runtime: each replica of the topology in its own container, on one Docker
network, started and stopped through testcontainers-python.

The supervisor stays the controller on either runtime (it restarts what dies, with backoff, runs
liveness probes, registers replicas with HAProxy, scales); this module only changes what a
replica *is*: a container of the `make images` image (`env/images.py`) instead of a process.
`ReplicaContainer` gives the supervisor the part of `asyncio.subprocess.Process` it uses (`pid`,
`returncode`, `wait`, `send_signal`, `kill`), so nothing above it knows.

Each container:
- has a fixed address on the environment's network (`env/network.py`) and keeps its ports;
  those are published on 127.0.0.1 only, so the harness on the host reaches every replica where
  it would on the local runtime;
- mounts the run directory at the same path (configs, data directories, logs, the CA);
- runs as the OS user the local runtime would (`cwh-run`, the image's entry point, gives that
  user the host's ids), with the seed's pod limits scaled by the settings;
- carries labels naming its environment, so `remove_all` finds everything of ours whatever
  happened to the supervisor (a crash, a SIGKILL): no Ryuk needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.types import EndpointConfig, IPAMConfig, IPAMPool
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import ContainerStatusWaitStrategy

from env import network
from env.settings import EnvSettings
from env.topology import SEED_CPU_LIMIT_M

log = logging.getLogger("cwh.containers")

#: Ryuk (testcontainers' reaper) is an image from a registry; our labels do its job.
testcontainers_config.ryuk_disabled = True

LABEL = "io.cloudwatcher.env"  # the environment's run directory
REPLICA_LABEL = "io.cloudwatcher.replica"
#: The seed's pod memory limit (2 GiB); `container_memory_scale` takes a share of it.
SEED_MEMORY_LIMIT_B = 2 * 1024**3
#: PostgreSQL's shared memory (Docker's default /dev/shm is 64 MB).
SHM_SIZE = "256m"
#: Docker calls block; a pool of their own keeps them off asyncio's default executor.
_DOCKER_THREADS = 8


def network_name(settings: EnvSettings) -> str:
    return f"cwh-{settings.base_port}"


def container_name(settings: EnvSettings, replica: str) -> str:
    return f"cwh-{settings.base_port}-{replica}"


def labels(settings: EnvSettings, replica: str = "") -> dict[str, str]:
    out = {LABEL: str(settings.run_dir)}
    if replica:
        out[REPLICA_LABEL] = replica
    return out


def limits(settings: EnvSettings) -> dict[str, Any]:
    """Docker's CPU and memory limits of one replica: the seed's pod limits, scaled."""
    memory = int(SEED_MEMORY_LIMIT_B * settings.container_memory_scale)
    return {
        "nano_cpus": int(SEED_CPU_LIMIT_M * settings.container_cpu_scale * 1_000_000),
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap: at the limit the kernel kills, as on a node
    }


def user_spec(ids: tuple[int, int] | None) -> str:
    """`cwh-run`'s user argument: `name:uid:gid` of the host's user, `-` for root."""
    if ids is None or ids[0] == 0:
        return "-"
    try:
        name = pwd.getpwuid(ids[0]).pw_name
    except KeyError:
        name = f"u{ids[0]}"
    return f"{name}:{ids[0]}:{ids[1]}"


@dataclass(frozen=True)
class ReplicaSpec:
    """What runs in one replica's container (the local runtime's process, `env.commands`).

    Attributes:
        name: the replica (`pg0`): its container's host name, and where its address comes from.
        argv, env, cwd: the process, as on the local runtime.
        ports: published on 127.0.0.1, each at its own number.
        as_user: (uid, gid) of the host's user it runs as (None: root).
        log_path: where its output goes (in the run directory, which the container mounts).
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    ports: tuple[int, ...]
    as_user: tuple[int, int] | None
    log_path: Path


class ReplicaContainer(DockerContainer):
    """One replica's container, publishing its ports on the host's loopback only."""

    def publish_on_loopback(self, port: int) -> ReplicaContainer:
        # testcontainers binds published ports on every interface; docker-py takes
        # (address, port) for one.
        self.ports[f"{port}/tcp"] = ("127.0.0.1", port)  # type: ignore[assignment]
        return self


class ContainerProcess:
    """The running container of one replica, seen as a process by the supervisor.

    `pid` is the host pid of the container's main process (signals to it from the host reach
    it, as `kill` and SIGSTOP experiments expect); `returncode` is set once the container has
    exited (the runtime's event thread reports it); `oom_killed` whether the kernel killed it at
    its memory limit (Docker's `State.OOMKilled`, what Kubernetes reports as OOMKilled)."""

    def __init__(self, runtime: ContainersRuntime, container: ReplicaContainer, pid: int) -> None:
        self.runtime = runtime
        self.container = container
        self.pid = pid
        self.id = container.get_wrapped_container().id
        self.returncode: int | None = None
        self.oom_killed = False
        self._exited = asyncio.Event()

    def exited(self, code: int, oom: bool = False) -> None:
        self.returncode, self.oom_killed = code, oom
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.id)
        self.runtime.submit(self._kill, signal.Signals(sig).name)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _kill(self, sig: str) -> None:
        wrapped = self.container.get_wrapped_container()
        try:
            wrapped.kill(signal=sig)
        except NotFound:
            return  # already gone: what was wanted
        except APIError as exc:
            # A frozen container takes no signal (409): thaw it, or the stop would wait for
            # ever; a container that is not running has nothing to signal.
            if "paused" not in str(exc):
                log.debug("kill %s %s: %r", self.id[:12], sig, exc)
                return
            with contextlib.suppress(NotFound, APIError):
                wrapped.unpause()
                wrapped.kill(signal=sig)


class ContainersRuntime:
    """Creates the environment's network and its replicas' containers; reports their exits.

    Exits reach each `ContainerProcess` (whose `wait` the supervisor's watcher awaits, as a
    process's) two ways: a thread follows Docker's event stream (at once; it reconnects when the
    stream ends), and a check every `RECONCILE_S` compares every live container with the
    engine's view (whatever the stream missed: an exit before the container was registered, a
    stream that broke, a container removed by someone else)."""

    RECONCILE_S = 2.0

    def __init__(self, settings: EnvSettings, image: str) -> None:
        self.settings = settings
        self.image = image
        self.client = docker.from_env()
        self.pool = ThreadPoolExecutor(_DOCKER_THREADS, thread_name_prefix="docker")
        self.network: Network | None = None
        self.live: dict[str, ContainerProcess] = {}  # container id -> process, until it exits
        #: container id -> (exit code, OOM-killed), for an exit seen before its registration
        self.exits: dict[str, tuple[int, bool]] = {}
        self.starting = 0  # starts under way
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._events: Any = None
        self._reconciler: asyncio.Task[None] | None = None

    def submit(self, fn: Any, *args: Any) -> None:
        self.pool.submit(fn, *args)

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ---- the network and the event thread ------------------------------------------------

    async def open(self) -> None:
        """Remove what a previous run left, create the network, follow the events."""
        self.loop = asyncio.get_running_loop()
        await self.run(remove_all, self.settings, self.client)
        self.network = await self.run(self._create_network)
        threading.Thread(target=self._follow_events, name="docker-events", daemon=True).start()
        self._reconciler = asyncio.create_task(self._reconcile(), name="docker-reconcile")

    def _create_network(self) -> Network:
        net = network.subnet(self.settings)
        ipam = IPAMConfig(
            pool_configs=[IPAMPool(subnet=str(net), gateway=network.gateway(self.settings))]
        )
        created = Network(
            docker_network_kw={"driver": "bridge", "ipam": ipam, "labels": labels(self.settings)}
        )
        created.name = network_name(self.settings)
        return created.create()

    def _follow_events(self) -> None:
        filters = {"type": "container", "event": "die", "label": f"{LABEL}={self.settings.run_dir}"}
        since = int(time.time())
        while not self.closed:
            try:
                # From a little before the last start: nothing is missed across a reconnect.
                self._events = self.client.events(decode=True, filters=filters, since=since - 2)
                for event in self._events:
                    # A reconnect asks from the last event on (a replayed one is harmless).
                    since = int(event.get("time", since))
                    cid = event.get("id", "")
                    code = int(event.get("Actor", {}).get("Attributes", {}).get("exitCode", -1))
                    # 137 is SIGKILL, the OOM killer's among others: only the engine can tell,
                    # asked now, while the container still exists (its restart removes it).
                    oom = code == 137 and self._oom_killed(cid)
                    if self.loop is not None:
                        self.loop.call_soon_threadsafe(self._exited, cid, code, oom)
            except Exception:  # the engine restarted, or the client closed at shutdown
                if not self.closed:
                    log.warning("docker event stream ended; following it again", exc_info=True)
            time.sleep(1.0)

    def _oom_killed(self, cid: str) -> bool:
        try:
            return bool(self.client.api.inspect_container(cid)["State"].get("OOMKilled"))
        except Exception:  # removed meanwhile, or the engine's answer lost: nothing says it was
            return False

    def _exited(self, cid: str, code: int, oom: bool = False) -> None:
        """An exit (in the event loop's thread): to its process, or kept for `start` while a
        start is under way (a container can die before it is registered)."""
        proc = self.live.pop(cid, None)
        if proc is None:
            if self.starting:
                self.exits[cid] = (code, oom)
        elif proc.returncode is None:
            proc.exited(code, oom)

    async def _reconcile(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.RECONCILE_S)
            try:
                gone = await self.run(self._not_running, list(self.live))
                for cid, (code, oom) in gone.items():
                    self._exited(cid, code, oom)
            except Exception:  # never the end of the check: log, look again
                log.exception("checking the containers' states")

    def _not_running(self, ids: list[str]) -> dict[str, tuple[int, bool]]:
        """id -> (exit code, OOM-killed) of each of `ids` that no longer runs (-1: removed
        meanwhile)."""
        # Ids only: one call, no inspection of each (which fails for one removed meanwhile).
        running = {
            c["Id"]
            for c in self.client.api.containers(
                filters={"label": f"{LABEL}={self.settings.run_dir}", "status": "running"}
            )
        }
        out = {}
        for cid in ids:
            if cid in running:
                continue
            try:
                state = self.client.api.inspect_container(cid)["State"]
                if state["Running"]:
                    continue
                out[cid] = (int(state["ExitCode"]), bool(state.get("OOMKilled")))
            except NotFound:
                out[cid] = (-1, False)
        return out

    async def close(self) -> None:
        """Remove every container and the network of this environment."""
        self.closed = True
        if self._reconciler is not None:
            self._reconciler.cancel()
        await self.run(remove_all, self.settings, self.client)
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()
        self.pool.shutdown(wait=False)

    # ---- replicas ----------------------------------------------------------------------

    async def start(self, spec: ReplicaSpec) -> ContainerProcess:
        """Start a replica in a fresh container (a previous one of the same name, exited, is
        removed first) and return it once its main process runs, or has already exited."""
        self.starting += 1
        try:
            return await self._start(spec)
        finally:
            self.starting -= 1
            if not self.starting:
                self.exits.clear()

    async def _start(self, spec: ReplicaSpec) -> ContainerProcess:
        container = await self.run(self._container, spec)
        await self.run(self._remove_named, container_name(self.settings, spec.name))
        failure = ""
        try:
            await self.run(container.start)
        except Exception as exc:
            # Its wait strategy saw it exit at once, or the engine could not start it (a port
            # or an address still held): the exit code, Docker's error and its log say why.
            if container._container is None:  # never created: nothing to report on
                raise
            failure = repr(exc)
        info = await self.run(self._inspect, container)
        state = info["State"]
        main = await self.run(main_process, int(state["Pid"])) if state["Running"] else 0
        proc = ContainerProcess(self, container, main)
        self.live[proc.id] = proc
        if not state["Running"] or proc.id in self.exits:
            code, oom = self.exits.pop(proc.id, (int(state["ExitCode"]), bool(state["OOMKilled"])))
            if state.get("Error") or state.get("StartedAt", "").startswith("0001-"):
                _note(spec.log_path, f"container did not start: {state.get('Error')} {failure}")
                code = code or 127  # never ran: not a clean exit
            self._exited(proc.id, code, oom)
        return proc

    def _container(self, spec: ReplicaSpec) -> ReplicaContainer:
        s, run_dir, name = self.settings, str(self.settings.run_dir), spec.name
        assert self.network is not None, "open() first"
        net = self.network.name
        c = ReplicaContainer(self.image, env=spec.env, name=container_name(s, name))
        c.with_command([str(spec.log_path), user_spec(spec.as_user), "--", *spec.argv])
        c.with_volume_mapping(run_dir, run_dir, mode="rw")
        for port in spec.ports:
            c.publish_on_loopback(port)
        c.with_network(self.network)
        c.waiting_for(ContainerStatusWaitStrategy())
        endpoint = EndpointConfig(
            self.client.api._version, ipv4_address=network.container_ip(s, name), aliases=[name]
        )
        c.with_kwargs(
            hostname=name,
            working_dir=str(spec.cwd),
            labels=labels(s, name),
            networking_config={net: endpoint},
            shm_size=SHM_SIZE,
            # Docker's init as pid 1 (reaps, forwards signals): the replica's own process is its
            # child, so a signal to it reaches it alone, as on the local runtime (Patroni as pid
            # 1 would fork itself behind a shim).
            init=True,
            **limits(s),
        )
        return c

    @staticmethod
    def _inspect(container: ReplicaContainer) -> dict[str, Any]:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        return dict(wrapped.attrs)

    def _remove_named(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.client.containers.get(name).remove(force=True)

    async def remove(self, proc: ContainerProcess) -> None:
        """Remove an exited (or unwanted) replica's container."""
        self.live.pop(proc.id, None)
        await self.run(self._remove_id, proc.id)
        if proc.returncode is None:  # gone now, whatever the events will say
            proc.exited(-1)

    def _remove_id(self, cid: str) -> None:
        with contextlib.suppress(NotFound, APIError):
            self.client.containers.get(cid).remove(force=True)


def main_process(init_pid: int, timeout_s: float = 5.0) -> int:
    """The replica's own process: the first child of the container's init (its host pid); 0
    when the init is gone (the exit will tell); the init itself, logged, when no child came."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not Path(f"/proc/{init_pid}").exists():
            return 0
        children = _children(init_pid)
        if children:
            return children[0]
        if time.monotonic() >= deadline:
            log.warning("no child of the container's init %d after %g s", init_pid, timeout_s)
            return init_pid
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    """`pid`'s children, oldest first: the kernel's list, or a scan of /proc without it."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    found = []
    with os.scandir("/proc") as entries:
        for e in entries:
            if e.name.isdigit():
                try:
                    # ppid is the 4th field after the command's closing parenthesis.
                    stat = Path(f"/proc/{e.name}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(e.name))
                except (OSError, ValueError, IndexError):
                    continue
    return sorted(found)


def _note(log_path: Path, line: str) -> None:
    with contextlib.suppress(OSError), open(log_path, "a") as f:
        f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")


def remove_all(settings: EnvSettings, client: Any = None) -> list[str]:
    """Remove every container and network labelled with this environment, running or not;
    returns the containers' names. Safe to call when Docker has none (or no engine answers:
    then there is nothing of ours to remove)."""
    try:
        client = client or docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        log.debug("no Docker engine to clean up: %r", exc)
        return []
    selector = {"label": f"{LABEL}={settings.run_dir}"}
    removed: list[str] = []
    # A few rounds: a removal already in progress (409), or a network whose last endpoint is
    # still going, succeeds a moment later. What is left after them, `leftovers` shows.
    for _ in range(5):
        failed = False
        try:
            found = client.containers.list(all=True, filters=selector, ignore_removed=True)
            for c in found:
                try:
                    c.remove(force=True, v=True)
                    removed.append(c.name)
                except NotFound:
                    pass
                except APIError as exc:
                    failed = True
                    log.warning("removing %s: %s", c.name, exc)
            for n in client.networks.list(filters=selector):
                try:
                    n.remove()
                except NotFound:
                    pass
                except APIError as exc:
                    failed = True
                    log.warning("removing network %s: %s", n.name, exc)
        except docker.errors.DockerException as exc:  # the engine going away mid-list
            failed = True
            log.warning("listing what to remove: %s", exc)
        if not failed:
            break
        time.sleep(1.0)
    return removed


def leftovers(settings: EnvSettings) -> list[str]:
    """Containers and networks of this environment that exist now (what `down` must leave
    none of)."""
    try:
        client = docker.from_env()
    except docker.errors.DockerException:
        return []
    selector = {"label": f"{LABEL}={settings.run_dir}"}
    names = [c.name for c in client.containers.list(all=True, filters=selector)]
    names += [f"network {n.name}" for n in client.networks.list(filters=selector)]
    return names


# ---- faults only containers can give ---------------------------------------------------------
#
# Plain functions of the settings, for chaos activities and tests. Each is undone by
# `restore_faults`, which `experiments.harness.restore_all` runs on this runtime.

#: The iptables chain a partition adds in a container's network namespace.
PARTITION_CHAIN = "CWH-PARTITION"


class NeedsContainers(RuntimeError):
    """A fault only the containers runtime can give, asked of another runtime."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs the containers runtime (CWH_RUNTIME=containers)")


def _require(settings: EnvSettings, what: str) -> None:
    if not network.containers(settings):
        raise NeedsContainers(what)


def _replica(settings: EnvSettings, replica: str, client: Any = None) -> Any:
    client = client or docker.from_env()
    return client.containers.get(container_name(settings, replica))


def _in_netns(pid: int, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `argv` (the host's iptables) in the network namespace of host pid `pid`."""
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, check=check
    )


def partition(settings: EnvSettings, replica: str, peers: Iterable[str]) -> dict[str, Any]:
    """Cut `replica` off from `peers` (replica names) in both directions: packets between them
    are dropped in `replica`'s network namespace, as a switch that failed would drop them,
    while everything else (clients, the host) still reaches it. Returns what was cut."""
    _require(settings, "a network partition")
    pid = int(_replica(settings, replica).attrs["State"]["Pid"])
    ips = sorted({network.host(settings, p) for p in peers})
    ipt = ("iptables", "-w", "5")
    _in_netns(pid, *ipt, "-N", PARTITION_CHAIN, check=False)  # exists after an earlier cut
    for hook in ("INPUT", "OUTPUT"):
        if _in_netns(pid, *ipt, "-C", hook, "-j", PARTITION_CHAIN, check=False).returncode:
            _in_netns(pid, *ipt, "-I", hook, "1", "-j", PARTITION_CHAIN)
    for ip in ips:
        _in_netns(pid, *ipt, "-A", PARTITION_CHAIN, "-s", ip, "-j", "DROP")
        _in_netns(pid, *ipt, "-A", PARTITION_CHAIN, "-d", ip, "-j", "DROP")
    return {"replica": replica, "peers": sorted(peers), "ips": ips, "pid": pid}


def partitioned_from(settings: EnvSettings, replica: str) -> list[str]:
    """The addresses `replica` is cut off from now (none when it is whole)."""
    _require(settings, "a network partition")
    pid = int(_replica(settings, replica).attrs["State"]["Pid"])
    done = _in_netns(pid, "iptables", "-w", "5", "-S", PARTITION_CHAIN, check=False)
    return sorted(
        {line.split()[3].split("/")[0] for line in done.stdout.splitlines() if " -s " in line}
    )


def heal(settings: EnvSettings, replica: str) -> bool:
    """Undo `partition` on `replica`; True when there was one."""
    _require(settings, "a network partition")
    try:
        pid = int(_replica(settings, replica).attrs["State"]["Pid"])
    except NotFound:
        return False  # gone, and its network namespace with it
    ipt = ("iptables", "-w", "5")
    had = False
    for hook in ("INPUT", "OUTPUT"):
        while _in_netns(pid, *ipt, "-D", hook, "-j", PARTITION_CHAIN, check=False).returncode == 0:
            had = True
    _in_netns(pid, *ipt, "-F", PARTITION_CHAIN, check=False)
    _in_netns(pid, *ipt, "-X", PARTITION_CHAIN, check=False)
    return had


def pause(settings: EnvSettings, replica: str) -> dict[str, Any]:
    """Freeze `replica` (`docker pause`: the cgroup freezer): it keeps its connections and
    answers nothing, without dying; nothing restarts it."""
    _require(settings, "a frozen container")
    c = _replica(settings, replica)
    c.pause()
    return {"replica": replica, "container": c.id[:12]}


def unpause(settings: EnvSettings, replica: str) -> bool:
    _require(settings, "a frozen container")
    c = _replica(settings, replica)
    c.reload()
    if c.status != "paused":
        return False
    c.unpause()
    return True


def set_limits(
    settings: EnvSettings, replica: str, cpu_m: int | None = None, memory_b: int | None = None
) -> dict[str, Any]:
    """Change `replica`'s CPU limit (millicores) and/or memory limit (bytes) now, as a node
    under pressure (or `kubectl set resources` with in-place resize) would."""
    _require(settings, "a run-time CPU or memory limit")
    c = _replica(settings, replica)
    update: dict[str, Any] = {}
    if cpu_m is not None:
        update["NanoCpus"] = int(cpu_m * 1_000_000)
    if memory_b is not None:
        update |= {"Memory": memory_b, "MemorySwap": memory_b}
    _update(c, update)
    return {"replica": replica, **update}


def reset_limits(settings: EnvSettings, replica: str) -> dict[str, Any]:
    """`replica`'s limits back to the settings' (`limits`)."""
    _require(settings, "a run-time CPU or memory limit")
    resources = _engine_limits(settings)
    _update(_replica(settings, replica), resources)
    return {"replica": replica, **resources}


def _engine_limits(settings: EnvSettings) -> dict[str, int]:
    """`limits` in the Engine API's field names (what `_update` posts)."""
    want = limits(settings)
    return {
        "NanoCpus": want["nano_cpus"],
        "Memory": want["mem_limit"],
        "MemorySwap": want["memswap_limit"],
    }


def _update(container: Any, resources: dict[str, Any]) -> None:
    """Docker's container update with the Engine API's own fields (docker-py's `update` knows
    no `NanoCpus`, and a container created with it refuses a CFS quota instead)."""
    api = container.client.api
    url = api._url("/containers/{0}/update", container.id)
    api._raise_for_status(api._post_json(url, data=resources))


def restore_faults(settings: EnvSettings) -> dict[str, list[str]]:
    """Every container of the environment whole again: partitions healed, frozen ones thawed,
    limits back to the settings'. Idempotent; the names of what was undone, by kind."""
    _require(settings, "restoring container faults")
    client = docker.from_env()
    want = _engine_limits(settings)
    done: dict[str, list[str]] = {"healed": [], "thawed": [], "limits": []}
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}={settings.run_dir}"}):
        name = c.labels.get(REPLICA_LABEL, "")
        if c.status == "paused":
            c.unpause()
            done["thawed"].append(name)
            c.reload()
        if c.status == "running" and heal(settings, name):
            done["healed"].append(name)
        host = c.attrs["HostConfig"]
        if any(host[field] != value for field, value in want.items()):
            with contextlib.suppress(APIError):  # exited meanwhile: its next start has them
                _update(c, want)
                done["limits"].append(name)
    return done
