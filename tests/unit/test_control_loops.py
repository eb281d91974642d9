"""The supervisor's control loops (HAProxy's servers, the autoscaler) are never left dead: one
that ends is logged and started again, until the supervisor stops."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from env.settings import EnvSettings
from env.supervisor import Supervisor


def test_a_control_loop_that_dies_is_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    runs: list[int] = []

    async def scenario() -> None:
        sup = Supervisor(EnvSettings(base_port=21000, run_dir=tmp_path))

        async def loop() -> None:
            runs.append(len(runs))
            if len(runs) < 3:
                raise RuntimeError(f"boom {len(runs)}")
            while not sup.stopping:
                await asyncio.sleep(0.01)

        sup.control("test-loop", loop)
        for _ in range(500):  # polled: the restarts happen on the loop's next turns
            if len(runs) >= 3:
                break
            await asyncio.sleep(0.01)
        task = sup.controllers["test-loop"]
        assert not task.done()  # the third run is alive
        sup.stopping = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert len(runs) == 3  # stopping ends the restarts

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    died = [
        r.getMessage() for r in caplog.records if "control loop test-loop ended" in r.getMessage()
    ]
    assert len(died) == 2, died
    assert "boom 1" in died[0]
