"""Command-line manners (issue #16, part 5): listings on standard output (so they pipe) and in
JSON on request, durations as Locust users type them, tables that fit 80 columns."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from cwh.chaos import catalogue
from cwh.cli import _print_status, status_table
from cwh.durations import parse_duration
from env.state import EnvStatus

CWH = str(Path(sys.executable).with_name("cwh"))


def cwh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CWH, *args], capture_output=True, text=True, timeout=120)


def test_chaos_list_goes_to_standard_output_one_line_each():
    proc = cwh("chaos", "list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == list(catalogue())


def test_chaos_list_json():
    proc = cwh("chaos", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [e["name"] for e in listed] == list(catalogue())
    assert all({"name", "title", "summary", "tags", "path"} <= set(e) for e in listed)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("2.5", 2.5),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("2h", 7200.0),
        (" 45S ", 45.0),
    ],
)
def test_durations_as_locust_users_type_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "1x", "-5", "1m1h", "1.5m", "nan", "inf", "10 m"])
def test_what_is_not_a_duration_is_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59))
def test_hours_minutes_seconds_add_up(h, m, s):
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + f"{s}s"
    assert parse_duration(text) == h * 3600 + m * 60 + s


def test_load_takes_a_duration_like_60s():
    # Refused before anything starts: USERS=0, so nothing runs; the duration itself is fine.
    proc = cwh("load", "--duration", "60s", "--users", "0", "--target", "https://127.0.0.1:9")
    assert proc.returncode == 2
    assert "invalid" not in proc.stderr
    assert "USERS=0" in proc.stderr
    proc = cwh("load", "--duration", "25h", "--target", "https://127.0.0.1:9")
    assert proc.returncode == 2
    assert "DURATION=90000" in " ".join(proc.stderr.split())
    proc = cwh("load", "--duration", "soon", "--target", "https://127.0.0.1:9")
    assert proc.returncode == 2
    assert "not a duration (like 90s, 10m, 1h30m" in proc.stderr


def test_a_worker_or_master_is_refused_before_anything_starts_when_misconfigured():
    proc = cwh("load", "--worker")
    assert proc.returncode == 2
    assert "--worker needs --master-host" in proc.stderr
    proc = cwh("load", "--worker", "--master-host", "10.0.0.1", "--master-port", "0")
    assert proc.returncode == 2
    assert "--master-port=0" in proc.stderr
    proc = cwh("load", "--master", "--worker")
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr


def test_env_status_table_is_one_line_per_component_in_80_columns():
    # A status recorded from `cwh env status --json` (passwords replaced).
    status = json.loads((Path(__file__).parent / "fixtures" / "env-status.json").read_text())
    out = Console(width=80, file=io.StringIO(), force_terminal=False)
    out.print(status_table(EnvStatus.from_json(status)))
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = [line.split() for line in text.splitlines() if line.strip().strip("─")]
    by_name = {r[0]: r for r in rows}
    assert set(by_name) >= {c["component"] for c in status["components"]}  # whole names
    assert len(rows) == len(status["components"]) + 2  # the title and the header: no wrapping
    pg0 = next(c for c in status["components"] if c["component"] == "pg0")
    assert f"{pg0['patroni_pid']}/{pg0['postgres_pid']}" in by_name["pg0"]


class _RecordedEnv:
    """A LocalEnvironment that answers `status()` with a recorded status."""

    def __init__(self, status: dict) -> None:
        self._status = status

    def status(self) -> dict:
        return self._status


def test_env_status_json_is_the_status_as_collected(capsys):
    # Typed reading must not reshape what scripts and `jq` read.
    status = json.loads((Path(__file__).parent / "fixtures" / "env-status.json").read_text())
    assert _print_status(_RecordedEnv(status), as_json=True) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out == json.dumps(status, indent=2, default=str) + "\n"
    assert _print_status(_RecordedEnv(status), as_json=False) == 0  # type: ignore[arg-type]
    text = capsys.readouterr().out
    assert status["secrets_file"] in text  # read through EnvStatus.secrets_file
