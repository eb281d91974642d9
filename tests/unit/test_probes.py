from __future__ import annotations

from env.probes import (
    PgMember,
    haproxy_servers_up,
    parse_cluster_nodes,
    pg_cluster_ready,
    pg_streaming_ready,
    redis_cluster_ready,
)

NODES = """\
a1 127.0.0.1:17050@27050 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:17051@27051 master - 0 1 2 connected 5461-10922
c3 127.0.0.1:17052@27052 master - 0 1 3 connected 10923-16383
d4 127.0.0.1:17053@27053 slave a1 0 1 1 connected
e5 127.0.0.1:17054@27054 slave b2 0 1 2 connected
f6 127.0.0.1:17055@27055 slave,fail c3 0 1 3 connected
"""


def test_parse_cluster_nodes():
    nodes = parse_cluster_nodes(NODES)
    assert [n.port for n in nodes] == list(range(17050, 17056))
    assert [n.slots for n in nodes[:3]] == [5461, 5462, 5461]
    assert nodes[3].role == "replica"
    assert nodes[3].master_id == "a1"
    assert nodes[5].failed
    assert not nodes[4].failed


def test_redis_ready_needs_every_replica_alive():
    nodes = parse_cluster_nodes(NODES)
    info = {"cluster_state": "ok", "cluster_slots_assigned": "16384"}
    assert not redis_cluster_ready(info, nodes, 3, 1)
    healthy = parse_cluster_nodes(NODES.replace("slave,fail", "slave"))
    assert redis_cluster_ready(info, healthy, 3, 1)
    assert not redis_cluster_ready({**info, "cluster_state": "fail"}, healthy, 3, 1)


def member(name: str, role: str, state: str = "running") -> PgMember:
    return PgMember(name=name, role=role, state=state, lag_bytes=0, timeline=1)


def test_pg_cluster_ready():
    good = [member("pg0", "leader"), member("pg1", "sync_standby"), member("pg2", "replica")]
    assert pg_cluster_ready(good, 3)
    assert not pg_cluster_ready(good[:2], 3)
    assert not pg_cluster_ready(
        [member("pg0", "leader"), member("pg1", "replica"), member("pg2", "replica")], 3
    ), "no sync standby"
    assert not pg_cluster_ready(
        [member("pg0", "leader"), member("pg1", "leader"), member("pg2", "sync_standby")], 3
    )
    assert not pg_cluster_ready([good[0], good[1], member("pg2", "replica", "starting")], 3)


def test_pg_streaming_ready():
    rows = [
        {"state": "streaming", "sync_state": "sync"},
        {"state": "streaming", "sync_state": "async"},
    ]
    assert pg_streaming_ready(rows, 2)
    assert not pg_streaming_ready(rows[1:], 2)
    assert not pg_streaming_ready([rows[1], rows[1]], 2), "no synchronous standby"
    assert not pg_streaming_ready([{"state": "catchup", "sync_state": "sync"}, rows[1]], 2)


def test_haproxy_servers_up_ignores_aggregates_and_backups():
    rows = [
        {"pxname": "pg_read", "svname": "FRONTEND", "status": "OPEN", "bck": ""},
        {"pxname": "pg_read", "svname": "pg1", "status": "UP", "bck": "0"},
        {"pxname": "pg_read", "svname": "pg2", "status": "DOWN", "bck": "0"},
        {"pxname": "pg_read", "svname": "pg_primary_fallback", "status": "UP", "bck": "1"},
        {"pxname": "pg_read", "svname": "BACKEND", "status": "UP", "bck": ""},
        {"pxname": "pg_write", "svname": "pg0", "status": "UP 1/2", "bck": "0"},
    ]
    assert haproxy_servers_up(rows, "pg_read") == ["pg1"]
    assert haproxy_servers_up(rows, "pg_write") == ["pg0"]
