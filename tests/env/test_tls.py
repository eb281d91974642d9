"""TLS and authentication to the data stores: plaintext is refused, every connection is TLS
verified against the environment's CA, Redis answers only to known users."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest
import redis
import requests

from env.local import LocalEnvironment
from tests.helpers import members, poll, primary_of, query, redis_options, wait_healthy

pytestmark = pytest.mark.env


def pg_paths(status: dict[str, Any]) -> dict[str, str]:
    """Every way into PostgreSQL a client has: HAProxy's two paths, pgBouncer, each member."""
    urls = status["urls"]
    return {
        "write path": urls["write"],
        "read path": urls["read"],
        "pgbouncer": urls["pgbouncer"],
        **{f"member {name}": urls["members"][name] for name in members(status)},
    }


def refusal(connect: Callable[[], None], expected: str, what: str) -> str:
    """The error `connect` fails with, once it says `expected`: a loaded machine may time an
    attempt out first, so it is tried until the refusal shows; getting in even once fails."""

    def attempt() -> str | None:
        try:
            connect()
        except Exception as exc:
            return str(exc) if expected in str(exc) else None
        raise AssertionError(f"{what}: a plaintext connection got in")

    return poll(attempt, 60, f"{what} refuses plaintext", interval_s=0.5)


def test_postgres_refuses_plaintext_on_every_path(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    for path, url in pg_paths(status).items():
        # pg_hba's `hostnossl ... reject` on a member (also behind HAProxy, which passes the
        # bytes through), pgBouncer's `client_tls_sslmode = require`.
        refusal(
            lambda url=url: psycopg.connect(url, sslmode="disable", connect_timeout=5).close(),
            "SSL required" if path == "pgbouncer" else "no encryption",
            path,
        )


def test_postgres_connections_are_tls_verified_against_the_ca(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    for path, url in pg_paths(status).items():
        assert "sslmode=verify-full" in url, path
        with psycopg.connect(url, connect_timeout=5, prepare_threshold=None) as conn:
            assert conn.pgconn.ssl_in_use, path
            # Through pgBouncer this is pgBouncer's own connection to the primary: TLS too.
            row = conn.execute(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
        assert row == (True, "TLSv1.3"), f"{path}: {row}"
    # A client that trusts another CA is turned away: the certificate really is checked.
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(status["urls"]["write"], sslrootcert="system", connect_timeout=5).close()


def test_every_tcp_connection_to_every_member_is_tls(local_env: LocalEnvironment):
    """The services (through pgBouncer), Patroni, pg_rewind's user, the exporters, the standbys'
    replication: whoever is connected over TCP right now uses TLS."""
    status = wait_healthy(local_env)
    urls = status["urls"]
    seen: dict[str, list[tuple[Any, ...]]] = {}
    for name in members(status):
        seen[name] = query(
            urls["members"][name],
            "SELECT a.usename, a.backend_type, a.application_name, s.ssl, s.version"
            " FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
            " WHERE a.client_addr IS NOT NULL",
        )
        plain = [r for r in seen[name] if not r[3]]
        assert not plain, f"plaintext connections on {name}: {plain}"
    on_primary = seen[primary_of(status)]
    users = {r[0] for r in on_primary}
    # The application (the services' pools, through pgBouncer), the exporter and the standbys.
    assert {"cloudwatcher", "postgres", "replicator"} <= users, users
    walsenders = [r for r in on_primary if r[1] == "walsender"]
    assert len(walsenders) >= len(members(status)) - 1, on_primary
    assert {r[4] for r in on_primary} == {"TLSv1.3"}


def test_postgres_exporters_connect(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    for comp in status["components"]:
        if comp["kind"] == "postgres_exporter":
            text = requests.get(f"http://127.0.0.1:{comp['ports']['metrics']}/metrics", timeout=5)
            assert "\npg_up 1" in text.text, comp["component"]


def service_settings(status: dict[str, Any], state_dir: Path, ca_file: str) -> Any:
    """Settings of a service that reaches Redis as the services do (their ACL user)."""
    from reference_impl.settings import ServiceSettings

    app = urlsplit(status["urls"]["redis_app"])
    return ServiceSettings(
        role="api",
        name="tls-test",
        port=1,
        state_dir=state_dir,
        redis_nodes=f"{app.hostname}:{app.port}",
        redis_user=app.username or "",
        redis_password=app.password or "",
        tls_ca_file=ca_file,
    )


def test_services_refuse_a_server_their_ca_did_not_sign(
    local_env: LocalEnvironment, tmp_path: Path
):
    """`create_pool` and `create_redis` verify the server against the CA they are given."""
    from env.secrets import CertificateAuthority
    from reference_impl.stores import create_pool, create_redis

    status = wait_healthy(local_env)
    other = str(
        CertificateAuthority.load_or_create(tmp_path / "o.crt", tmp_path / "o.key").cert_path
    )
    pg_url = status["urls"]["pgbouncer"].split("?")[0]
    settings = service_settings(status, tmp_path, "")

    async def postgres(ca_file: str) -> None:
        pool = await create_pool(pg_url, ca_file=ca_file)
        try:
            assert await pool.fetchval("SELECT 1") == 1
        finally:
            await pool.close()

    async def redis_cluster(ca_file: str) -> None:
        rc = create_redis(dataclasses.replace(settings, tls_ca_file=ca_file))
        try:
            assert await rc.set("req:tls-test", "x", ex=10)
        finally:
            await rc.aclose()

    def outcome(attempt: Callable[[str], Coroutine[Any, Any, None]], ca_file: str) -> str:
        try:
            asyncio.run(attempt(ca_file))
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok"

    def refused(attempt: Callable[[str], Coroutine[Any, Any, None]]) -> bool:
        # On a loaded machine an attempt may also time out: try until the refusal shows,
        # and never once get in.
        result = outcome(attempt, other)
        assert result != "ok", f"{attempt.__name__}: in with a CA that did not sign the server"
        return "certificate verify failed" in result.lower()

    for attempt in (postgres, redis_cluster):
        poll(lambda a=attempt: refused(a), 60, f"{attempt.__name__} refuses the other CA")
        poll(
            lambda a=attempt: outcome(a, status["tls_certificate"]) == "ok",
            60,
            f"{attempt.__name__} through with the environment's CA",
        )


def test_plaintext_asyncpg_is_refused_by_pgbouncer(local_env: LocalEnvironment):
    """asyncpg (the services' driver) without TLS gets nowhere either."""
    status = wait_healthy(local_env)
    url = status["urls"]["pgbouncer"].split("?")[0]

    async def connect() -> None:
        conn = await asyncpg.connect(url, ssl=False, timeout=5, statement_cache_size=0)
        await conn.close()

    refusal(lambda: asyncio.run(connect()), "SSL required", "pgbouncer (asyncpg)")


# ---- Redis ----------------------------------------------------------------------------------


def redis_ports(env: LocalEnvironment) -> list[int]:
    """Each node's own port, and the fault proxy's port in front of it (what clients use)."""
    s = env.settings
    ports = [s.ports.redis(n) for n in range(s.redis_nodes)]
    if s.fault_proxy:
        ports += [s.ports.proxy_redis(n) for n in range(s.redis_nodes)]
    return ports


def test_redis_refuses_plaintext(local_env: LocalEnvironment):
    wait_healthy(local_env)
    for port in redis_ports(local_env):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            try:
                answer = sock.recv(1024)
            except (ConnectionResetError, TimeoutError):
                answer = b""
        # Any RESP answer (+PONG, or -NOAUTH) would mean Redis read the plaintext command.
        assert answer[:1] not in (b"+", b"-"), (port, answer)


def test_redis_without_credentials_gets_noauth(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    ctx = ssl.create_default_context(cafile=status["tls_certificate"])
    for port in redis_ports(local_env):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET req:x\r\n")
            answer = tls.recv(1024)
        assert answer.startswith(b"-NOAUTH"), (port, answer)


def test_redis_application_user_has_only_what_the_services_use(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    app = redis.RedisCluster.from_url(
        status["urls"]["redis_app"], ssl_ca_certs=status["tls_certificate"], socket_timeout=5
    )
    try:
        app.set("req:tls-test", "x", ex=10)
        assert app.get("req:tls-test") == b"x"
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.set("elsewhere:tls-test", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command("CONFIG", "GET", "maxmemory", target_nodes="primaries")
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command("FLUSHALL", target_nodes="primaries")
    finally:
        app.close()


def test_redis_cluster_bus_and_replication_are_tls(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    ctx = ssl.create_default_context(cafile=status["tls_certificate"])
    for comp in (c for c in status["components"] if c["kind"] == "redis"):
        with (
            socket.create_connection(("127.0.0.1", comp["ports"]["bus"]), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.3", comp["component"]
    admin = redis.Redis.from_url(
        status["urls"]["redis_nodes"][0], ssl_ca_certs=status["tls_certificate"]
    )
    try:
        for setting in ("tls-cluster", "tls-replication"):
            assert admin.config_get(setting) == {setting: "yes"}
        assert admin.config_get("port") == {"port": "0"}
    finally:
        admin.close()


def test_status_shows_tls_for_every_member_pgbouncer_and_redis_node(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    rows = [c for c in status["components"] if c["kind"] in ("postgresql", "pgbouncer", "redis")]
    assert len(rows) == len(members(status)) + 1 + local_env.settings.redis_nodes
    for row in rows:
        assert row["tls"] == "TLSv1.3", row


def test_the_services_redis_user_is_never_denied_what_they_do(
    local_env: LocalEnvironment, tmp_path: Path
):
    """A phone's whole flow (rate limit, submit, notification, cached reads) and the scheduler's
    TTL sampling run as the services' ACL user without one denial in any node's ACL LOG: the
    ACL is tight, not broken (redis-py sends INCR as INCRBY, for one)."""
    from reference_impl import measures
    from reference_impl.stores import create_redis
    from tests.phone import Phone, next_event

    status = wait_healthy(local_env)
    admin = [
        redis.Redis(host="127.0.0.1", port=c["ports"]["redis"], **redis_options(status))
        for c in status["components"]
        if c["kind"] == "redis"
    ]
    try:
        for node in admin:
            node.acl_log_reset()

        async def flow() -> None:
            async with Phone(status) as phone:
                await phone.register()
                ws = await phone.updates()
                code, body = await phone.submit()
                assert code == 202, body
                await next_event(ws, 60)
                for _ in range(3):  # completed: the second read on comes from Redis' cache
                    code, view = await phone.get(body["request_id"])
                    assert code == 200, view

        async def sample() -> measures.KeyTtls:
            rc = create_redis(service_settings(status, tmp_path, status["tls_certificate"]))
            try:
                return await measures.key_ttls(rc, "req", 50)
            finally:
                await rc.aclose()

        asyncio.run(flow())
        # What the leading scheduler samples for the Redis TTL SLOs, by the same code.
        assert asyncio.run(sample()).sampled >= 1
        denied = [entry for node in admin for entry in node.acl_log()]
        assert denied == [], denied
    finally:
        for node in admin:
            node.close()
