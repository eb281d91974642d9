"""Configuration files of the local environment's components, rendered as text.

Pure functions of the settings, the layout and the secrets: a test can render and inspect them
without starting anything.
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
from pathlib import Path
from typing import Any

import yaml

from env import backup, network
from env.etcd import ROOT_USER as ETCD_ROOT_USER
from env.failover_timing import SLOWEST, FailoverTiming
from env.layout import Layout
from env.probes import RedisCredentials
from env.secrets import Secrets
from env.settings import EnvSettings, Ports
from reference_impl.stores import NOTIFY_CHANNEL

PG_BIN = "/usr/lib/postgresql/15/bin"

#: The failure-detection timings of the slowest profile (`env/failover_timing.py`): what every
#: wait for a failover is bounded by, whatever `CWH_FAILOVER` an environment runs with. The
#: configurations below render `settings.timing`, the environment's own profile.
PATRONI_TTL_S = SLOWEST.ttl_s
PATRONI_LOOP_WAIT_S = SLOWEST.loop_wait_s
PATRONI_RETRY_TIMEOUT_S = SLOWEST.retry_timeout_s
HAPROXY_PG_CHECK_INTER_S = SLOWEST.haproxy_inter_s
HAPROXY_PG_FALL = SLOWEST.haproxy_fall
HAPROXY_PG_RISE = SLOWEST.haproxy_rise
#: The HTTPS frontend's checks of API and hub servers: the seed's "health checks every 5 s".
HAPROXY_HTTP_CHECK_INTER_S = 5
#: Slots for run-time servers behind the HTTPS frontend (server-template).
HAPROXY_API_SLOTS = 10
HAPROXY_HUB_SLOTS = 6
#: What each datastore's configuration lets it hold, MiB: Redis's `maxmemory` (least recently
#: used keys evicted beyond it) and PostgreSQL's `shared_buffers`. A soak judges Redis's memory
#: growth against the first (bench/soak.py): data filling what it is allowed is not a leak; a
#: PostgreSQL member's shared buffers it reads as a shared-memory segment of fixed size.
REDIS_MAXMEMORY_MIB = 128
PG_SHARED_BUFFERS_MIB = 128
REDIS_NODE_TIMEOUT_MS = SLOWEST.redis_node_timeout_ms
PGBOUNCER_SERVER_LOGIN_RETRY_S = SLOWEST.pgbouncer_login_retry_s
#: TLS everywhere inside the environment: the same floor as the HTTPS frontend's.
TLS_MIN_VERSION = "TLSv1.3"

#: Redis ACL users; their passwords are in the secrets file. The services' user may run only the
#: commands and touch only the keys and channel they use: a service that needs more adds it here.
REDIS_APP_USER = "cloudwatcher"
REDIS_ADMIN_USER = "admin"
REDIS_REPLICATION_USER = "replicator"
REDIS_EXPORTER_USER = "exporter"
REDIS_APP_KEYS = ("req:*", "resp:*", "rl:*")
#: What redis-py's clients send on connecting and to learn the cluster's layout.
REDIS_CLIENT_COMMANDS = (
    "auth", "hello", "ping", "echo", "select", "readonly", "readwrite", "asking", "command",
    "client|setname", "client|getname", "client|id",
    "cluster|slots", "cluster|shards", "cluster|nodes", "cluster|info", "cluster|myid",
)  # fmt: skip
#: redis-py sends `incr` as INCRBY; the scheduler samples TTLs with SCAN, PTTL and OBJECT
#: IDLETIME. The test reading every node's ACL LOG after a phone's flow and a sample is what
#: finds a command missing here.
REDIS_APP_COMMANDS = (
    *REDIS_CLIENT_COMMANDS,
    "get", "set", "incr", "incrby", "expire", "ttl", "pttl", "scan", "object|idletime",
    "publish", "subscribe", "unsubscribe",
)  # fmt: skip
#: What prometheus-redis-exporter 1.45 reads.
REDIS_EXPORTER_COMMANDS = (
    "auth", "hello", "ping", "select", "client|setname", "info", "config|get", "cluster|info",
    "slowlog|get", "slowlog|len", "latency|latest", "latency|histogram", "dbsize", "memory|stats",
)  # fmt: skip
#: The user of Patroni's REST API for its unsafe endpoints (password: `Secrets.patroni_rest`).
PATRONI_REST_USER = "cwh"


def worst_case_failover_s(timing: FailoverTiming = SLOWEST) -> float:
    """Worst-case time from losing the primary node to writes flowing through HAProxy again.

    The leader key may have just been renewed when the node dies (ttl), replicas may have just
    finished a loop (loop_wait), promotion takes about a second, and HAProxy needs `rise` checks at
    `inter` to mark the new primary up.
    """
    promote_s = 1.0
    t = timing
    return t.ttl_s + t.loop_wait_s + promote_s + t.haproxy_rise * t.haproxy_inter_s


def cluster_name(settings: EnvSettings) -> str:
    return f"cwh{settings.base_port}"


#: The first letters of a standby region's members' names (`member_name`).
STANDBY_MEMBER_PREFIX = "drpg"
EXPORTER_QUERIES = Path(__file__).resolve().parent / "postgres_exporter_queries.yaml"


def member_name(settings: EnvSettings, member: int) -> str:
    """Member `member`'s name to Patroni, PostgreSQL (its `application_name` when it streams)
    and HAProxy. A standby region's differ from the primary region's: its leader streams from
    the primary region, whose `synchronous_standby_names` names members; a standby leader
    called `pg1` there could be taken for the local `pg1` and made the synchronous standby."""
    return f"{STANDBY_MEMBER_PREFIX}{member}" if settings.standby else f"pg{member}"


def exporter_queries(settings: EnvSettings) -> str:
    """postgres-exporter's extra queries for this region: a walsender to a second region's
    leader is labelled `link="region"` in a primary region; a standby region's own walsenders
    (its members too start with the prefix) are all `local`, none streaming to another region."""
    prefix = "-" if settings.standby else STANDBY_MEMBER_PREFIX  # "-": no name starts so
    return EXPORTER_QUERIES.read_text().replace("__REGION_PREFIX__", prefix)


def member_index(name: str) -> int:
    """The member number in a member's name (`pg2` -> 2, `drpg1` -> 1)."""
    found = re.search(r"(\d+)$", name)
    if found is None:
        raise ValueError(f"{name!r} is no member name")
    return int(found.group(1))


def patroni_config(
    settings: EnvSettings,
    layout: Layout,
    secrets: Secrets,
    member: int,
    restore: dict[str, Any] | None = None,
) -> str:
    """Patroni's YAML for one member (Patroni 3.0, etcd v3 as DCS).

    `restore`: a bootstrap method that restores the cluster from the backup repository
    (`backup.restore_bootstrap`) instead of `initdb`; it runs only where the DCS has no cluster
    (`env/restore.py` makes it forget the lost one)."""
    ports = settings.ports
    conf: dict[str, Any] = {
        "scope": cluster_name(settings),
        "namespace": "/service/",
        "name": member_name(settings, member),
        "log": {
            "level": "INFO",
            "format": "%(asctime)s %(levelname)s: %(message)s",
            # HAProxy resets each check connection once it has the status line; Patroni's REST
            # server logs a traceback for every one of them (one a second per member).
            "loggers": {"patroni.api": "ERROR"},
        },
        "restapi": {
            "listen": f"{network.bind(settings)}:{ports.patroni(member)}",
            "connect_address": f"{network.host(settings, f'pg{member}')}:{ports.patroni(member)}",
            # Unsafe endpoints (POST /switchover, /restart, /reinitialize, ...) need these;
            # reads (/primary for HAProxy, /cluster, /metrics) stay open, on loopback only.
            "authentication": {"username": PATRONI_REST_USER, "password": secrets.patroni_rest},
        },
        "etcd3": {
            "hosts": [f"{network.host(settings, 'etcd')}:{ports.etcd_client}"],
            # etcd refuses every key-value call without a token (env/etcd.py).
            "username": ETCD_ROOT_USER,
            "password": secrets.etcd_root,
        },
        "bootstrap": {
            "dcs": {
                **settings.timing.patroni_dynamic,
                "maximum_lag_on_failover": 1048576,
                # 0: a crashed primary fails over to its synchronous standby (which has every
                # acknowledged commit) instead of being restarted in place for up to 300 s.
                "primary_start_timeout": 0,
                "synchronous_mode": True,
                "synchronous_mode_strict": settings.pg_sync_strict,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "wal_log_hints": "on",
                        "max_connections": 300,
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "wal_keep_size": "256MB",
                        "hot_standby_feedback": "on",
                        # Replicas report their replay position every second, so replay lag in
                        # pg_stat_replication is fresh enough to compare with a 1 s objective.
                        "wal_receiver_status_interval": "1s",
                        # A new replica asks for its slot before the leader's next loop has
                        # made it ("replication slot does not exist"); it asks again after
                        # this, 5 s by default: half of a cold start's wait, one time in two.
                        "wal_retrieve_retry_interval": "1s",
                        "shared_buffers": f"{PG_SHARED_BUFFERS_MIB}MB",
                        "track_commit_timestamp": "on",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"{network.bind(settings)}:{ports.postgres(member)}",
            # Where the other members stream from when this one is primary: through the fault
            # proxy when there is one, so a replication link can be slowed or cut.
            "connect_address": (
                f"{network.host(settings, 'faultproxy')}:{ports.proxy_pg_link(member)}"
                if settings.fault_proxy
                else f"{network.host(settings, f'pg{member}')}:{ports.postgres(member)}"
            ),
            "data_dir": str(layout.pg_data(member)),
            "bin_dir": PG_BIN,
            "pgpass": str(layout.pg_member(member) / "pgpass"),
            # A clone asks its source for a checkpoint; a spread one on a busy primary paces its
            # writes over most of checkpoint_timeout (50 s measured mid-suite), which a second
            # region's first member cloning across the region link cannot afford.
            "basebackup": {"checkpoint": "fast"},
            "authentication": patroni_authentication(layout, secrets),
            "parameters": {
                "unix_socket_directories": str(layout.pg_member(member)),
                "log_line_prefix": "%m [%p] %q%u@%d ",
                # Every autovacuum run and every lock wait over deadlock_timeout (1 s) is in the
                # member's log: a soak's latency window that slows for a minute is otherwise
                # unexplained (a 2-minute stall, pgBouncer waits x10, had no cause on record).
                "log_autovacuum_min_duration": 0,
                "log_lock_waits": "on",
                **postgres_tls_parameters(layout),
                **(archive_parameters(settings, layout, member) if settings.backups else {}),
            },
            "pg_hba": postgres_hba(settings),
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }
    if restore is not None:
        conf["bootstrap"] |= {"method": "pgbackrest", "pgbackrest": restore}
    if settings.standby:
        conf["bootstrap"]["dcs"]["standby_cluster"] = standby_cluster(settings)
        # Asynchronous by nature: the cross-region link never holds a commit in the primary
        # region, and a standby cluster's own members are cascade replicas of its leader.
        conf["bootstrap"]["dcs"]["synchronous_mode"] = False
    return yaml.safe_dump(conf, sort_keys=False)


def standby_cluster(settings: EnvSettings) -> dict[str, Any]:
    """Patroni's `standby_cluster` of a second region: its leader streams from the primary
    region's write path (HAProxy, so it follows that region's failovers) through this region's
    fault proxy, and its first member is cloned from there with pg_basebackup. No replication
    slot on the primary region (a slot for a region that is gone would keep WAL for ever there):
    a standby that falls more than `wal_keep_size` behind stops streaming for good (its status
    says so) and must be built again."""
    return {
        "host": "127.0.0.1",
        "port": settings.ports.proxy_region_link,
        "create_replica_methods": ["basebackup"],
    }


def archive_parameters(settings: EnvSettings, layout: Layout, member: int) -> dict[str, str]:
    """Continuous archiving to the backup repository (`env/backup.py`). `on`, not `always`: the
    primary archives, whichever member it is; a replica starts when it is promoted."""
    return {
        "archive_mode": "on",
        "archive_command": backup.archive_command(layout, member),
        "archive_timeout": f"{settings.archive_timeout_s}s",
    }


def patroni_authentication(layout: Layout, secrets: Secrets) -> dict[str, dict[str, str]]:
    """Patroni's accounts. Each connection it makes with them (its own to the local member, the
    standbys' replication, pg_rewind's to the new primary) verifies the server against the CA."""
    verify = {"sslmode": "verify-full", "sslrootcert": str(layout.ca_cert)}
    return {
        "superuser": {"username": "postgres", "password": secrets.pg_superuser, **verify},
        "replication": {"username": "replicator", "password": secrets.pg_replication, **verify},
        "rewind": {"username": "rewinder", "password": secrets.pg_rewind, **verify},
    }


def postgres_tls_parameters(layout: Layout) -> dict[str, str]:
    return {
        "ssl": "on",
        "ssl_cert_file": str(layout.server_cert("postgres")),
        "ssl_key_file": str(layout.server_key("postgres")),
        "ssl_min_protocol_version": TLS_MIN_VERSION,
    }


def postgres_hba(settings: EnvSettings) -> list[str]:
    """TLS or nothing over TCP: each account that connects gets a `hostssl` rule, and anything
    without TLS is rejected outright (before authentication, so no password crosses in clear).
    Password logins come from loopback only, or from the containers network."""
    return [
        "local all all trust",
        "hostnossl all all 0.0.0.0/0 reject",
        "hostnossl replication all 0.0.0.0/0 reject",
        *(
            rule
            for net in network.client_networks(settings)
            for rule in (
                f"hostssl replication replicator {net} scram-sha-256",
                # The application, the superuser (Patroni, exporters, the harness), pg_rewind's
                # user, and the replication user's logical walsender (Patroni reads timelines).
                f"hostssl all cloudwatcher,postgres,rewinder,replicator {net} scram-sha-256",
            )
        ),
    ]


def postgres_url_tls(layout: Layout) -> str:
    """The query string that makes a libpq or asyncpg URL verify the server (verify-full)."""
    return f"sslmode=verify-full&sslrootcert={layout.ca_cert}"


def haproxy_maxconn() -> int:
    """The most connections HAProxy can hold under this process's open-file hard limit.

    HAProxy needs about two descriptors per proxied connection and refuses to start when
    `maxconn` would need more than it may open.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    return max(256, min(50000, (hard - 256) // 2))


#: Paths the public frontend passes on (an allowlist: `/%6detrics` reaches aiohttp's `/metrics`,
#: so a denylist of internal prefixes could be walked around). Everything else answers 404 here.
PUBLIC_PATHS = ("/openapi.json", "/oauth/token", "/.well-known/jwks.json")
PUBLIC_PREFIXES = ("/v1/",)
#: Rate-limited per client address, one stick table each: (path, table).
AUTH_LIMITED = (("/v1/devices", "rl_register"), ("/oauth/token", "rl_token"))


def _json_reply(status: int, error: str, detail: str, *headers: str) -> str:
    body = json.dumps({"error": error, "detail": detail}, separators=(",", ":"))
    assert "'" not in body  # single-quoted for HAProxy: no escapes inside
    extra = "".join(f" hdr {h}" for h in headers)
    return (
        f"http-request return status {status} content-type application/json string '{body}'{extra}"
    )


#: HAProxy's own answers (no server, a bad gateway, a timeout, a malformed request), in the
#: API's JSON form instead of HTML pages: (status, code, detail, retry).
HAPROXY_ERRORS = (
    (400, "bad_request", "the request is not valid HTTP", False),
    (408, "request_timeout", "the request did not arrive in time", False),
    (500, "internal", "load balancer error", False),
    (502, "bad_gateway", "the server answered badly, retry", True),
    (503, "unavailable", "no server is available, retry", True),
    (504, "gateway_timeout", "the server did not answer in time, retry", True),
)


def haproxy_error_pages() -> str:
    """`http-error` lines for the HTTPS frontend's proxies: what HAProxy itself answers is JSON
    with a reason, like everything else a phone is told (and a Retry-After where retrying
    helps)."""
    lines = []
    for status, code, detail, retry in HAPROXY_ERRORS:
        body = json.dumps({"error": code, "detail": detail}, separators=(",", ":"))
        hdr = " hdr Retry-After 1" if retry else ""
        lines.append(
            f"    http-error status {status} content-type application/json{hdr} string '{body}'"
        )
    return "\n".join(lines)


def haproxy_public_rules(settings: EnvSettings) -> str:
    """The HTTPS frontend's rules: only the public API passes, and registration and tokens are
    rate limited per client address (`EnvSettings.auth_rate_limit_per_s`, over one second)."""
    limit = settings.auth_rate_limit_per_s
    lines = [
        "    # Health, metrics and admin routes stay on each replica's own port (HAProxy's checks",
        "    # and Prometheus use those): the public frontend passes only the public API.",
        f"    acl public_path path {' '.join(PUBLIC_PATHS)}",
        f"    acl public_path path_beg {' '.join(PUBLIC_PREFIXES)}",
        "    " + _json_reply(404, "not_found", "no such route") + " unless public_path",
    ]
    for n, (path, table) in enumerate(AUTH_LIMITED, start=1):
        lines += [
            f"    http-request track-sc{n} src table {table} if {{ path {path} }}",
            "    "
            + _json_reply(
                429,
                "too_many_requests",
                f"more than {limit} requests per second to {path} from this address",
                "Retry-After 1",
            )
            + f" if {{ path {path} }} {{ sc_http_req_rate({n},{table}) gt {limit} }}",
        ]
    return "\n".join(lines)


def haproxy_rate_tables() -> str:
    """One stick table per rate-limited path, keyed by client address, rates over one second."""
    return "\n".join(
        f"backend {table}\n    stick-table type ip size 100k expire 30s store http_req_rate(1s)"
        for _, table in AUTH_LIMITED
    )


def haproxy_config(settings: EnvSettings, layout: Layout, secrets: Secrets) -> str:
    """HAProxy 2.6: PostgreSQL write and read paths, the HTTPS frontend, stats and metrics."""
    ports = settings.ports
    t = settings.timing
    pg_check_timeout = f"{t.haproxy_inter_ms}ms"
    pg_check = (
        f"inter {t.haproxy_inter_ms}ms fall {t.haproxy_fall} rise {t.haproxy_rise} "
        "on-marked-down shutdown-sessions"
    )
    http_check = (
        # Up servers are checked every 5 s (the seed's); a server that is down is checked every
        # second, so a restarted replica is back in rotation within ~2 s of being ready.
        f"inter {HAPROXY_HTTP_CHECK_INTER_S}s fastinter 1s downinter 1s fall 2 rise 2 "
        "on-marked-down shutdown-sessions"
    )
    members = range(settings.pg_members)
    write_servers = "\n".join(
        f"    server {member_name(settings, m)} {network.host(settings, f'pg{m}')}:"
        f"{ports.postgres(m)} "
        f"check port {ports.patroni(m)}"
        for m in members
    )
    # A standby region's leader is no replica to Patroni (`/replica` answers 503 there) but
    # serves reads: until it is promoted, every member is read-only.
    read_check = "/read-only" if settings.standby else "/replica"
    bind = network.bind(settings)
    read_servers = "\n".join(
        f"    server {member_name(settings, m)} {network.host(settings, f'pg{m}')}:"
        f"{ports.postgres(m)} "
        f"check port {ports.patroni(m)}"
        for m in members
    )
    return f"""# Rendered by env/configs.py; edits are overwritten at the next `cwh env up`.
global
    # Timestamps: a restart or a server going down is read against the other components' logs.
    log stderr format iso local0 notice
    maxconn {haproxy_maxconn()}
    stats socket {layout.haproxy_socket} mode 600 level admin expose-fd listeners
    stats timeout 30s
    ssl-default-bind-options ssl-min-ver TLSv1.3
    tune.ssl.default-dh-param 2048
    # No shared TLS session cache: with TLS 1.3 only, clients resume from stateless tickets
    # (sealed with the worker's ticket keys), so the cache served no resumption; yet every
    # ticket issued was stored in it, page by page until its 20,000 entries were full: 4.7
    # MiB that a soak read as HAProxy's memory growing (+1 MiB per 2,000 full handshakes).
    tune.ssl.cachesize 0

defaults
    log global
    option dontlognull
    timeout connect 2s
    # Every wait has a deadline. A client gets 10 s to send its request headers (slowloris
    # cannot hold a connection), 30 s of silence either way mid-request; a WebSocket, once
    # upgraded, is a tunnel the hub's 30 s heartbeat keeps busy.
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout client 30s
    timeout server 30s
    timeout client-fin 5s
    timeout server-fin 5s
    timeout check 1s
    timeout tunnel 1h

# Writes go to whichever member Patroni says is the primary.
listen pg_write
    mode tcp
    bind {bind}:{ports.haproxy_write}
    # Pooled database connections sit idle between queries (pgBouncer keeps them 30 s, asyncpg
    # 60 s, replication streams for ever): TCP paths are not held to the HTTP deadlines.
    timeout client 1h
    timeout server 1h
    # A check's answer is awaited one interval, as the failover model counts it.
    timeout check {pg_check_timeout}
    # A connection refused by a member that has just died (still UP until `fall` checks) is
    # retried on another UP member at once, the new primary as soon as it is marked UP: a retry
    # on the same server waits min(timeout connect, 1 s) first, up to three times.
    option redispatch 1
    option httpchk GET /primary
    http-check expect status 200
    default-server {pg_check}
{write_servers}

# Reads go to streaming replicas; the primary answers only when no replica does.
listen pg_read
    mode tcp
    bind {bind}:{ports.haproxy_read}
    timeout client 1h
    timeout server 1h
    timeout check {pg_check_timeout}
    option redispatch 1
    balance roundrobin
    option httpchk GET {read_check}
    http-check expect status 200
    default-server {pg_check}
{read_servers}
    server pg_primary_fallback 127.0.0.1:{ports.haproxy_write} backup

# The phone's entry point: TLS 1.3 only, API and hub servers added at run time.
frontend https
    mode http
    bind {bind}:{ports.haproxy_https} ssl crt {layout.tls_pem} ssl-min-ver TLSv1.3 alpn http/1.1
    option forwardfor
    # The whole request, body included, within `timeout http-request`: without it that timeout
    # covers the headers only, and a body trickling in a byte every 29 s holds a connection
    # (and an API replica's handler) for as long as the client likes.
    option http-buffer-request
    http-request set-header X-Forwarded-Proto https
    http-response set-header Strict-Transport-Security "max-age=31536000"
{haproxy_error_pages()}
{haproxy_public_rules(settings)}
    acl is_updates path_beg /v1/updates
    use_backend hub if is_updates
    default_backend api

backend api
    mode http
    balance roundrobin
{haproxy_error_pages()}
    option httpchk GET /health/ready
    http-check expect status 200
    # A replica killed before the checks mark it down: a refused connection goes to another
    # server at once, and so does a request sent on a pooled connection that the dead replica
    # never answered (without L7 retries that is a 502 to the phone; the harness saw it).
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    # No affinity: the API is stateless (the seed's sticky sessions are for WebSockets), and
    # each request is balanced on its own, so replicas added by a scale-out serve the phones
    # already connected, not only new ones.
    default-server {http_check}
    server-template api 1-{HAPROXY_API_SLOTS} 127.0.0.1:1 check disabled

# WebSockets stick to one hub through the cookie, the seed's "sticky sessions".
backend hub
    mode http
    balance leastconn
{haproxy_error_pages()}
    option httpchk GET /health/ready
    http-check expect status 200
    # A replica killed before the checks mark it down: a refused connection goes to another
    # server at once, and so does a request sent on a pooled connection that the dead replica
    # never answered (without L7 retries that is a 502 to the phone; the harness saw it).
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    cookie CWHUB insert indirect nocache dynamic
    dynamic-cookie-key {secrets.haproxy_cookie_key}
    timeout tunnel 1h
    default-server {http_check}
    server-template hub 1-{HAPROXY_HUB_SLOTS} 127.0.0.1:1 check disabled

{haproxy_rate_tables()}

frontend stats
    mode http
    bind {bind}:{ports.haproxy_stats}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
    stats refresh 5s
"""


def global_lb_config(settings: EnvSettings, layout: Layout, failed_over: bool = False) -> str:
    """The global entry point a standby region runs (what DNS failover or an anycast front door
    is in production): TLS passed through to the primary region's HTTPS frontend while it
    serves, to this region's once it does not. A region serves when its public API answers
    (`/openapi.json` through its frontend, verified against the shared CA): a standby region's
    does only once promoted, its services being started then.

    `failed_over`: this region was promoted and serves; the primary region's server is off for
    good (no failback: its database is no longer the one that takes writes, and going back is
    a decision, as the promotion was). The supervisor also turns it off at run time."""
    primary = Ports(settings.standby_of).haproxy_https
    check = (
        f"check check-ssl verify required ca-file {layout.ca_cert} "
        "inter 1s fall 2 rise 2 on-marked-down shutdown-sessions"
    )
    off = " disabled" if failed_over else ""
    return f"""# Rendered by env/configs.py; edits are overwritten at the next `cwh env up`.
global
    log stderr format iso local0 notice
    maxconn {haproxy_maxconn()}
    stats socket {layout.global_lb_dir / "admin.sock"} mode 600 level admin

defaults
    log global
    mode tcp
    timeout connect 2s
    # A WebSocket through it lives long; the regions' frontends bound the HTTP waits.
    timeout client 1h
    timeout server 1h
    timeout check 2s

frontend global_https
    bind 127.0.0.1:{settings.ports.global_https}
    default_backend regions

backend regions
    option httpchk GET /openapi.json
    http-check expect status 200
    default-server {check}
    server {ENTRY_PRIMARY} 127.0.0.1:{primary}{off}
    server {ENTRY_STANDBY} 127.0.0.1:{settings.ports.haproxy_https} backup
"""


#: The global entry point's servers.
ENTRY_PRIMARY, ENTRY_STANDBY = "primary-region", "standby-region"


def pgbouncer_config(settings: EnvSettings, layout: Layout) -> str:
    """pgBouncer in transaction pooling mode in front of HAProxy's write path.

    Transaction pooling hands a server connection to another client after each transaction, so
    named prepared statements do not survive: asyncpg needs `statement_cache_size=0`, psycopg
    `prepare_threshold=None`.
    """
    ports = settings.ports
    return f"""[databases]
* = host={network.host(settings, "haproxy")} port={ports.haproxy_write}

[pgbouncer]
listen_addr = {network.bind(settings)}
listen_port = {ports.pgbouncer}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {layout.pgbouncer_dir / "userlist.txt"}
admin_users = postgres
stats_users = postgres
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 40
reserve_pool_size = 10
server_lifetime = 300
server_idle_timeout = 30
server_connect_timeout = 3
server_login_retry = {settings.timing.pgbouncer_login_retry_s:g}
query_wait_timeout = 30
ignore_startup_parameters = extra_float_digits,options
logfile =
pidfile =
log_connections = 0
log_disconnections = 0
{pgbouncer_tls(layout)}"""


def pgbouncer_tls(layout: Layout) -> str:
    """Clients must speak TLS to pgBouncer, and pgBouncer verifies the member it reaches through
    HAProxy's write path (TLS passes through HAProxy's TCP proxying)."""
    return f"""client_tls_sslmode = require
client_tls_cert_file = {layout.server_cert("postgres")}
client_tls_key_file = {layout.server_key("postgres")}
client_tls_protocols = {TLS_MIN_VERSION.lower()}
server_tls_sslmode = verify-full
server_tls_ca_file = {layout.ca_cert}
server_tls_protocols = {TLS_MIN_VERSION.lower()}
"""


def pgbouncer_userlist(secrets: Secrets) -> str:
    return f'"postgres" "{secrets.pg_superuser}"\n"cloudwatcher" "{secrets.pg_app}"\n'


def redis_config(settings: EnvSettings, layout: Layout, secrets: Secrets, node: int) -> str:
    """One Redis Cluster node: TLS only, ACL users, AOF and RDB on, LRU eviction, fast failure
    detection. Holds the replication password: write it mode 0600."""
    port = settings.ports.redis(node)
    d = layout.redis_dir(node)
    # Cluster clients (and replicas) learn a node's address from the node itself: announcing the
    # fault proxy's port routes them through it; the cluster bus stays direct, so a partition
    # between a master and its clients is not also one between the nodes. With `tls-cluster`,
    # what a TLS client is told is `cluster-announce-tls-port`.
    announce = (
        "cluster-announce-ip 127.0.0.1\n"
        f"cluster-announce-tls-port {settings.ports.proxy_redis(node)}\n"
        f"cluster-announce-bus-port {port + 10000}\n"
        if settings.fault_proxy
        else ""
    )
    if network.containers(settings):
        # Its own address for clients and the bus alike: announcing the fault proxy's would send
        # the cluster bus there too. Partitions on this runtime are the network's own.
        announce = f"cluster-announce-ip {network.host(settings, f'redis{node}')}\n"
    return f"""bind {network.bind(settings)}
port 0
tls-port {port}
{redis_tls_and_acl(layout, secrets)}protected-mode no
daemonize no
dir {d}
cluster-enabled yes
cluster-config-file nodes.conf
{announce}cluster-node-timeout {settings.timing.redis_node_timeout_ms}
cluster-replica-validity-factor 0
cluster-require-full-coverage no
appendonly yes
appendfsync everysec
save 60 1000
save 300 10
maxmemory {REDIS_MAXMEMORY_MIB}mb
maxmemory-policy allkeys-lru
loglevel notice
logfile ""
"""


def redis_announced_port(settings: EnvSettings, node: int) -> int:
    """The port node `node` tells clients and the cluster it has (`redis_config`)."""
    if settings.fault_proxy and not network.containers(settings):
        return settings.ports.proxy_redis(node)
    return settings.ports.redis(node)


def redis_tls_and_acl(layout: Layout, secrets: Secrets) -> str:
    """TLS on the client port, the cluster bus and replication; ACL users instead of `default`
    (a client that has not authenticated gets NOAUTH). Passwords go in as SHA-256 hashes, except
    the one a replica must send to its master."""

    def user(name: str, password: str, rules: str) -> str:
        digest = hashlib.sha256(password.encode()).hexdigest()
        return f"user {name} on #{digest} {rules}\n"

    def allow(commands: tuple[str, ...]) -> str:
        return " ".join(f"+{c}" for c in commands)

    app_keys = " ".join(f"~{k}" for k in REDIS_APP_KEYS)
    return (
        f"tls-cert-file {layout.server_cert('redis')}\n"
        f"tls-key-file {layout.server_key('redis')}\n"
        f"tls-ca-cert-file {layout.ca_cert}\n"
        # Clients authenticate with ACL passwords, not certificates.
        "tls-auth-clients no\n"
        f"tls-protocols {TLS_MIN_VERSION}\n"
        "tls-cluster yes\n"
        "tls-replication yes\n"
        "user default off resetkeys resetchannels -@all\n"
        + user(REDIS_ADMIN_USER, secrets.redis_admin, "~* &* +@all")
        + user(
            REDIS_APP_USER,
            secrets.redis_app,
            f"resetkeys {app_keys} resetchannels &{NOTIFY_CHANNEL} -@all "
            f"{allow(REDIS_APP_COMMANDS)}",
        )
        + user(REDIS_REPLICATION_USER, secrets.redis_replication, "-@all +psync +replconf +ping")
        + user(
            REDIS_EXPORTER_USER,
            secrets.redis_exporter,
            f"resetkeys resetchannels -@all {allow(REDIS_EXPORTER_COMMANDS)}",
        )
        + f"masteruser {REDIS_REPLICATION_USER}\n"
        f"masterauth {secrets.redis_replication}\n"
    )


def redis_admin_credentials(layout: Layout, secrets: Secrets) -> RedisCredentials:
    """What the harness (supervisor, status, tests) uses to reach a Redis node."""
    return RedisCredentials(REDIS_ADMIN_USER, secrets.redis_admin, str(layout.ca_cert))


def prometheus_config(settings: EnvSettings, layout: Layout) -> str:
    """Prometheus scraping everything the environment runs, plus file_sd for services."""
    ports = settings.ports
    interval = f"{settings.scrape_interval_s:g}s"
    redis_targets = [
        f"rediss://{network.host(settings, f'redis{n}')}:{ports.redis(n)}"
        for n in range(settings.redis_nodes)
    ]

    def at(name: str, port: int) -> str:
        return f"{network.host(settings, name)}:{port}"

    conf: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": interval,
            "external_labels": {"environment": f"local-{settings.base_port}"},
        },
        "rule_files": [str(layout.prometheus_dir / "rules" / "*.yml")],
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [at("prometheus", ports.prometheus)]}],
            },
            {
                "job_name": "patroni",
                "static_configs": [
                    {
                        "targets": [at(f"pg{m}", ports.patroni(m))],
                        "labels": {"member": f"pg{m}"},
                    }
                    for m in range(settings.pg_members)
                ],
            },
            {
                "job_name": "haproxy",
                "static_configs": [{"targets": [at("haproxy", ports.haproxy_stats)]}],
            },
            {
                # The supervisor as kube-state-metrics: Deployments, HPAs and PDBs under their
                # Kubernetes names, so the autoscaling SLOs read a cluster's Prometheus alike.
                "job_name": "kube-state-metrics",
                "static_configs": [
                    {"targets": [f"{network.supervisor_host(settings)}:{ports.supervisor}"]}
                ],
            },
            {
                "job_name": "postgres",
                "static_configs": [
                    {
                        "targets": [at(f"postgres-exporter{m}", ports.postgres_exporter(m))],
                        "labels": {"member": f"pg{m}"},
                    }
                    for m in range(settings.pg_members)
                ],
            },
            {
                # redis_exporter's multi-target mode: one exporter, one scrape per node.
                "job_name": "redis",
                "metrics_path": "/scrape",
                "static_configs": [{"targets": redis_targets}],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {
                        "target_label": "__address__",
                        "replacement": at("redis-exporter", ports.redis_exporter),
                    },
                ],
            },
            {
                # Services of the reference implementation register here as they start.
                "job_name": "services",
                "file_sd_configs": [
                    {
                        "files": [str(layout.prometheus_targets / "*.json")],
                        "refresh_interval": interval,
                    }
                ],
            },
        ],
    }
    return yaml.safe_dump(conf, sort_keys=False)


def prometheus_target_file(targets: list[str], labels: dict[str, str]) -> str:
    """A file_sd entry: drop it into `Layout.prometheus_targets` to get scraped."""
    return json.dumps([{"targets": targets, "labels": labels}], indent=2)


def fault_proxies(settings: EnvSettings) -> list[dict[str, Any]]:
    """The fault proxy's proxies, in Toxiproxy's config format (`toxiproxy-server -config`)."""
    ports = settings.ports

    def proxy(name: str, listen: int, upstream: int, to: str = "") -> dict[str, Any]:
        return {
            "name": name,
            "listen": f"{network.bind(settings)}:{listen}",
            "upstream": f"{network.host(settings, to) if to else network.LOOPBACK}:{upstream}",
            "enabled": True,
        }

    return [
        proxy("postgres-write", ports.proxy_pg_write, ports.pgbouncer, "pgbouncer"),
        proxy("postgres-read", ports.proxy_pg_read, ports.haproxy_read, "haproxy"),
        proxy("llm", ports.proxy_llm, ports.llm, "llm"),
        proxy("sharepoint", ports.proxy_sharepoint, ports.sharepoint, "sharepoint"),
        proxy("gdrive", ports.proxy_gdrive, ports.gdrive, "gdrive"),
        *(
            proxy(f"pg{m}-replication", ports.proxy_pg_link(m), ports.postgres(m), f"pg{m}")
            for m in range(settings.pg_members)
        ),
        *(
            proxy(f"redis{n}", ports.proxy_redis(n), ports.redis(n), f"redis{n}")
            for n in range(settings.redis_nodes)
        ),
        *(
            [proxy(REGION_LINK, ports.proxy_region_link, Ports(settings.standby_of).haproxy_write)]
            if settings.standby
            else []
        ),
    ]


#: The fault proxy's name for a standby region's replication link to the primary region.
REGION_LINK = "region-link"


def region_latency_toxics(settings: EnvSettings) -> list[dict[str, Any]]:
    """The cross-region link's delay, each direction (Toxiproxy's latency toxic delays one
    stream): `region_latency_ms` with a tenth of it as jitter."""
    ms = settings.region_latency_ms
    return [
        {
            "name": f"region-latency-{stream}",
            "type": "latency",
            "stream": stream,
            "toxicity": 1.0,
            "attributes": {"latency": ms, "jitter": ms // 10},
        }
        for stream in ("downstream", "upstream")
        if ms > 0
    ]
