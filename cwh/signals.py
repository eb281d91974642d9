"""SIGTERM as Ctrl-C: what `kubectl delete pod`, a CI job's timeout or `systemctl stop` send.

Ctrl-C reaches the terminal's whole process group: `cwh` and the process it waits for (Chaos
Toolkit, Locust) each get SIGINT and each stops in order, rollbacks first. SIGTERM reaches `cwh`
alone. Turned into the same KeyboardInterrupt here, and passed on as SIGINT to the child `cwh`
waits for (`pass_on`), it stops the same way: rollbacks play, what ran is reconciled.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from types import FrameType

#: Set once SIGTERM arrived: the children did not get it.
TERMINATED = threading.Event()


def _on_term(signum: int, frame: FrameType | None) -> None:
    TERMINATED.set()
    raise KeyboardInterrupt


def install() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _on_term)


#: Children already given their SIGINT: once each.
_PASSED: set[int] = set()


def pass_on(proc: subprocess.Popen[bytes]) -> None:
    """After a KeyboardInterrupt: the child gets SIGINT if only we were signalled (SIGTERM),
    once. A Ctrl-C already reached it, and a second SIGINT would cut its rollbacks short."""
    if TERMINATED.is_set() and proc.poll() is None and proc.pid not in _PASSED:
        _PASSED.add(proc.pid)
        proc.send_signal(signal.SIGINT)
