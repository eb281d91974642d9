"""A Redis node cut off from the cluster still answers PING: the hub's listener and the worker's
publisher read `cluster_state` instead (`reference_impl.stores`, `reference_impl.hub`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from reference_impl.hub import PROOF_LAG_S, SETTLE_S, ClusterView, Membership
from reference_impl.stores import cluster_state, publish_in_cluster


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
    left_after = watch(Membership(Node("fail"), member=True), 8.0)
    assert left_after is not None
    assert left_after < 5.0  # two reads a second apart, with room for a loaded machine


def test_a_node_that_stays_in_the_cluster_is_kept():
    assert watch(Membership(Node("ok"), member=True), 2.5) is None


def test_a_node_taken_for_want_of_a_better_one_is_kept_a_while(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(Membership, "NON_MEMBER_S", 2.0)
    left_after = watch(Membership(Node("fail"), member=False), 9.0)
    assert left_after is not None
    assert 2.0 <= left_after < 7.0


def run_until(membership: Membership, done: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Run `check` as the listener's loop does until `done()`, with a deadline."""

    async def go() -> None:
        limit = time.monotonic() + deadline_s
        while not done():
            assert time.monotonic() < limit, "not within the deadline"
            membership.check(time.monotonic())
            await asyncio.sleep(0.05)
        membership.close()

    asyncio.run(go())


def test_a_new_listener_is_unsure_until_its_first_read():
    membership = Membership(Node("ok"), member=True)
    assert membership.unsure(time.monotonic())
    run_until(membership, lambda: membership.epoch is not None)  # the first read is in
    assert not membership.unsure(membership.unsure_until)


def test_while_a_master_fails_the_listener_is_unsure_and_catches_up_until_sure_again():
    membership = Membership(Node("ok", flag=",fail"), member=True)
    run_until(membership, lambda: membership.epoch is not None)  # a failing master elsewhere
    now = time.monotonic()
    assert membership.unsure(now)
    # The subscription's own catch-up covers its first SETTLE_S; then one every SETTLE_S.
    assert not membership.catch_up_due(now)
    assert membership.catch_up_due(membership.since + SETTLE_S)
    assert not membership.catch_up_due(membership.since + SETTLE_S + 1)
    membership.unsure_until = now + 3 * SETTLE_S  # still failing meanwhile
    assert membership.catch_up_due(membership.since + 2 * SETTLE_S + 0.1)
    # Sure again SETTLE_S after the last sign: one more catch-up, then none.
    later = membership.unsure_until + 0.1
    assert not membership.unsure(later)
    assert membership.catch_up_due(later)
    assert not membership.catch_up_due(later + 1)
    # A pong proves only what was published PROOF_LAG_S before its ping.
    assert Membership.proven(100.0) == 100.0 - PROOF_LAG_S


def test_a_failing_replica_or_a_forgotten_master_without_slots_is_no_sign():
    info = "cluster_state:ok\r\ncluster_current_epoch:7\r\n"
    replica = NODES.replace("slave a1", "slave,fail a1").format(flag="")
    assert not ClusterView.parse(info, replica).failing
    ghost = NODES.format(flag="") + "d4 10.0.0.13:6379@16379 master,fail - 0 0 0 connected\n"
    assert not ClusterView.parse(info, ghost).failing


def test_redis_pys_parsed_answer_is_read_as_the_text_is():
    from redis.asyncio import Redis

    callbacks = Redis().response_callbacks
    info = callbacks["CLUSTER INFO"]("cluster_state:ok\r\ncluster_current_epoch:7\r\n")
    for flag, failing in (("", False), (",fail?", True)):
        nodes = callbacks["CLUSTER NODES"](NODES.format(flag=flag))
        assert ClusterView.parse(info, nodes) == ClusterView(True, "7", failing)


def test_a_failover_elsewhere_makes_the_listener_unsure():
    node = Node("ok")
    membership = Membership(node, member=True)
    run_until(membership, lambda: membership.epoch is not None)
    run_until(membership, lambda: not membership.unsure(time.monotonic()))
    node.epoch = 8  # a replica was promoted
    run_until(membership, lambda: membership.epoch == "8")
    assert membership.unsure(time.monotonic())


class Master:
    """A cluster client's node, as `publish_in_cluster` uses it."""

    def __init__(self, name: str, state: str = "ok", dead: bool = False) -> None:
        self.name, self.state, self.dead = name, state, dead
        self.published: list[tuple[object, ...]] = []

    async def execute_command(self, *args: object) -> object:
        if self.dead:
            raise ConnectionError(f"{self.name} refused")
        if args == ("CLUSTER INFO",):
            return {"cluster_state": self.state}
        self.published.append(args)
        return 1


class Cluster:
    """What `publish_in_cluster` asks of redis-py's cluster client."""

    def __init__(self, *masters: Master) -> None:
        self.masters = list(masters)
        self.publish_node: Master | None = None
        self.publish_checked_until = 0.0
        self.fallback: list[tuple[str, str]] = []

    def get_primaries(self) -> list[Master]:
        return self.masters

    async def publish(self, channel: str, message: str) -> int:
        self.fallback.append((channel, message))
        return 1


def test_publishing_moves_off_a_master_that_left_the_cluster_and_stays_put_otherwise():
    a, b, c = Master("a", state="fail"), Master("b", dead=True), Master("c")
    cluster = Cluster(a, b, c)
    asyncio.run(publish_in_cluster(cluster, "ch", "m1"))  # type: ignore[arg-type]
    assert cluster.publish_node is c
    assert c.published == [("PUBLISH", "ch", "m1")]
    # Back in the cluster, a is not chosen over c: the choice stays while c sees it whole.
    a.state, cluster.publish_checked_until = "ok", 0.0
    asyncio.run(publish_in_cluster(cluster, "ch", "m2"))  # type: ignore[arg-type]
    assert cluster.publish_node is c


def test_a_failing_publish_falls_back_to_redis_py_and_an_inconclusive_check_keeps_the_choice():
    a = Master("a")
    cluster = Cluster(a)
    asyncio.run(publish_in_cluster(cluster, "ch", "m1"))  # type: ignore[arg-type]
    assert cluster.publish_node is a
    a.dead, cluster.publish_checked_until = True, float("inf")  # dies between two checks
    asyncio.run(publish_in_cluster(cluster, "ch", "m2"))  # type: ignore[arg-type]
    assert cluster.fallback == [("ch", "m2")]  # not lost: redis-py's own choice took it
    assert cluster.publish_node is None
    # Nothing answers: nothing learned, and no master is chosen on no evidence.
    asyncio.run(publish_in_cluster(cluster, "ch", "m3"))  # type: ignore[arg-type]
    assert cluster.publish_node is None
    assert cluster.fallback[-1] == ("ch", "m3")
