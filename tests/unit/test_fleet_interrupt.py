"""`interrupted_wait`: after Ctrl-C the fleet lets Locust finish writing what it ran; a Locust
that did not get the interrupt gets one SIGINT; one that ignores it is killed, bounded."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from cwh.fleet import interrupted_wait
from env.process import wait_until

GRACEFUL = """
import signal, sys, time, pathlib
def stop(*_):
    time.sleep(0.5)  # writing its ledgers
    pathlib.Path(sys.argv[1]).write_text("written")
    sys.exit(3)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
time.sleep(60)
"""

STUBBORN = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def _ready(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def _popen(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)


def test_a_locust_that_missed_the_interrupt_gets_one_and_finishes_writing(tmp_path):
    result = tmp_path / "result"
    with _popen(GRACEFUL, str(result)) as proc:
        assert interrupted_wait(_ready(proc), grace_s=0.2) == 3
    assert result.read_text() == "written"


def test_a_locust_that_ignores_sigint_is_killed_within_the_bounds():
    started = time.monotonic()
    with _popen(STUBBORN) as proc:
        try:
            assert interrupted_wait(_ready(proc), grace_s=0.2, signalled_s=1.0) == -9
        finally:
            if proc.poll() is None:
                proc.kill()
    assert time.monotonic() - started < 10


PARENT = """
import subprocess, sys
from rich.console import Console
from cwh import signals
from cwh.chaos import INTERRUPTS, _wait_through_interrupts
signals.install()
# Its own session: a SIGTERM to the parent does not reach it (as in a pod, or under a CI runner).
child = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE,
    start_new_session=True,
)
assert child.stdout.readline() == b"ready\\n"
print("ready", flush=True)
_wait_through_interrupts(child, Console(stderr=True))
print(child.returncode, INTERRUPTS.is_set(), flush=True)
"""


def _waiting(pid: int) -> bool:
    return Path(f"/proc/{pid}/wchan").read_text() == "do_wait"


def test_sigterm_stops_the_experiment_as_ctrl_c_does(tmp_path):
    """`kubectl delete pod` or a CI timeout sends SIGTERM to `cwh` alone: the experiment it
    waits for gets the SIGINT a Ctrl-C would have given it, and its rollbacks (here: writing)
    play before `cwh` returns."""
    result = tmp_path / "result"
    with _popen(PARENT, GRACEFUL, str(result)) as proc:
        _ready(proc)
        # Signalled once it waits for the experiment (a SIGTERM before that interrupts `cwh`
        # itself, with nothing of the experiment's to pass on).
        wait_until(lambda: _waiting(proc.pid), 10, "the parent waiting for its child")
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert out.decode().split() == ["3", "True"]
    assert result.read_text() == "written"
