"""The supervisor's start as a graph: stages side by side, the first failure named and the rest
cancelled, a stop during start-up starting nothing more. The stages' work is replaced by
recordings: what is tested is the order and the ending, not the processes."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from env import supervisor as supervisor_module
from env.bootstrap import StartupError
from env.secrets import Secrets
from env.settings import EnvSettings
from env.supervisor import Component, Supervisor

#: A small graph of the real stage names: etcd and redis side by side, postgresql after etcd.
STAGES = ["etcd", "postgresql", "redis"]


def recording_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage_work
) -> tuple[Supervisor, list[str]]:
    sup = Supervisor(EnvSettings(base_port=21000, run_dir=tmp_path, services=False))
    secrets = Secrets.load_or_create(tmp_path / "secrets.json")
    events: list[str] = []
    monkeypatch.setattr(sup, "prepare", lambda: secrets)
    monkeypatch.setattr(sup, "define", lambda _: [(s, []) for s in STAGES])
    monkeypatch.setattr(
        supervisor_module, "client_tls_context", lambda _: ssl.create_default_context()
    )

    async def run_stage(
        stage: str, comps: list[Component], secrets: Secrets, tls: ssl.SSLContext
    ) -> None:
        events.append(f"start {stage}")
        try:
            await stage_work(stage)
        except asyncio.CancelledError:
            events.append(f"cancelled {stage}")
            raise
        events.append(f"ready {stage}")

    monkeypatch.setattr(sup, "run_stage", run_stage)
    return sup, events


def test_stages_run_side_by_side_and_the_status_says_which(tmp_path, monkeypatch):
    seen: list[str] = []

    async def work(stage: str) -> None:
        await asyncio.sleep(0.01)
        seen.append(sup.stage)

    sup, events = recording_supervisor(tmp_path, monkeypatch, work)
    asyncio.run(asyncio.wait_for(sup.start_all(), 10))
    assert sup.phase == "ready"
    assert sup.stage == ""
    assert events.index("start postgresql") > events.index("ready etcd")
    assert events.index("start redis") < events.index("ready etcd")  # side by side
    assert "etcd, redis" in seen


def test_the_first_failure_is_raised_and_the_stages_in_flight_are_cancelled(tmp_path, monkeypatch):
    async def work(stage: str) -> None:
        if stage == "etcd":
            await asyncio.sleep(0.01)
            raise StartupError("etcd", tmp_path / "etcd.log", "boom")
        await asyncio.sleep(60)

    sup, events = recording_supervisor(tmp_path, monkeypatch, work)
    with pytest.raises(StartupError, match="etcd did not become ready: boom"):
        asyncio.run(asyncio.wait_for(sup.start_all(), 10))
    assert "cancelled redis" in events
    assert "start postgresql" not in events  # its prerequisite failed


def test_an_unexpected_error_is_named_after_its_stage(tmp_path, monkeypatch):
    async def work(stage: str) -> None:
        if stage == "redis":
            raise KeyError("surprise")
        await asyncio.sleep(60)

    sup, _ = recording_supervisor(tmp_path, monkeypatch, work)
    with pytest.raises(StartupError) as info:
        asyncio.run(asyncio.wait_for(sup.start_all(), 10))
    assert info.value.component == "redis"
    assert "surprise" in info.value.reason


def test_stopping_during_start_up_cancels_it_and_starts_nothing_more(tmp_path, monkeypatch):
    async def work(stage: str) -> None:
        await asyncio.sleep(60)

    sup, events = recording_supervisor(tmp_path, monkeypatch, work)

    async def scenario() -> None:
        sup.starting = asyncio.create_task(sup.start_all())
        while "start etcd" not in events:
            await asyncio.sleep(0.001)
        await sup.shutdown()
        assert sup.starting.cancelled()
        assert sup.done.is_set()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert sorted(events) == ["cancelled etcd", "cancelled redis", "start etcd", "start redis"]
    assert sup.phase == "stopping"


def test_a_start_that_begins_after_a_stop_starts_no_stage(tmp_path, monkeypatch):
    """A stop (SIGTERM, `down`) can land before the start task runs: nothing may start then,
    for nobody would be left to stop it."""

    async def work(stage: str) -> None:
        return None

    sup, events = recording_supervisor(tmp_path, monkeypatch, work)

    async def scenario() -> None:
        await sup.shutdown()
        await sup.start_all()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert events == []
    assert sup.phase == "stopping"  # not "ready": nothing runs
