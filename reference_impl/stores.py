"""Connections to PostgreSQL and Redis, as `cleanup_ctx` helpers shared by the services.

Writes go through pgBouncer in transaction mode, so no prepared statements
(`statement_cache_size=0`). Redis is a cache and a fan-out: every use of it must survive its
absence (`redis_or_none`). With a CA file (`ServiceSettings.tls_ca_file`) every connection is TLS,
the server's certificate and host name verified against that CA alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from reference_impl.settings import ServiceSettings

log = logging.getLogger("cw.stores")
T = TypeVar("T")


#: How long a request waits for a pooled connection. asyncpg's default is for ever: with the
#: pool exhausted (a slow database, a burst) requests would queue without bound; past this they
#: answer 503 with Retry-After (the error middleware maps the TimeoutError) and the client
#: retries, perhaps on another replica.
ACQUIRE_TIMEOUT_S = 2.0


class BoundedPool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg ships no types
    """An asyncpg pool whose every acquire has a deadline, also the implicit ones of
    `pool.execute` / `fetch` / `fetchrow` / `fetchval`."""

    acquire_timeout_s = ACQUIRE_TIMEOUT_S

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)


def tls_context(ca_file: str) -> ssl.SSLContext | None:
    """A verify-full client context trusting `ca_file` only; None for plaintext ("")."""
    return ca_only_context(ca_file) if ca_file else None


@functools.cache
def ca_only_context(ca_file: str) -> ssl.SSLContext:
    """One context per CA file for the whole process: building one costs milliseconds, and
    connections come and go (pools grow, failovers reconnect). Read once: a process started
    before its CA was replaced keeps the old one until it restarts."""
    return ssl.create_default_context(cafile=ca_file)


class CaOnlySSLConnection(SSLConnection):
    """redis-py's TLS connection with the shared CA-only context.

    redis-py builds each connection's context from `ssl.create_default_context()`: the system's
    144 CAs trusted besides ours, and loaded again for every new connection (75 ms each on this
    machine under load, where a Redis call has a 0.5 s deadline)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = ca_only_context(str(self.ssl_context.ca_certs))


async def create_pool(
    url: str, min_size: int = 1, max_size: int = 10, ca_file: str = ""
) -> asyncpg.Pool:
    """A pool to `url`; TLS verified against `ca_file` when given (refused without TLS then)."""
    pool = BoundedPool(
        url,
        min_size=min_size,
        max_size=max_size,
        ssl=tls_context(ca_file),
        max_queries=50_000,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        statement_cache_size=0,
        command_timeout=10,
        timeout=5,
        # A connection broken by a failover is dropped, not reused.
        max_inactive_connection_lifetime=60,
    )
    await pool
    return pool


#: A Redis call that takes longer than this is given up: a cache that slows every request down
#: is worse than none.
REDIS_DEADLINE_S = 0.5
#: After a failed call, Redis is skipped for this long (one trial call then): with every node
#: down, requests must not each pay for connection attempts to six dead nodes.
REDIS_COOLDOWN_S = 2.0


class RedisBreaker:
    """Open after a failed call; a trial call allowed every `cooldown_s` while open."""

    def __init__(self, cooldown_s: float = REDIS_COOLDOWN_S) -> None:
        self.cooldown_s = cooldown_s
        self.open_until = 0.0

    def allow(self) -> bool:
        now = time.monotonic()
        if now < self.open_until:
            return False
        if self.open_until:
            self.open_until = now + self.cooldown_s  # this caller is the trial; others wait
        return True

    def record(self, ok: bool) -> None:
        self.open_until = 0.0 if ok else time.monotonic() + self.cooldown_s


class CacheCluster(RedisCluster):
    """The services' Redis Cluster client, with a breaker per use (`redis_or_none`'s `what`):
    a master that is down for a few seconds must not stop the notifications because a cache
    write to its slots failed."""

    breakers: defaultdict[str, RedisBreaker]
    #: Where `publish_in_cluster` publishes (None: redis-py's default node), and until when
    #: that choice stands.
    publish_node: Any = None
    publish_checked_until: float = 0.0


def redis_auth_and_tls(settings: ServiceSettings) -> dict[str, Any]:
    """redis-py's keyword arguments for the services' ACL user and TLS (verify-full)."""
    kwargs: dict[str, Any] = {
        "username": settings.redis_user or None,
        "password": settings.redis_password or None,
    }
    if settings.tls_ca_file:
        kwargs.update(ssl=True, ssl_ca_certs=settings.tls_ca_file, ssl_check_hostname=True)
    return kwargs


def create_redis(settings: ServiceSettings) -> CacheCluster:
    nodes = [ClusterNode(h, p) for h, p in settings.redis_addresses]
    client = CacheCluster(
        startup_nodes=nodes,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        decode_responses=True,
        require_full_coverage=False,
        # Enough to follow a failover's new slot owner; never backoff sleeps inside a request.
        retry=Retry(NoBackoff(), 2),
        **redis_auth_and_tls(settings),
    )
    client.breakers = defaultdict(RedisBreaker)
    if settings.tls_ca_file:
        # The cluster client takes no connection class: its nodes, those it starts from and
        # those it learns of, read it from the connection kwargs it shares with its NodesManager.
        client.connection_kwargs["connection_class"] = CaOnlySSLConnection
        for node in client.startup_nodes:
            node.connection_class = CaOnlySSLConnection
    return client


#: How long a starting replica tries to connect to every Redis master before it declares itself
#: ready anyway (Redis is a cache: a replica without it still serves).
REDIS_WARM_S = 5.0


async def warm_redis(client: CacheCluster, deadline_s: float = REDIS_WARM_S) -> bool:
    """Learn the cluster's slots and open a connection to every master before the replica
    takes traffic: a cold client pays that on its first requests, which then miss their 0.5 s
    deadline (CI saw a replica joining a saturated API open its breakers this way). Whether it
    worked; Redis down is logged, not raised."""
    try:
        async with asyncio.timeout(deadline_s):
            await client.initialize()
            await client.ping(target_nodes=RedisCluster.PRIMARIES)
    except Exception as exc:  # any failure: the replica serves without its cache
        log.warning("redis not warmed at start: %r", exc)
        return False
    return True


async def redis_or_none(
    redis: CacheCluster,
    what: str,
    call: Callable[[], Awaitable[T]],
    deadline_s: float = REDIS_DEADLINE_S,
) -> T | None:
    """Run a Redis call; when Redis is down, slow or broken, log and return None (callers fall
    back: uncached, unlimited, notified through the event log).

    Any exception counts: redis-py raises cluster-level errors that are not `RedisError`
    (`RedisClusterException`, "no targets" when every node is gone) and a cache must never turn
    into a 500. The call is bounded by `deadline_s`, and skipped while the breaker of `what` is
    open.
    """
    breaker = redis.breakers[what]
    if not breaker.allow():
        return None
    try:
        async with asyncio.timeout(deadline_s):
            result = await call()
    except Exception as exc:
        breaker.record(False)
        log.warning("redis unavailable for %s: %r", what, exc)
        return None
    breaker.record(True)
    return result


#: How often a pub/sub listener or publisher re-reads its node's view of the cluster. A node cut
#: off from the others (a partition) still answers PING and takes PUBLISH, but what it publishes
#: no longer crosses the cluster bus, nor reaches it; it says `cluster_state:fail` once
#: `cluster-node-timeout` passes (a chaos experiment found the hubs deaf for a whole 30 s cut).
MEMBERSHIP_EVERY_S = 1.0


def cluster_field(info: Any, name: str) -> str:
    """Field `name` of CLUSTER INFO's answer: redis-py's parsed dict, or the raw text."""
    if isinstance(info, dict):
        return str(info.get(name, ""))
    if isinstance(info, bytes):
        info = info.decode()
    for line in str(info).splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cluster_state(info: Any) -> str:
    """`cluster_state` from CLUSTER INFO's answer."""
    return cluster_field(info, "cluster_state")


async def in_cluster(client: Any) -> bool:
    """Whether the node `client` talks to (a client of one node, or a cluster client's
    `ClusterNode`) sees the cluster whole: its slots covered by nodes it can reach."""
    return cluster_state(await client.execute_command("CLUSTER INFO")) == "ok"


async def publish_in_cluster(cluster: CacheCluster, channel: str, message: str) -> Any:
    """PUBLISH through a master that sees the cluster whole (`in_cluster`), chosen at most every
    MEMBERSHIP_EVERY_S and kept apart from redis-py's default node, which sends PUBLISH to the
    first master it learned of even while that one is cut off from the others (where the
    message reaches no one), and which every re-read of the slots resets to it. Asked on the
    node's own connections, not through the cluster client, whose errors would make it re-read
    the slots and reconnect everywhere. With no such master known, or when the chosen one
    fails or is slow, redis-py's own choice, with its retries."""
    now = time.monotonic()
    if now >= cluster.publish_checked_until:
        cluster.publish_checked_until = now + MEMBERSHIP_EVERY_S
        was = cluster.publish_node
        chosen = await _member_primary(cluster, was)
        if was is not None and chosen is not None and chosen.name != was.name:
            log.warning("publishing through %s: %s left the cluster", chosen.name, was.name)
        cluster.publish_node = chosen
    if (node := cluster.publish_node) is not None:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                return await node.execute_command("PUBLISH", channel, message)
        except (redis.exceptions.RedisError, OSError, TimeoutError):
            cluster.publish_node, cluster.publish_checked_until = None, 0.0  # choose again
    return await cluster.publish(channel, message)


#: How long one master may take to say whether it sees the cluster whole, and a publish to
#: the chosen one: both inside a publish's own deadline (`REDIS_DEADLINE_S`).
MEMBERSHIP_PROBE_S = PUBLISH_TIMEOUT_S = 0.2


async def _member_primary(cluster: CacheCluster, current: Any) -> Any:
    """The master to publish through: `current` while it sees the cluster whole, else the
    first master that does. When none answered that it does (all slow or gone: nothing
    learned), `current` stays."""
    primaries = cluster.get_primaries()
    if current is not None and current.name in {p.name for p in primaries}:
        primaries = [current, *(p for p in primaries if p.name != current.name)]

    async def whole(node: Any) -> bool:
        try:
            async with asyncio.timeout(MEMBERSHIP_PROBE_S):
                return await in_cluster(node)
        except Exception:  # dead, slow or refusing: not a place to publish
            return False

    answers = await asyncio.gather(*(whole(p) for p in primaries))
    return next((p for p, ok in zip(primaries, answers, strict=True) if ok), current)


async def single_node_pubsub(
    settings: ServiceSettings, avoid: tuple[str, int] | None = None
) -> tuple[aioredis.Redis, Any, bool]:
    """A SUBSCRIBE-capable connection to the first Redis node that answers and sees the cluster
    whole (`in_cluster`), its pub/sub, and whether it does; `avoid` (the node that just failed)
    is tried last. When no node sees it whole, the first that answered (the cluster is down:
    hearing one node beats none).

    Classic PUBLISH in Redis Cluster reaches every node, so one node is enough to hear every
    notification; when it dies or leaves the cluster the caller reconnects here and gets
    another. No retries with backoff on a node: a chaos experiment found the default (about
    15 s of retries on the dead node, tried first again) left the hubs deaf for as long as the
    node was down.
    """
    last: BaseException | None = None
    fallback: aioredis.Redis | None = None
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
            **redis_auth_and_tls(settings),
        )
        if settings.tls_ca_file:
            client.connection_pool.connection_class = CaOnlySSLConnection
        try:
            await client.ping()
            member = await in_cluster(client)
        except (redis.exceptions.RedisError, OSError) as exc:
            last = exc
            await client.aclose()
            continue
        if member:
            if fallback is not None:
                await fallback.aclose()
            return client, client.pubsub(ignore_subscribe_messages=True), True
        if fallback is None:
            fallback = client
        else:
            await client.aclose()
    if fallback is not None:
        return fallback, fallback.pubsub(ignore_subscribe_messages=True), False
    raise ConnectionError(f"no Redis node answered: {last!r}")


NOTIFY_CHANNEL = "cw:notifications"
