"""The versions of what a run ran on, recorded in its folder when the run starts (`stamp`), or
when its report is first made for a folder that has none."""

from __future__ import annotations

import json
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


def stamp_versions(folder: Path) -> dict[str, str]:
    """The versions in `folder`'s `versions.json`, written now when it has none: called as a
    run starts, so a report written at its end (or made again later) names the code that ran,
    not what was checked out meanwhile."""
    path = folder / "versions.json"
    if path.exists():
        try:
            return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except ValueError:
            pass
    found = collect()
    path.write_text(json.dumps(found, indent=2))
    return found


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
