"""How Patroni is started: Debian's Patroni 3.0.2 with one upstream fix backported.

Patroni tells a running postmaster from a stale `postmaster.pid` by comparing the file's start
time with the process's creation time, within 3 s. psutil derives the creation time from the
kernel's boot time, which moves when the wall clock is stepped against the monotonic clock, as
it is on this machine's VM: CI measured 21 s of drift within ten minutes. Past 3 s Patroni takes
the live postmaster for a stale file, cannot start PostgreSQL ("lock file postmaster.pid already
exists"), and tells pg_ctl to ignore the lock: a member whose Patroni restarted beside its
running postmaster (tests/env/test_pg_failover.py's SIGKILLed Patroni) never came back, and a
second postmaster on the same data directory is one step away. Upstream fixed it in Patroni
PR #3516 (issue #2792): when the times differ, the process still is the postmaster if its
executable is postgres and its working directory is the data directory. `PATCH` installs that
check; `patroni_argv` runs Patroni's own entry point after it, with the system's Python (the
Debian package's), as `/usr/bin/patroni` would. The Kubernetes manifests run `/usr/bin/patroni`
itself: there Patroni is its container's first process, and a postmaster never outlives it.

A second fix, for the same reason (the process Patroni watches is not its child): a postmaster
that died (a SIGKILL, a crash) stays a zombie until its parent reaps it. Its parent is the
machine's init, and this VM's reaps orphans 1.0-1.8 s late (measured: SIGKILL to gone from
/proc). psutil calls a zombie running, so Patroni "fell back to the cached role" for one or two
more loops and answered HAProxy's /primary check with 200 meanwhile: bench-chaos measured the
crash's write RTO at 5.3-5.5 s against a model bound of 4 s under the fast profile, the extra
1-2.5 s all in that wait. A zombie is not running, and not a postmaster: `PATCH` says so where
Patroni decides the member's state, as pg_auto_failover did for the same defect (its issue
#1166).
"""

from __future__ import annotations

#: The backport, run before Patroni's main (also by the test, without the main).
PATCH = """
import os, psutil
from patroni.postgresql import postmaster as _pm

_by_start_time = _pm.PostmasterProcess._is_postmaster_process


def _zombie(proc):
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_postmaster_process(self):
    if _zombie(self):
        return False
    if _by_start_time(self):
        return True
    try:
        if self.pid in (os.getpid(), os.getppid()) or self.ppid() == os.getpid():
            return False
        data_dir = self._postmaster_pid.get("data_dir") or ""
        ours = (
            os.path.basename(self.exe()) in ("postgres", "postmaster")
            and bool(data_dir)
            and os.path.realpath(self.cwd()) == os.path.realpath(data_dir)
        )
    except (psutil.Error, OSError):
        return False
    if ours:
        _pm.logger.info("Process %s is the postmaster: postgres, in %s", self.pid, data_dir)
    return ours


_pm.PostmasterProcess._is_postmaster_process = _is_postmaster_process

# The member's state only (the HA loop, the REST API's role answers): Patroni's stop paths keep
# psutil's view, where a zombie runs until reaped, so a clean stop still waits for the shutdown
# checkpoint and releases the leader key with its location, as before.
from patroni.postgresql import Postgresql as _Postgresql

_state_is_running = _Postgresql.is_running


def _is_running(self):
    proc = _state_is_running(self)
    if proc and _zombie(proc):
        self._postmaster_proc = None
        return None
    return proc


_Postgresql.is_running = _is_running
"""

MAIN = """
import sys
from patroni.__main__ import main
sys.argv[0] = "patroni"
sys.exit(main())
"""

#: The system's Python, which Debian's Patroni package is installed for.
SYSTEM_PYTHON = "/usr/bin/python3"


def patroni_argv(config: str) -> list[str]:
    """Patroni with the backport, reading `config` (its argv[1], as `/usr/bin/patroni`)."""
    # -P: `-c` would put the working directory (the member's, which its user can write) first
    # on the import path, ahead of the packages Patroni imports; /usr/bin/patroni did not.
    return [SYSTEM_PYTHON, "-P", "-c", PATCH + MAIN, config]
