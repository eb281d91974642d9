"""The pure parts of the Redis master partition: slots and keys, the summary, chaos.md."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from cwh.chaos import _redis_partition_lines
from experiments.redis_partition import (
    Write,
    error_code,
    hash_tag_for,
    owner_of,
    parse_nodes,
    summarize,
)

NODES = """\
a1 10.213.106.50:21250@31250 myself,master - 0 0 1 connected 0-5460
b2 10.213.106.51:21251@31251 master - 0 1700000000000 2 connected 5461-10922
c3 10.213.106.52:21252@31252 master,fail - 0 1700000000000 3 connected 10923-16383
d4 10.213.106.53:21253@31253 slave a1 0 1700000000000 1 connected
e5 10.213.106.54:21254@31254 master - 0 1700000000000 7 connected 10923-12000 12001 [12002->-b2]
"""


def test_cluster_nodes_are_parsed_with_their_slot_ranges() -> None:
    nodes = {n.node_id: n for n in parse_nodes(NODES)}
    assert nodes["a1"].slots == ((0, 5460),)
    assert nodes["a1"].port == 21250
    assert nodes["a1"].is_master
    assert nodes["d4"].master_id == "a1"
    assert not nodes["d4"].is_master
    assert nodes["c3"].failed
    # A single slot is a range of one; a slot being migrated is not served yet.
    assert nodes["e5"].slots == ((10923, 12000), (12001, 12001))


def test_the_owner_of_a_slot_is_a_live_master() -> None:
    nodes = parse_nodes(NODES)
    assert owner_of(nodes, 0).node_id == "a1"  # type: ignore[union-attr]
    # c3 claims it too, but failed: the promoted node serves it.
    assert owner_of(nodes, 11000).node_id == "e5"  # type: ignore[union-attr]
    assert owner_of(nodes, 16383) is None


@pytest.mark.parametrize("ranges", [[(0, 5460)], [(5461, 10922)], [(16383, 16383)], [(7, 7)]])
def test_a_hash_tag_lands_in_the_masters_slots(ranges: list[tuple[int, int]]) -> None:
    tag = hash_tag_for(ranges)
    lo, hi = ranges[0]
    # Any key carrying the tag hashes by the tag alone.
    for key in (tag, f"cwh:partition:{tag}:1:0", f"x{tag}y:99"):
        assert lo <= key_slot(key.encode()) <= hi


def test_error_replies_are_counted_by_their_code() -> None:
    from redis._parsers.base import BaseParser

    assert error_code(BaseParser.parse_error("CLUSTERDOWN The cluster is down")) == "CLUSTERDOWN"
    assert error_code(BaseParser.parse_error("MOVED 3999 10.0.0.1:6381")) == "MOVED"
    assert error_code(BaseParser.parse_error("NOPERM no permissions")) == "NOPERM"


def test_no_slots_no_tag() -> None:
    with pytest.raises(ValueError, match="no hash tag"):
        hash_tag_for([], limit=10)


def _w(n: int, outcome: str, done: float, error: str = "") -> Write:
    return Write(f"k{n}", str(n), outcome, done - 0.01, done, error)


def test_the_summary_times_from_the_cut_and_sorts_losses_by_when_they_were_acknowledged() -> None:
    writes = [
        _w(0, "ok", 99.5),  # before the cut
        _w(1, "ok", 100.5),
        _w(2, "ok", 101.5),
        _w(3, "fail", 102.2, "CLUSTERDOWN"),
        _w(4, "info", 102.7, "TimeoutError"),
        _w(5, "fail", 103.2, "CLUSTERDOWN"),
        _w(6, "ok", 104.0),  # after the promotion and the refusal
        _w(7, "ok", 111.0),  # after the heal
    ]
    out = summarize(
        writes, 100.0, 103.5, 110.0, lost=["k1", "k2", "k6"], unknown=["k7"], cut_done=100.6
    )
    # k1 was sent before every rule was in place: it may have reached the replica.
    assert out["acked_sent_after_cut_keys"] == ["k2", "k6"]
    assert out["accepted_while_cut"] == 3
    assert out["acked_while_cut_keys"] == ["k1", "k2", "k6"]
    assert out["refused_after_s"] == 2.2
    assert out["last_ack_after_s"] == 4.0
    assert out["promoted_after_s"] == 3.5
    assert out["healed_after_s"] == 10.0
    assert out["accepted_after_promotion"] == 1
    assert out["accepted_after_refusal"] == 1
    assert out["refused_while_cut"] == 2
    assert out["unanswered_while_cut"] == 1
    assert out["refusals"] == {"CLUSTERDOWN": 2}
    assert out["lost"] == 3
    assert out["lost_acked_after_promotion"] == 1
    assert out["lost_acked_before_cut"] == 0
    assert out["unknown"] == 1
    assert out["acknowledged"] == 5


def test_a_master_that_never_refused_and_was_never_replaced_says_so() -> None:
    out = summarize([_w(1, "ok", 100.5)], 100.0, None, 130.0)
    assert out["refused_after_s"] is None
    assert out["promoted_after_s"] is None
    assert out["accepted_after_promotion"] == 0
    assert out["lost"] == 0

    lines = " ".join(
        _redis_partition_lines(
            {
                **out,
                "master": "redis0",
                "cut_from": ["redis1", "redis2"],
                "cluster_node_timeout_s": 2.0,
                "rate_per_s": 20.0,
                "promoted": None,
            }
        )
    )
    assert "never refused a write before the partition healed (+30.0 s)" in lines
    assert "no replica was promoted before the partition healed" in lines


def test_chaos_md_says_what_the_isolated_master_did() -> None:
    writes = [_w(1, "ok", 100.5), _w(2, "ok", 101.5), _w(3, "fail", 102.2, "CLUSTERDOWN")]
    cut = {
        **summarize(writes, 100.0, 103.5, 130.0, lost=["k1", "k2"]),
        "master": "redis0",
        "cut_from": ["redis1", "redis2", "redis3"],
        "cluster_node_timeout_s": 2.0,
        "rate_per_s": 20.0,
        "promoted": "redis3",
    }
    text = " ".join(_redis_partition_lines(cut))
    assert "Redis master redis0 from redis1, redis2, redis3" in text
    assert "cluster-node-timeout 2 s" in text
    assert "accepted 2 writes while cut, last at +1.5 s" in text
    assert "refused writes from +2.2 s (CLUSTERDOWN)" in text
    assert "redis3 was promoted at +3.5 s" in text
    assert "Of its 2 acknowledged writes (20/s to its own port), 2 were lost" in text
    assert _redis_partition_lines(None) == []
