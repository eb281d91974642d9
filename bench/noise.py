"""A noisy neighbour: processes that burn CPU beside the system under test.

A failure detector tuned for speed must not mistake a member starved of CPU for a dead one.
The no-fault soak runs with these beside the fleet so the machine's cores are contended as a
shared host's are. Each neighbour is a plain busy loop at the default priority; it exits by
itself when its parent is gone (a benchmark killed with SIGKILL leaves no spinner behind).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

#: The loop checks its parent between chunks of work small enough to notice it within ~10 ms.
#: The parent's pid comes as an argument: read at the child's start, it would be init's already
#: when the parent died while the child's interpreter was starting.
SPIN = "\n".join(
    [
        "import os, sys",
        "parent = int(sys.argv[1])",
        "while os.getppid() == parent:",
        "    sum(range(20000))",
    ]
)


@contextmanager
def noisy_neighbours(count: int) -> Iterator[list[int]]:
    """`count` busy processes for the block's duration (none for 0); their pids. Always
    stopped on leaving, also on an exception or Ctrl-C."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", SPIN, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time the neighbours have used so far (user + system), s; a gone one counts 0."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total
