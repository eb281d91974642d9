"""The versions of what a run ran on, recorded in its folder when its report is first made."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The Debian packages of the local environment whose versions shape its behaviour.
PACKAGES = (
    "postgresql-15",
    "patroni",
    "etcd-server",
    "redis-server",
    "haproxy",
    "pgbouncer",
    "prometheus",
)
PYTHON_PACKAGES = ("locust", "chaostoolkit", "aiohttp", "asyncpg", "redis")


def collect() -> dict[str, str]:
    """harness commit, Python, the Python packages and the Debian packages (those installed)."""
    out = {"harness": _git_commit(), "python": platform.python_version()}
    for name in PYTHON_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out.update(_debian_versions())
    return out


def _git_commit() -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() or "unknown"


def _debian_versions() -> dict[str, str]:
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\\n", *PACKAGES],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "installed":
            out[parts[0]] = parts[1]
    return out
