"""`pg_routed`: HAProxy's view agrees with Patroni's, writes to the leader alone, reads to every
other member."""

from __future__ import annotations

from env.probes import PgMember
from env.readiness import pg_routed

MEMBERS = [
    PgMember("pg0", "replica", "streaming", 0, 2),
    PgMember("pg1", "leader", "running", None, 2),
    PgMember("pg2", "sync_standby", "streaming", 0, 2),
]


def rows(write: list[str], read: list[str]) -> list[dict[str, str]]:
    out = []
    for proxy, servers in (("pg_write", ["pg0", "pg1", "pg2"]), ("pg_read", ["pg0", "pg1", "pg2"])):
        up = write if proxy == "pg_write" else read
        for s in servers:
            status = "UP" if s in up else "DOWN"
            out.append({"pxname": proxy, "svname": s, "status": status, "bck": "0"})
        out.append({"pxname": proxy, "svname": "BACKEND", "status": "UP", "bck": "0"})
    return out


def test_routed_when_writes_go_to_the_leader_and_reads_to_the_others():
    assert pg_routed(rows(["pg1"], ["pg0", "pg2"]), MEMBERS)


def test_not_routed_while_haproxy_still_writes_to_the_old_leader():
    assert not pg_routed(rows(["pg0"], ["pg1", "pg2"]), MEMBERS)


def test_not_routed_with_two_write_servers_up():
    assert not pg_routed(rows(["pg0", "pg1"], ["pg0", "pg2"]), MEMBERS)


def test_not_routed_while_a_replica_is_out_of_the_read_pool():
    assert not pg_routed(rows(["pg1"], ["pg0"]), MEMBERS)


def test_not_routed_without_a_leader():
    members = [PgMember(m.name, "replica", m.state, 0, 2) for m in MEMBERS]
    assert not pg_routed(rows([], ["pg0", "pg1", "pg2"]), members)
