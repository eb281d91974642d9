"""A Redis node cut off from the cluster still answers PING: the hub's listener and the worker's
publisher read `cluster_state` instead (`reference_impl.stores`, `reference_impl.hub`)."""

from __future__ import annotations

import asyncio
import time

import pytest

from reference_impl.hub import Membership
from reference_impl.stores import cluster_state


def test_cluster_state_is_read_from_every_shape_redis_py_returns():
    assert cluster_state({"cluster_state": "ok", "cluster_slots_ok": "16384"}) == "ok"
    assert cluster_state("cluster_enabled:1\r\ncluster_state:fail\r\n") == "fail"
    assert cluster_state(b"cluster_state:ok\r\n") == "ok"
    assert cluster_state("cluster_enabled:1\r\n") == ""


class Node:
    """What the listener's own connection to its node answers to CLUSTER INFO."""

    def __init__(self, state: str) -> None:
        self.state = state

    async def execute_command(self, *args: object) -> str:
        assert args == ("CLUSTER INFO",)
        return f"cluster_state:{self.state}\r\n"


def watch(membership: Membership, seconds: float) -> float | None:
    """Run `check` as the listener's loop does (every 50 ms) for `seconds`: when it raised."""

    async def go() -> float | None:
        start = time.monotonic()
        try:
            while time.monotonic() - start < seconds:
                membership.check(time.monotonic())
                await asyncio.sleep(0.05)
        except ConnectionError:
            return time.monotonic() - start
        finally:
            membership.close()
        return None

    return asyncio.run(go())


def test_a_member_that_leaves_the_cluster_is_left_within_two_reads():
    left_after = watch(Membership(Node("fail"), member=True), 4.0)
    assert left_after is not None
    assert left_after < 2.5


def test_a_node_that_stays_in_the_cluster_is_kept():
    assert watch(Membership(Node("ok"), member=True), 2.5) is None


def test_a_node_taken_for_want_of_a_better_one_is_kept_a_while(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(Membership, "NON_MEMBER_S", 2.0)
    left_after = watch(Membership(Node("fail"), member=False), 5.0)
    assert left_after is not None
    assert 2.0 <= left_after < 4.0
