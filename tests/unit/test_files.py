"""Files of the run directory: secrets are private from the moment they exist, and a run
directory that someone else controls is refused."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from env.local import LocalEnvironment
from env.settings import EnvSettings
from env.supervisor import Supervisor
from reference_impl import keyset

#: Set while a test watches chmod calls (an audit hook cannot be removed, only made inert).
_WATCH: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Before a chmod takes effect: a regular file with content that is about to lose group or
    other bits was readable by them until now (the write-then-chmod window)."""
    if _WATCH is None or event != "os.chmod":
        return
    target, mode = args[0], args[1]
    try:
        st = os.fstat(target) if isinstance(target, int) else os.stat(target)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_size > 0 and st.st_mode & 0o077 & ~mode:
        _WATCH.append(f"{target}: was {stat.filemode(st.st_mode)} with content before chmod")


sys.addaudithook(_audit)


@pytest.fixture
def chmod_windows() -> Iterator[list[str]]:
    global _WATCH
    _WATCH = []
    try:
        yield _WATCH
    finally:
        _WATCH = None


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: a file created without an explicit mode comes out world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A fresh folder under /var/tmp (pytest's own are 0700 under /tmp/pytest-of-<user>, which
    the `postgres` user cannot traverse: every run directory would be refused for that)."""
    path = Path(tempfile.mkdtemp(prefix="cwh-unit-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _settings(run_dir: Path) -> EnvSettings:
    return EnvSettings(base_port=18000, run_dir=run_dir)


def _secret_files(run_dir: Path) -> dict[Path, int]:
    """Every file below `run_dir` that holds a password of secrets.json or key material."""
    values = [v.encode() for v in json.loads((run_dir / "secrets.json").read_text()).values()]
    found = {}
    for path in run_dir.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if any(v in data for v in values) or b"PRIVATE KEY" in data or path.name.endswith(".key"):
            found[path] = path.stat().st_mode
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="prepare() hands files to other OS users")
def test_prepare_creates_every_secret_file_private_from_the_start(
    tmp_path: Path, chmod_windows: list[str], open_umask: None
) -> None:
    run_dir = tmp_path / "run"
    Supervisor(_settings(run_dir)).prepare()
    files = _secret_files(run_dir)
    names = {p.name for p in files}
    # The detection itself works: these hold secrets by construction.
    assert {
        "secrets.json",
        "patroni.yml",
        "userlist.txt",
        "haproxy.cfg",
        "tls.pem",
        keyset.KEYSET_FILE,
        "field-encryption.key",
    } <= names, names
    loose = {str(p): stat.filemode(m) for p, m in files.items() if m & 0o777 not in (0o600, 0o640)}
    # Both at once: files left open to others, and files that were open until a chmod.
    assert (loose, chmod_windows) == ({}, []), "secret files readable by others"
    # A second start (configs rendered again) keeps them private, even one a user loosened.
    (run_dir / "haproxy" / "haproxy.cfg").chmod(0o644)
    Supervisor(_settings(run_dir)).prepare()
    files = _secret_files(run_dir)
    loose = {str(p): stat.filemode(m) for p, m in files.items() if m & 0o777 not in (0o600, 0o640)}
    assert loose == {}, f"after a second prepare: {loose}"
    assert chmod_windows == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_run_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(run_dir, nobody.pw_uid, nobody.pw_gid)
    settings = _settings(run_dir)
    for attempt in (LocalEnvironment(settings)._preflight, Supervisor(settings).prepare):
        with pytest.raises(RuntimeError) as refused:
            attempt()
        message = str(refused.value)
        assert str(run_dir) in message
        assert "nobody" in message
        assert "CWH_RUN_DIR" in message  # what to do instead
    assert list(run_dir.iterdir()) == [], "nothing written into the untrusted directory"


def test_a_group_or_world_writable_run_dir_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for mode in (0o777, 0o775):
        run_dir.chmod(mode)
        with pytest.raises(RuntimeError, match="writable"):
            LocalEnvironment(_settings(run_dir))._preflight()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_run_dir_that_is_another_users_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "run"
    link.symlink_to(target)
    nobody = pwd.getpwnam("nobody")
    os.lchown(link, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(RuntimeError, match="nobody"):
        LocalEnvironment(_settings(link))._preflight()


def test_a_fresh_run_dir_is_created_and_trusted(tmp_path: Path) -> None:
    run_dir = tmp_path / "a" / "run"
    LocalEnvironment(_settings(run_dir))._preflight()
    st = run_dir.stat()
    assert st.st_uid == os.geteuid()
    assert not st.st_mode & 0o022


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_rotated_key_set_keeps_its_owner(tmp_path: Path) -> None:
    """`cwh env rotate-keys` runs as root; services running as the service user must still
    read the key set it rewrites."""
    path = tmp_path / keyset.KEYSET_FILE
    keyset.ensure(path)
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    keyset.add_key(path)
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert st.st_mode & 0o777 == 0o600
