"""Which OS user runs what: nothing stays root that need not.

PostgreSQL, Patroni and pgBouncer run as the PostgreSQL user (they refuse root). Everything else
the environment starts runs as one unprivileged system user (`cwh`, made by `tools/deps.sh`):
etcd, Redis, Prometheus, the exporters, HAProxy's workers (HAProxy drops privileges itself),
and, when that user can run this project's Python, the fault proxy and the reference
implementation's services. A venv whose interpreter lives where the user cannot read (a pyenv
under /root, a clone in a private home) keeps those on root, with a warning.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: What a Python component imports first: if this runs as the user, the component can.
PYTHON_PROBE = "import aiohttp, asyncpg, redis, cryptography, env.faultproxy, reference_impl.api"


@dataclass
class RunAs:
    """The users components run as, decided once per supervisor start.

    Attributes:
        service: (uid, gid) of the service user for non-Python components; None when we are
            not root (nothing to drop) or the user is missing (then with a warning).
        python: the same for Python components, or None when the user cannot run our Python.
        name: the service user's name.
        python_problem: why the service user cannot run our Python (None when it can).
        warnings: why something runs as root that should not; shown by `cwh env status`.
    """

    service: tuple[int, int] | None
    python: tuple[int, int] | None
    name: str
    python_problem: str | None = None
    warnings: list[str] = field(default_factory=list)

    def python_fallback(self, names: list[str], python: str = sys.executable) -> str | None:
        """The warning for the Python components `names` that stay on root, or None."""
        if self.python is not None or self.service is None or not names:
            return None
        return (
            f"{', '.join(names)} run as root: user {self.name!r} cannot run {python} with "
            f"this project ({self.python_problem}); put the venv and the project where "
            f"{self.name!r} can read them (not under a private home such as /root)"
        )


def python_usable_by(
    ids: tuple[int, int], python: str, project_root: Path, probe: str = PYTHON_PROBE
) -> str | None:
    """None when `python` runs `probe` (this project's imports) as (uid, gid); else why not
    (the last line of its error output)."""
    try:
        proc = subprocess.run(
            [python, "-c", probe],
            user=ids[0],
            group=ids[1],
            extra_groups=[],
            env={"PYTHONPATH": str(project_root), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd="/",
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return repr(exc)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def decide(service_user: str, project_root: Path, python: str = sys.executable) -> RunAs:
    """Who runs what, for a supervisor running as the current user."""
    if os.geteuid() != 0:
        return RunAs(service=None, python=None, name=pwd.getpwuid(os.geteuid()).pw_name)
    try:
        entry = pwd.getpwnam(service_user)
    except KeyError:
        warning = (
            f"user {service_user!r} does not exist: every component but PostgreSQL runs as "
            "root (run `make deps`, which creates it, or set CWH_SERVICE_OS_USER)"
        )
        return RunAs(service=None, python=None, name="root", warnings=[warning])
    ids = (entry.pw_uid, entry.pw_gid)
    why = python_usable_by(ids, python, project_root)
    if why is None:
        return RunAs(service=ids, python=ids, name=service_user)
    return RunAs(service=ids, python=None, name=service_user, python_problem=why)
