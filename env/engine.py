"""The Docker engine the containers runtime uses: the one that answers (`DOCKER_HOST`, or the
default socket), or Debian's `dockerd` started here when none does, and stopped again by the
command that started it once no container of ours is left.

Starting one needs root and the `docker.io` package (`make deps` installs it).
Its state lives in the usual places (`/var/lib/docker`, `/run/docker.sock`), so images built
once are there for the next run and for any Docker client; `STATE_DIR` records that we started
it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import docker
from docker.errors import DockerException

from env.process import DeadlineExceeded, pid_alive, wait_until

STATE_DIR = Path("/run/cwh-dockerd")
DATA_ROOT = Path(os.environ.get("CWH_DOCKER_DATA_ROOT", "/var/lib/docker"))
SOCKET = "unix:///var/run/docker.sock"


class EngineError(RuntimeError):
    """No Docker engine answers and none can be started here; the message says what to do."""


def answers() -> bool:
    """Whether a Docker engine answers the client's default address now."""
    try:
        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except DockerException:
        return False


def started_here() -> int | None:
    """The pid of the dockerd this project started, if it still runs."""
    try:
        pid = int((STATE_DIR / "dockerd.pid").read_text().strip())
        # A pid file outlives a SIGKILLed dockerd, and its number may be anyone's by now.
        is_dockerd = Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
    except (OSError, ValueError):
        return None
    return pid if (STATE_DIR / "ours").exists() and is_dockerd and pid_alive(pid) else None


def ensure(timeout_s: float = 60.0) -> bool:
    """A Docker engine that answers; True when this call started it.

    Raises:
        EngineError: none answers and none can be started (not root, or no `dockerd`)."""
    if answers():
        return False
    if os.environ.get("DOCKER_HOST"):
        raise EngineError(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer")
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineError(
            "no Docker engine answers and dockerd is not installed: "
            "apt-get install docker.io (or start Docker Desktop)"
        )
    if os.geteuid() != 0:
        raise EngineError("no Docker engine answers; starting dockerd needs root")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / "dockerd.pid").unlink(missing_ok=True)  # an old one names nobody of ours
    argv = [
        "setsid",
        "--fork",  # not our child: it outlives this command (until `down` stops it)
        dockerd,
        f"--data-root={DATA_ROOT}",
        f"--host={SOCKET}",
        f"--pidfile={STATE_DIR / 'dockerd.pid'}",
        f"--exec-root={STATE_DIR / 'exec'}",
    ]
    with open(STATE_DIR / "dockerd.log", "ab") as log:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True)
    (STATE_DIR / "ours").write_text("started by cwh\n")
    try:
        wait_until(answers, timeout_s, interval_s=0.5, what="dockerd answering")
    except DeadlineExceeded:
        stop_if_ours("", timeout_s=10)  # not left running half-started
        raise EngineError(
            f"dockerd did not answer in {timeout_s:g} s: {STATE_DIR}/dockerd.log"
        ) from None
    return True


def stop_if_ours(label: str, timeout_s: float = 30.0) -> bool:
    """Stop the dockerd this project started, unless a container with `label` (any
    environment's) still exists; True when it was stopped."""
    pid = started_here()
    if pid is None:
        return False
    if label:
        try:
            client = docker.from_env(timeout=5)
            if client.containers.list(all=True, filters={"label": label}):
                return False
        except DockerException:
            return False  # cannot tell whether anyone's containers are on it: leave it
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not pid_alive(pid), timeout_s, interval_s=0.2, what="dockerd exit")
    except DeadlineExceeded:
        os.kill(pid, signal.SIGKILL)
    (STATE_DIR / "ours").unlink(missing_ok=True)
    return True
