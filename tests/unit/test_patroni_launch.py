"""Patroni as the environment runs it (env/patroni_launch.py): a live postmaster whose pid
file's start time is off by more than Patroni's 3 s (the wall clock stepped against the boot
time psutil counts from) is still recognised, and only the right process is."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from env.patroni_launch import MAIN, PATCH, SYSTEM_PYTHON, patroni_argv
from env.process import wait_until

#: What Patroni concludes from the data directory's postmaster.pid.
ASK = """
import sys
from patroni.postgresql.postmaster import PostmasterProcess
print(PostmasterProcess.from_pidfile(sys.argv[1]) is not None)
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def _fake_postmaster(
    tmp_path: Path, started: list[subprocess.Popen[bytes]], name: str, cwd: Path, drift_s: int
) -> Path:
    """A process named `name` running in `cwd`, and a data directory whose postmaster.pid
    names it with a start time `drift_s` seconds off its creation time."""
    exe = tmp_path / "bin" / name
    exe.parent.mkdir(exist_ok=True)
    shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "300"], cwd=cwd)
    started.append(proc)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    _write_pid_file(data, proc.pid, int(psutil.Process(proc.pid).create_time()) - drift_s)
    return data


def _write_pid_file(data: Path, pid: int, start: int) -> None:
    """postmaster.pid as PostgreSQL writes it: pid, data directory, start time, port, ..."""
    (data / "postmaster.pid").write_text(f"{pid}\n{data}\n{start}\n5432\n/tmp\n*\n0 0\nready\n")


def _ask(question: str, data: Path, patched: bool) -> str:
    """The last line `question` prints about `data`, asked of Patroni with or without PATCH."""
    code = (PATCH if patched else "") + question
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", code, str(data)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def _recognised(data: Path, patched: bool) -> bool:
    return _ask(ASK, data, patched) == "True"


def test_a_live_postmaster_is_recognised_whatever_the_clock_did(tmp_path, processes):
    data = tmp_path / "data"
    data.mkdir()
    _fake_postmaster(tmp_path, processes, "postgres", data, drift_s=21)
    # The defect (CI: 21 s of drift): Patroni 3.0.2 alone takes it for a stale pid file.
    assert not _recognised(data, patched=False)
    assert _recognised(data, patched=True)


def test_without_drift_both_agree(tmp_path, processes):
    data = tmp_path / "data"
    data.mkdir()
    _fake_postmaster(tmp_path, processes, "postgres", data, drift_s=0)
    assert _recognised(data, patched=False)
    assert _recognised(data, patched=True)


@pytest.mark.parametrize(("name", "in_data_dir"), [("postgres", False), ("sleep", True)])
def test_another_process_with_the_pid_is_not_taken_for_the_postmaster(
    tmp_path, processes, name, in_data_dir
):
    data = tmp_path / "data"
    data.mkdir()
    _fake_postmaster(tmp_path, processes, name, data if in_data_dir else tmp_path, drift_s=21)
    assert not _recognised(data, patched=True)


def test_patroni_starts_through_the_launcher():
    out = subprocess.run(patroni_argv("--version"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("patroni ")
    assert patroni_argv("x")[1:] == ["-P", "-c", PATCH + MAIN, "x"]


def test_the_working_directory_shadows_nothing(tmp_path):
    """Patroni runs in its member's directory, which that member's user can write: a module
    there must not be imported in place of Patroni's own (`-c` alone would put it first)."""
    (tmp_path / "psutil.py").write_text("raise SystemExit('shadowed')\n")
    argv = patroni_argv("--version")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("patroni ")


#: Patroni's two questions about a postmaster it found earlier: is the member's postgres
#: running, and does the pid file still name a postmaster.
ASK_RUNNING = """
import sys
from patroni.postgresql import Postgresql
from patroni.postgresql.postmaster import PostmasterProcess
pg = Postgresql.__new__(Postgresql)  # only what is_running() reads
pg._data_dir = sys.argv[1]
pg._postmaster_proc = PostmasterProcess._from_pidfile(sys.argv[1])
pg.slots_handler = type("Slots", (), {"schedule": lambda self: None})()
print(pg.is_running() is not None, PostmasterProcess.from_pidfile(sys.argv[1]) is not None)
"""

#: The zombie's parent: starts the fake postmaster, kills it on "kill", never reaps it. Not this
#: process: the suite imports Locust, whose gevent reaps the children of every Popen at once.
PARENT = """
import os, sys
pid = os.fork()
if pid == 0:
    os.chdir(sys.argv[2])
    os.execv(sys.argv[1], [sys.argv[1], "300"])
print(pid, flush=True)
sys.stdin.readline()
os.kill(pid, 9)
print("killed", flush=True)
sys.stdin.readline()  # until the test closes stdin; the zombie goes with this process
"""


def _answers(data: Path, patched: bool) -> str:
    return _ask(ASK_RUNNING, data, patched)


def test_a_killed_postmaster_not_yet_reaped_is_not_running(tmp_path):
    """A SIGKILLed postmaster is a zombie until its parent reaps it (in the environment: init,
    1-2 s late). Patroni alone takes it for a running postmaster, and so delays the failover;
    with the patch it is gone at once."""
    data = tmp_path / "data"
    data.mkdir()
    exe = tmp_path / "bin" / "postgres"
    exe.parent.mkdir()
    shutil.copy("/bin/sleep", exe)
    parent = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", PARENT, str(exe), str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdin is not None
    assert parent.stdout is not None
    try:
        pid = int(parent.stdout.readline())
        fake = psutil.Process(pid)
        wait_until(lambda: fake.name() == "postgres", 10, "the fake postmaster exec'd")
        _write_pid_file(data, pid, int(fake.create_time()))
        # The live process first: both answers agree it runs.
        assert _answers(data, patched=False) == "True True"
        assert _answers(data, patched=True) == "True True"
        parent.stdin.write("kill\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "killed"
        wait_until(lambda: fake.status() == psutil.STATUS_ZOMBIE, 10, "the killed process a zombie")
        assert _answers(data, patched=False) == "True True"  # the defect
        assert _answers(data, patched=True) == "False False"
    finally:
        parent.kill()
        parent.wait(timeout=10)
        parent.stdin.close()
        parent.stdout.close()
