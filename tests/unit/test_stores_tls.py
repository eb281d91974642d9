"""The services' Redis clients trust the environment's CA alone, with one TLS context shared by
every connection (redis-py's default builds a context per connection and trusts the system's
CAs too)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from redis.asyncio.cluster import ClusterNode

from env.secrets import CertificateAuthority
from reference_impl.settings import ServiceSettings
from reference_impl.stores import create_redis


def settings(tmp_path: Path) -> ServiceSettings:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca.crt", tmp_path / "ca.key")
    return ServiceSettings(
        role="api",
        name="t",
        port=1,
        state_dir=tmp_path,
        redis_nodes="127.0.0.1:1,127.0.0.1:2",
        redis_user="cloudwatcher",
        redis_password="pw",
        tls_ca_file=str(ca.cert_path),
    )


def test_every_redis_connection_trusts_only_the_ca_through_one_context(tmp_path: Path):
    async def contexts() -> list[ssl.SSLContext]:
        client = create_redis(settings(tmp_path))
        try:
            # Startup nodes, and a node the client would learn of from CLUSTER SLOTS later.
            nodes = [*client.startup_nodes, ClusterNode("127.0.0.1", 3, **client.connection_kwargs)]
            conns = [node.acquire_connection() for node in nodes for _ in range(2)]
            return [conn.ssl_context.get() for conn in conns]  # type: ignore[attr-defined]
        finally:
            await client.aclose()

    found = asyncio.run(contexts())
    assert len({id(ctx) for ctx in found}) == 1, "a TLS context per connection"
    ctx = found[0]
    trusted = [dict(item[0] for item in c["subject"])["commonName"] for c in ctx.get_ca_certs()]
    assert trusted == ["cloudwatcher environment CA"]
    assert ctx.check_hostname
    assert ctx.verify_mode == ssl.CERT_REQUIRED
