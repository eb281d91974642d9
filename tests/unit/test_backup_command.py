"""The scheduler's base backup hands its password to pg_basebackup outside the command line
(anyone on the machine reads command lines with `ps`)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from reference_impl.scheduler import STATE, SchedulerState, create_app
from reference_impl.settings import ServiceSettings

PASSWORD = "S3cret-Pw_for-the-test"


def test_pg_basebackup_gets_no_password_on_its_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "seen"
    stub = bin_dir / "pg_basebackup"
    # A stand-in that records what it was given, then fails (nothing to back up here).
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {seen}.argv\nenv > {seen}.env\nexit 1\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = ServiceSettings(
        role="scheduler",
        name="scheduler1",
        port=1,
        state_dir=tmp_path / "state",
        backup_dsn=(
            f"postgresql://replicator:{PASSWORD}@127.0.0.1:1/?application_name=cwh_base_backup"
        ),
    )
    state = create_app(settings)[STATE]
    assert isinstance(state, SchedulerState)
    with pytest.raises(RuntimeError, match="pg_basebackup failed"):
        asyncio.run(state.take_base_backup())
    argv = Path(f"{seen}.argv").read_text()
    assert "replicator" in argv, argv  # it did run, with the connection
    assert PASSWORD not in argv, f"password on the command line: {argv}"
    assert f"PGPASSWORD={PASSWORD}" in Path(f"{seen}.env").read_text().splitlines()
