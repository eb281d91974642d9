"""A Ctrl-C in the middle of the restore: every remaining undo step still runs, then the
interrupt goes on (the outside review found the rest skipped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from env.settings import EnvSettings
from experiments import harness
from experiments.settings import ChaosSettings


def test_an_interrupted_step_leaves_the_others_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran: list[str] = []

    def step(name: str, interrupt: bool = False):  # type: ignore[no-untyped-def]
        def run(*_: object) -> bool:
            ran.append(name)
            if interrupt:
                raise KeyboardInterrupt
            return True

        return run

    monkeypatch.setattr(harness, "reset_toxics", step("toxics", interrupt=True))
    monkeypatch.setattr(harness, "_release_held", step("released"))
    monkeypatch.setattr(harness, "_reset_service_admin", step("admin"))
    monkeypatch.setattr(harness, "close_open_faults", step("faults"))
    monkeypatch.setattr(harness, "_wait_whole", step("healthy"))
    with pytest.raises(KeyboardInterrupt):
        harness.restore_all(ChaosSettings(EnvSettings(), tmp_path), wait_s=30)
    # Every undo ran (knobs and planted faults: the admin reset twice); the wait was skipped.
    assert ran == ["toxics", "released", "admin", "admin", "faults"]
