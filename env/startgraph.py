"""Start stages as a dependency graph: each stage starts as soon as its prerequisites are ready.

The supervisor used to start the topology's stages one after another; most of them do not need
the one before (Redis does not wait for PostgreSQL, nor the backup servers for etcd), so a cold
start waited for the sum of every stage instead of its longest chain. What depends on what is
data (`env.topology.STAGE_PREREQUISITES`); this module only runs it.

Pure asyncio, no processes: `run` does a stage's work, so the scheduling is tested on its own
(`tests/unit/test_startgraph.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence


class GraphError(ValueError):
    """The prerequisites name a stage that is not known, or go round in a circle."""


def check(stages: Iterable[str], prerequisites: Mapping[str, Sequence[str]]) -> None:
    """Raise GraphError unless every stage has an entry, every prerequisite is a stage, and
    following prerequisites never comes back to where it began."""
    known = list(stages)
    for stage in known:
        if stage not in prerequisites:
            raise GraphError(f"stage {stage!r} has no prerequisites entry")
        for dep in prerequisites[stage]:
            if dep not in known:
                raise GraphError(f"stage {stage!r} waits for {dep!r}, which is no stage")
    # Depth-first: grey on the current path, black once every prerequisite below is done.
    colour: dict[str, str] = {}

    def visit(stage: str, path: list[str]) -> None:
        if colour.get(stage) == "black":
            return
        if colour.get(stage) == "grey":
            cycle = [*path[path.index(stage) :], stage]
            raise GraphError(f"the stages wait for each other: {' -> '.join(cycle)}")
        colour[stage] = "grey"
        for dep in prerequisites[stage]:
            visit(dep, [*path, stage])
        colour[stage] = "black"

    for stage in known:
        visit(stage, [])


def present(
    stages: Sequence[str], prerequisites: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """The prerequisites among `stages` only: a stage this environment does not have (no
    backups, no fault proxy) is waited for through its own prerequisites, as though it were
    ready at once."""
    here = set(stages)
    out: dict[str, tuple[str, ...]] = {}

    def effective(stage: str) -> list[str]:
        found: list[str] = []
        for dep in prerequisites.get(stage, ()):
            found += [dep] if dep in here else effective(dep)
        return found

    for stage in stages:
        out[stage] = tuple(dict.fromkeys(effective(stage)))
    return out


async def run_graph(
    stages: Sequence[str],
    prerequisites: Mapping[str, Sequence[str]],
    run: Callable[[str], Awaitable[None]],
    on_change: Callable[[list[str]], None] = lambda running: None,
) -> None:
    """Run `run(stage)` for every stage of `stages`, each once the stages it waits for
    (`prerequisites`, narrowed to `stages` by `present`) have returned.

    `on_change` is told the stages running now (in `stages`' order) whenever that changes.
    The first stage that raises ends the start: every other stage still running is cancelled
    (and waited for), nothing more starts, and its exception is raised. Cancelling the caller
    cancels every stage likewise.
    """
    deps = present(stages, prerequisites)
    check(stages, deps)
    done = {stage: asyncio.Event() for stage in stages}
    running: list[str] = []

    def changed() -> None:
        on_change([s for s in stages if s in running])

    async def one(stage: str) -> None:
        for dep in deps[stage]:
            await done[dep].wait()
        running.append(stage)
        changed()
        try:
            await run(stage)
        finally:
            running.remove(stage)
            changed()
        done[stage].set()

    tasks = [asyncio.create_task(one(s), name=f"stage-{s}") for s in stages]
    try:
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in tasks if t in finished and not t.cancelled() and t.exception()]
            if failed:  # two at once: the first in start order
                error = failed[0].exception()
                assert error is not None
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
