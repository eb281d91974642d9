"""`interrupted_wait`: after Ctrl-C the fleet lets Locust finish writing what it ran; a Locust
that did not get the interrupt gets one SIGINT; one that ignores it is killed, bounded."""

from __future__ import annotations

import subprocess
import sys
import time

from cwh.fleet import interrupted_wait

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
