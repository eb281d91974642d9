"""Who runs what: the service user runs Python components only when it can run our Python."""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from env.users import decide, python_usable_by

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def hidden_python() -> Iterator[str]:
    """Our interpreter behind a directory only root may enter (like a pyenv under /root)."""
    hidden = Path(tempfile.mkdtemp(prefix="cwh-hidden-", dir="/var/tmp"))
    hidden.chmod(0o700)
    (hidden / "python3").symlink_to(sys.executable)
    try:
        yield str(hidden / "python3")
    finally:
        shutil.rmtree(hidden)


def _cwh() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("cwh")
    except KeyError:
        pytest.skip("no 'cwh' user: run `make deps`")
    return entry.pw_uid, entry.pw_gid


def test_a_python_the_user_can_run_is_usable() -> None:
    assert python_usable_by(_cwh(), "/usr/bin/python3", ROOT, probe="import json") is None


def test_a_python_the_user_cannot_reach_keeps_python_components_on_root(
    hidden_python: str,
) -> None:
    problem = python_usable_by(_cwh(), hidden_python, ROOT)
    assert problem is not None
    assert "Permission denied" in problem or "PermissionError" in problem
    run_as = decide("cwh", ROOT, python=hidden_python)
    assert run_as.service == _cwh(), "non-Python components still drop root"
    assert run_as.python is None
    warning = run_as.python_fallback(["api1", "faultproxy"], python=hidden_python)
    assert warning is not None
    assert "api1, faultproxy run as root" in warning
    assert hidden_python in warning


def test_a_missing_user_runs_everything_as_root_with_a_warning() -> None:
    run_as = decide("no-such-user-cwh", ROOT)
    assert run_as.service is None
    assert run_as.python is None
    assert any("does not exist" in w for w in run_as.warnings)
