"""Processes: finding them by the run directory they belong to, and stopping them for sure.

Every process the environment starts carries `CWH_ENV_MEMBER=<run dir>` in its environment.
Children inherit it, including the postmasters Patroni detaches with `setsid`, so after a crash or
a killed supervisor, `down` still finds everything that belongs to a run directory and stops it.
(A variable of its own, not `CWH_RUN_DIR`: a user may export that one in the shell that runs
`cwh env down`, and the shell must not count as part of the environment.)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

MARKER = "CWH_ENV_MEMBER"

T = TypeVar("T")


class Proc(Protocol):
    """What the supervisor uses of a replica's process: `asyncio.subprocess.Process` on the
    local runtime, `env.containers.ContainerProcess` on the containers runtime."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class DeadlineExceeded(TimeoutError):
    """A condition polled with `wait_until` did not hold in time; the message says which."""


def wait_until(
    check: Callable[[], T | None],
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
) -> T:
    """Poll `check` until it returns something truthy, and return that.

    Exceptions from `check` count as "not yet" (a service that is starting refuses connections);
    the last one is chained to the `DeadlineExceeded` raised after `timeout_s` seconds.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise DeadlineExceeded(f"{what}: not true after {timeout_s:.1f} s{detail}") from (
                last_error
            )
        time.sleep(interval_s)


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state is the field after the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    cmdline: str


def _read_proc(pid: int) -> ProcInfo | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    return ProcInfo(pid=pid, ppid=ppid, cmdline=cmd)


#: Server binaries the environment runs. PostgreSQL and Redis rewrite their process titles over
#: the memory that held their environment, so the marker is gone from /proc/<pid>/environ; such a
#: process belongs to the run directory when its working directory or command line is inside it.
#: Only these binaries are matched that way, so a user's shell sitting in the run directory is safe.
SERVER_BINARIES = frozenset(
    {
        "postgres",
        "redis-server",
        # Debian's redis-server is a link to redis-check-rdb: /proc/<pid>/exe names the target.
        "redis-check-rdb",
        "haproxy",
        "pgbouncer",
        "etcd",
        "prometheus",
        "prometheus-postgres-exporter",
        "prometheus-redis-exporter",
    }
)


def _belongs(pid: int, marker: bytes, prefix: str, cmdline: str) -> bool:
    try:
        if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return True
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    if exe not in SERVER_BINARIES:
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd") + "/"
    except OSError:
        cwd = ""
    return cwd.startswith(prefix) or prefix in cmdline


def processes_of(run_dir: Path) -> list[ProcInfo]:
    """Live processes of the environment in `run_dir` (the caller excluded): those carrying its
    marker, and server binaries working inside it (see `SERVER_BINARIES`)."""
    marker = f"{MARKER}={run_dir}".encode()
    prefix = str(run_dir).rstrip("/") + "/"
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        info = _read_proc(pid)
        if info is None or not pid_alive(pid):
            continue
        if _belongs(pid, marker, prefix, info.cmdline):
            found.append(info)
    return found


def terminate_then_kill(pids: Iterable[int], grace_s: float, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to each pid, wait up to `grace_s` for all to exit, then SIGKILL the rest."""
    pending = {p for p in pids if pid_alive(p)}
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if pid_alive(p)}
        if pending:
            time.sleep(0.05)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if pid_alive(p)}
        if pending:
            time.sleep(0.05)


def user_ids(name: str) -> tuple[int, int] | None:
    """(uid, gid) of `name` when we are root and may switch to it; None to stay who we are."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"user {name!r} does not exist: install postgresql-15 (make deps) or set CWH_PG_OS_USER"
        ) from None
    return entry.pw_uid, entry.pw_gid


def chown_tree(path: Path, ids: tuple[int, int] | None) -> None:
    """Give `path` and everything below it to (uid, gid); no-op when `ids` is None."""
    if ids is None:
        return
    uid, gid = ids
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def check_traversable(path: Path, user: str) -> None:
    """Raise when `user` cannot reach `path` (every parent needs the x bit for others)."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        mode = parent.stat().st_mode
        owner = parent.stat().st_uid
        if owner != pwd.getpwnam(user).pw_uid and not mode & 0o001:
            raise RuntimeError(
                f"{parent} is not traversable by the {user!r} user, which runs PostgreSQL: "
                f"choose another CWH_RUN_DIR (the default lives under /var/tmp)"
            )


def host_pid(main_pid: int, ns_pid: int) -> int | None:
    """The host pid of the process numbered `ns_pid` inside the pid namespace of the container
    whose main process is host pid `main_pid` (PostgreSQL's postmaster.pid holds the former)."""
    try:
        ns = os.readlink(f"/proc/{main_pid}/ns/pid")
    except OSError:
        return None
    with os.scandir("/proc") as entries:
        pids = [e.name for e in entries if e.name.isdigit()]
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != ns:
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                        return int(pid)
        except (OSError, ValueError):
            continue
    return None
