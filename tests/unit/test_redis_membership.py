"""A Redis node cut off from the cluster still answers PING: the hub's listener and the worker's
publisher read `cluster_state` instead (`reference_impl.stores`, `reference_impl.hub`)."""

from __future__ import annotations

import asyncio
import time

import pytest

from reference_impl.hub import SETTLE_S, ClusterView, Membership
from reference_impl.stores import cluster_state


def test_cluster_state_is_read_from_every_shape_redis_py_returns():
    assert cluster_state({"cluster_state": "ok", "cluster_slots_ok": "16384"}) == "ok"
    assert cluster_state("cluster_enabled:1\r\ncluster_state:fail\r\n") == "fail"
    assert cluster_state(b"cluster_state:ok\r\n") == "ok"
    assert cluster_state("cluster_enabled:1\r\n") == ""


NODES = (
    "a1 10.0.0.10:6379@16379 myself,master - 0 0 1 connected 0-5460\n"
    "b2 10.0.0.11:6379@16379 master{flag} - 0 0 2 connected 5461-10922\n"
    "c3 10.0.0.12:6379@16379 slave a1 0 0 1 connected\n"
)


class Node:
    """What the listener's own connection to its node answers (CLUSTER INFO, CLUSTER NODES)."""

    def __init__(self, state: str, flag: str = "", epoch: int = 7) -> None:
        self.state, self.flag, self.epoch = state, flag, epoch

    async def execute_command(self, *args: object) -> str:
        if args == ("CLUSTER INFO",):
            return f"cluster_state:{self.state}\r\ncluster_current_epoch:{self.epoch}\r\n"
        assert args == ("CLUSTER NODES",)
        return NODES.format(flag=self.flag)


def test_a_view_says_whether_any_node_is_failing():
    info = "cluster_state:ok\r\ncluster_current_epoch:7\r\n"
    assert ClusterView.parse(info, NODES.format(flag="")) == ClusterView(True, "7", False)
    assert ClusterView.parse(info, NODES.format(flag=",fail?")).failing
    assert ClusterView.parse(info, NODES.format(flag=",fail")).failing
    assert not ClusterView.parse(info, NODES.format(flag=",nofailover")).failing


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


def test_while_a_node_fails_the_listener_is_unsure_and_catches_up_until_sure_again():
    node = Node("ok", flag=",fail")
    membership = Membership(node, member=True)
    assert watch(membership, 1.5) is None  # a failing node elsewhere: ours stays
    now = time.monotonic()
    assert membership.unsure(now)
    assert membership.catch_up_due(now)  # at once, then every SETTLE_S while unsure
    assert not membership.catch_up_due(now + 1)
    membership.unsure_until = now + 3 * SETTLE_S  # the node still failing meanwhile
    assert membership.catch_up_due(now + SETTLE_S + 0.1)
    assert not membership.catch_up_due(now + SETTLE_S + 1)
    # Sure again SETTLE_S after the last sign: one more catch-up, then none.
    later = membership.unsure_until + 0.1
    assert not membership.unsure(later)
    assert membership.catch_up_due(later)
    assert not membership.catch_up_due(later + 1)


def test_a_failover_elsewhere_makes_the_listener_unsure():
    node = Node("ok")
    membership = Membership(node, member=True)
    assert watch(membership, 1.3) is None
    assert not membership.unsure(time.monotonic())
    node.epoch = 8  # a replica was promoted
    assert watch(membership, 1.3) is None
    assert membership.unsure(time.monotonic())
