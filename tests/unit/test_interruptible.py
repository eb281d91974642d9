"""`cwh` commands take SIGINT back from an ignoring parent only as session leaders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell gives a background command
if sys.argv[1] == "leader":
    os.setsid()
from cwh.cli import interruptible
interruptible()
print("interrupts" if signal.getsignal(signal.SIGINT) is signal.default_int_handler else "ignores")
"""


def _probe(mode: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_session_leader_is_interrupted_by_sigint_even_when_it_came_in_ignored():
    assert _probe("leader") == "interrupts"


def test_a_command_in_its_callers_session_keeps_sigint_ignored():
    assert _probe("member") == "ignores"
