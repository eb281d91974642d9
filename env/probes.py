"""Async health and role probes of the environment's components.

Used by the supervisor (readiness while starting) and by `cwh env status`. Each probe answers
quickly or raises; callers decide what a failure means.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from env.layout import Layout

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=2)


async def http_get(url: str, timeout: aiohttp.ClientTimeout = HTTP_TIMEOUT) -> tuple[int, str]:
    """(status, body) of a GET; raises on connection errors."""
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url) as resp,
    ):
        return resp.status, await resp.text()


async def http_json(url: str) -> Any:
    """The JSON body of a GET that must answer 200."""
    status, body = await http_get(url)
    if status != 200:
        raise ConnectionError(f"{url} answered {status}")
    return json.loads(body)


async def port_open(port: int, timeout_s: float = 2.0) -> bool:
    """Something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def http_ok(url: str, timeout: aiohttp.ClientTimeout = HTTP_TIMEOUT) -> bool:
    try:
        status, _ = await http_get(url, timeout)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
    return status == 200


async def etcd_healthy(port: int) -> bool:
    try:
        status, body = await http_get(f"http://127.0.0.1:{port}/health")
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
    return status == 200 and json.loads(body).get("health") == "true"


@dataclass(frozen=True)
class PgMember:
    """One PostgreSQL member as Patroni's `/cluster` reports it."""

    name: str
    role: str  # leader | sync_standby | replica | standby_leader
    state: str  # running | streaming | starting | stopped | ...
    lag_bytes: int | None
    timeline: int | None


async def patroni_cluster(patroni_ports: list[int]) -> list[PgMember]:
    """The cluster's members, asked of the first Patroni that answers."""
    last: BaseException | None = None
    for port in patroni_ports:
        try:
            status, body = await http_get(f"http://127.0.0.1:{port}/cluster")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            last = exc
            continue
        if status != 200:
            continue
        members = json.loads(body).get("members", [])
        return [
            PgMember(
                name=m["name"],
                role=m.get("role", "?"),
                state=m.get("state", "?"),
                lag_bytes=m.get("lag") if isinstance(m.get("lag"), int) else None,
                timeline=m.get("timeline"),
            )
            for m in members
        ]
    raise ConnectionError(f"no Patroni answered /cluster: {last!r}")


def pg_cluster_ready(members: list[PgMember], expected: int, sync: bool = True) -> bool:
    """One running leader, every other member streaming, and (`sync`) a sync standby when
    there is one."""
    if len(members) != expected:
        return False
    leaders = [m for m in members if m.role == "leader" and m.state == "running"]
    replicas = [m for m in members if m.role in ("replica", "sync_standby")]
    if len(leaders) != 1 or len(replicas) != expected - 1:
        return False
    # Patroni 3.0 says "running" for a replica; later versions say "streaming". Whether it
    # really streams is checked on the primary (`pg_replication`).
    if not all(m.state in ("running", "streaming") for m in replicas):
        return False
    return expected == 1 or not sync or any(m.role == "sync_standby" for m in replicas)


async def superuser(
    port: int, password: str, tls: ssl.SSLContext, database: str = "postgres", timeout: float = 2
) -> asyncpg.Connection:
    """A verified-TLS connection as `postgres` to the member at `port` (the caller closes it)."""
    return await asyncpg.connect(
        host="127.0.0.1",
        port=port,
        user="postgres",
        password=password,
        database=database,
        ssl=tls,
        timeout=timeout,
    )


async def pg_replication(port: int, password: str, tls: ssl.SSLContext) -> list[dict[str, Any]]:
    """`pg_stat_replication` on the primary at `port`: who streams, sync state, replay lag.
    `tls`: a verifying client context (the members refuse plaintext)."""
    conn = await superuser(port, password, tls)
    try:
        rows = await conn.fetch(
            "SELECT application_name, state, sync_state,"
            " EXTRACT(EPOCH FROM replay_lag)::float8 AS replay_lag_s,"
            # A standby region's leader is in recovery: its newest WAL is what it received.
            " pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()"
            " ELSE pg_current_wal_lsn() END, replay_lsn)::bigint AS replay_lag_bytes"
            " FROM pg_stat_replication"
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


def pg_streaming_ready(rows: list[dict[str, Any]], replicas: int, sync: bool = True) -> bool:
    """Every replica streams, and (`sync`) one of them is synchronous (when there are
    replicas)."""
    streaming = [r for r in rows if r["state"] == "streaming"]
    return len(streaming) == replicas and (
        replicas == 0 or not sync or any(r["sync_state"] == "sync" for r in streaming)
    )


async def haproxy_stat(layout: Layout, socket: Path | None = None) -> list[dict[str, str]]:
    """`show stat` from HAProxy's runtime API, one dict per proxy/server row."""
    text = await haproxy_command(layout, "show stat", socket)
    rows = list(csv.DictReader(io.StringIO(text.lstrip("# "))))
    return rows


async def haproxy_command(layout: Layout, command: str, socket: Path | None = None) -> str:
    """Send one command to HAProxy's runtime API (`socket`: another HAProxy's than the
    environment's load balancer) and return its answer."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(str(socket or layout.haproxy_socket)), timeout=2
    )
    try:
        writer.write(command.encode() + b"\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    return data.decode()


def haproxy_server_ports(text: str) -> dict[str, int]:
    """server name -> port, from the runtime API's `show servers state <backend>` answer."""
    out: dict[str, int] = {}
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = next((ln.lstrip("# ").split() for ln in lines if ln.startswith("#")), None)
    if header is None:
        return out
    for line in lines:
        if line.startswith("#") or len(line.split()) != len(header):
            continue  # the format version line, or something we do not know
        row = dict(zip(header, line.split(), strict=True))
        out[row["srv_name"]] = int(row["srv_port"])
    return out


def haproxy_registrations(
    have: dict[str, int], want: dict[str, int], hosts: Mapping[str, str] | None = None
) -> list[str]:
    """Runtime API commands that put back the servers HAProxy lost (a restart or a reload
    starts from the configuration, where run-time slots point nowhere). A server whose slot
    still points at its replica is left alone, whatever its state: drain and maintenance are
    an operator's (or a rollout's) decisions, not drift. `hosts`: replica name -> address
    (127.0.0.1 for a replica not in it)."""
    commands = []
    for slot, port in sorted(want.items()):
        name = slot.split("/", 1)[1]
        if have.get(name) != port:
            addr = (hosts or {}).get(name, "127.0.0.1")
            commands += [
                f"set server {slot} addr {addr} port {port}",
                f"set server {slot} state ready",
            ]
    return commands


def haproxy_servers_up(rows: list[dict[str, str]], proxy: str) -> list[str]:
    """Names of the servers of `proxy` that HAProxy currently routes to (status UP)."""
    return [
        r["svname"]
        for r in rows
        if r["pxname"] == proxy
        and r["svname"] not in ("FRONTEND", "BACKEND")
        and r["status"].startswith("UP")
        and r.get("bck") != "1"
    ]


@dataclass(frozen=True)
class RedisNode:
    """One Redis Cluster node as `CLUSTER NODES` reports it."""

    node_id: str
    port: int
    role: str  # master | replica
    master_id: str | None
    failed: bool
    slots: int


def parse_cluster_nodes(text: str) -> list[RedisNode]:
    """Parse `CLUSTER NODES` output."""
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        node_id, addr, flags, master = parts[0], parts[1], parts[2].split(","), parts[3]
        port = int(addr.split("@")[0].rsplit(":", 1)[1])
        slots = 0
        for spec in parts[8:]:
            if spec.startswith("["):
                continue  # a slot being migrated
            if "-" in spec:
                lo, hi = spec.split("-")
                slots += int(hi) - int(lo) + 1
            else:
                slots += 1
        nodes.append(
            RedisNode(
                node_id=node_id,
                port=port,
                role="master" if "master" in flags else "replica",
                master_id=None if master == "-" else master,
                failed="fail" in flags or "fail?" in flags,
                slots=slots,
            )
        )
    return nodes


@dataclass(frozen=True)
class RedisCredentials:
    """How the harness reaches a Redis node: its ACL user, and the CA the node's certificate
    must be signed by (TLS is verified, host name included)."""

    username: str
    password: str
    ca_file: str


async def redis_call(port: int, *args: Any, creds: RedisCredentials) -> Any:
    """One command to one node (not cluster-routed), over TLS as `creds.username`."""
    client = aioredis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=2,
        socket_connect_timeout=2,
        username=creds.username,
        password=creds.password,
        ssl=True,
        ssl_ca_certs=creds.ca_file,
        ssl_check_hostname=True,
    )
    try:
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


async def redis_cluster_view(
    ports: list[int], creds: RedisCredentials
) -> tuple[dict[str, str], list[RedisNode]]:
    """(CLUSTER INFO, CLUSTER NODES) from the first node that answers."""
    last: BaseException | None = None
    for port in ports:
        try:
            info_raw = await redis_call(port, "CLUSTER", "INFO", creds=creds)
            nodes_raw = await redis_call(port, "CLUSTER", "NODES", creds=creds)
        except Exception as exc:
            last = exc
            continue
        info_text = info_raw.decode() if isinstance(info_raw, bytes) else str(info_raw)
        info = dict(line.split(":", 1) for line in info_text.strip().splitlines() if ":" in line)
        nodes_text = nodes_raw.decode() if isinstance(nodes_raw, bytes) else str(nodes_raw)
        return info, parse_cluster_nodes(nodes_text)
    raise ConnectionError(f"no Redis node answered: {last!r}")


def redis_cluster_ready(
    info: dict[str, str], nodes: list[RedisNode], masters: int, replicas_per_master: int
) -> bool:
    """State ok, every slot served, and the expected count of masters and attached replicas."""
    if info.get("cluster_state") != "ok" or info.get("cluster_slots_assigned") != "16384":
        return False
    live_masters = [n for n in nodes if n.role == "master" and n.slots > 0 and not n.failed]
    live_replicas = [n for n in nodes if n.role == "replica" and not n.failed and n.master_id]
    return len(live_masters) == masters and len(live_replicas) == masters * replicas_per_master


#: PostgreSQL's SSLRequest: length 8, then the magic code 1234.5679.
PG_SSL_REQUEST = struct.pack("!II", 8, 80877103)


async def tls_version(port: int, tls: ssl.SSLContext, postgres: bool = False) -> str:
    """The TLS version a verifying client negotiates with the server at 127.0.0.1:`port`.

    `postgres`: speak PostgreSQL's SSLRequest first (members and pgBouncer); otherwise TLS from
    the first byte (Redis). Raises when the server refuses TLS or its certificate does not verify
    against `tls`'s CA. Only the handshake: nothing is logged by the server as a failed login.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if postgres:
            writer.write(PG_SSL_REQUEST)
            await writer.drain()
            answer = await reader.readexactly(1)
            if answer != b"S":
                raise ConnectionError(f"port {port} declined TLS ({answer!r})")
        await writer.start_tls(tls, server_hostname="127.0.0.1")
        ssl_object = writer.get_extra_info("ssl_object")
        return str(ssl_object.version())
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def exit_code(argv: list[str], timeout_s: float = 5.0) -> int | None:
    """A short command's exit code (None when it did not end in time: killed)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        return await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
