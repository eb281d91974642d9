"""Connections to PostgreSQL and Redis, as `cleanup_ctx` helpers shared by the services.

Writes go through pgBouncer in transaction mode, so no prepared statements
(`statement_cache_size=0`). Redis is a cache and a fan-out: every use of it must survive its
absence (`redis_or_none`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from reference_impl.settings import ServiceSettings

log = logging.getLogger("cw.stores")
T = TypeVar("T")


async def create_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        statement_cache_size=0,
        command_timeout=10,
        timeout=5,
        # A connection broken by a failover is dropped, not reused.
        max_inactive_connection_lifetime=60,
    )
    assert pool is not None
    return pool


def create_redis(settings: ServiceSettings) -> RedisCluster:
    nodes = [ClusterNode(h, p) for h, p in settings.redis_addresses]
    return RedisCluster(
        startup_nodes=nodes,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        decode_responses=True,
        require_full_coverage=False,
    )


async def redis_or_none(what: str, call: Callable[[], Awaitable[T]]) -> T | None:
    """Run a Redis call; when Redis is down, log and return None (callers fall back)."""
    try:
        return await call()
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        log.warning("redis unavailable for %s: %r", what, exc)
        return None


async def single_node_pubsub(
    settings: ServiceSettings, avoid: tuple[str, int] | None = None
) -> tuple[aioredis.Redis, Any]:
    """A SUBSCRIBE-capable connection to the first Redis node that answers; `avoid` (the node
    that just failed) is tried last.

    Classic PUBLISH in Redis Cluster reaches every node, so one node is enough to hear every
    notification; when it dies the caller reconnects here and gets another. No retries with
    backoff on a node: a chaos experiment found the default (about 15 s of retries on the dead
    node, tried first again) left the hubs deaf for as long as the node was down.
    """
    last: BaseException | None = None
    nodes = sorted(settings.redis_addresses, key=lambda a: a == avoid)
    for host, port in nodes:
        client = aioredis.Redis(
            host=host,
            port=port,
            socket_connect_timeout=1,
            socket_timeout=2,
            decode_responses=True,
            health_check_interval=5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await client.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            last = exc
            await client.aclose()
            continue
        return client, client.pubsub(ignore_subscribe_messages=True)
    raise ConnectionError(f"no Redis node answered: {last!r}")


NOTIFY_CHANNEL = "cw:notifications"
