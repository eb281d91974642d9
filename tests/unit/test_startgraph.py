"""Start stages as a graph: order, concurrency, the first failure, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from env import startgraph, topology
from env.startgraph import GraphError


def test_the_topologys_stages_form_a_graph_without_cycles():
    startgraph.check(topology.STAGES, topology.STAGE_PREREQUISITES)
    assert set(topology.STAGE_PREREQUISITES) == set(topology.STAGES)
    # STAGES is itself a start order: every prerequisite comes before its stage (stopping
    # goes backwards through it).
    for i, stage in enumerate(topology.STAGES):
        assert set(topology.STAGE_PREREQUISITES[stage]) <= set(topology.STAGES[:i]), stage


def test_the_true_dependencies_are_kept():
    waits = topology.waits_for
    assert {"etcd", "faultproxy", "backup"} <= waits("postgresql")
    assert "postgresql" in waits("pgbouncer")
    assert {"pgbouncer", "redis", "prometheus"} <= waits("services")
    # Only the scheduler, which takes the first backup, waits for pgBackRest's stanza.
    assert {"pgbouncer", "redis", "prometheus", "backup_stanza"} <= waits("scheduler")
    assert "backup_stanza" not in waits("services")
    # Redis and PostgreSQL start side by side; nothing waits for the synchronous standby.
    assert "postgresql" not in waits("redis")
    assert "redis" not in waits("postgresql")
    assert not any("sync_standby" in waits(s) for s in topology.STAGES)


def test_unknown_stages_and_cycles_are_refused():
    with pytest.raises(GraphError, match="'b' waits for 'x', which is no stage"):
        startgraph.check(["a", "b"], {"a": (), "b": ("x",)})
    with pytest.raises(GraphError, match="'b' has no prerequisites entry"):
        startgraph.check(["a", "b"], {"a": ()})
    with pytest.raises(GraphError, match="a -> c -> b -> a"):
        startgraph.check(["a", "b", "c"], {"a": ("c",), "b": ("a",), "c": ("b",)})


def test_an_absent_stage_is_waited_for_through_its_own_prerequisites():
    prereqs = {"a": (), "b": ("a",), "c": ("b",), "d": ()}
    assert startgraph.present(["a", "c", "d"], prereqs) == {"a": (), "c": ("a",), "d": ()}


def run(coro_fn):
    return asyncio.run(asyncio.wait_for(coro_fn(), 10))


def test_each_stage_starts_once_its_prerequisites_are_done_and_not_before():
    prereqs = {"a": (), "b": (), "c": ("a",), "d": ("b", "c")}
    events: list[str] = []
    seen_running: list[list[str]] = []
    release = {s: asyncio.Event() for s in prereqs}

    async def stage(name: str) -> None:
        events.append(f"start {name}")
        await release[name].wait()
        events.append(f"end {name}")

    async def scenario() -> None:
        task = asyncio.create_task(
            startgraph.run_graph(list(prereqs), prereqs, stage, seen_running.append)
        )

        async def until(what: str) -> None:
            while what not in events:
                await asyncio.sleep(0.001)

        await until("start b")
        assert "start a" in events  # a and b side by side
        assert seen_running[-1] == ["a", "b"]
        release["b"].set()
        await until("end b")
        await asyncio.sleep(0.01)
        assert "start d" not in events  # d still waits for c
        release["a"].set()
        await until("start c")
        release["c"].set()
        await until("start d")
        release["d"].set()
        await task

    run(scenario)
    assert events.index("start c") > events.index("end a")
    assert events.index("start d") > max(events.index("end b"), events.index("end c"))
    assert seen_running[-1] == []


def test_the_first_failure_cancels_the_others_and_starts_nothing_more():
    prereqs = {"slow": (), "bad": (), "after": ("bad",), "later": ("slow",)}
    started: list[str] = []
    cancelled: list[str] = []

    async def stage(name: str) -> None:
        started.append(name)
        if name == "bad":
            raise RuntimeError("bad broke")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="bad broke"):
            await startgraph.run_graph(list(prereqs), prereqs, stage)

    run(scenario)
    assert sorted(started) == ["bad", "slow"]
    assert cancelled == ["slow"]


def test_cancelling_the_start_cancels_every_stage():
    prereqs = {"a": (), "b": ("a",)}
    cancelled: list[str] = []

    async def scenario() -> None:
        started = asyncio.Event()

        async def stage(name: str) -> None:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        task = asyncio.create_task(startgraph.run_graph(list(prereqs), prereqs, stage))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario)
    assert cancelled == ["a"]  # b never started
