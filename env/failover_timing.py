"""How fast the environment detects a lost primary: one named set of timings (`CWH_FAILOVER`).

Faster detection is not free: a shorter Patroni ttl and retry_timeout demote a leader whose
etcd or PostgreSQL calls stall for less time, and a shorter Redis node timeout fails over a
master that was only starved of CPU. So the timings come as two profiles, each derived from
the config-to-RTO model (`env/failover_model.py`) and measured by `make bench-chaos`, which
counts the spurious failovers of a no-fault soak beside the RTOs (README, "Failover time"):

- `standard` (the default): ttl 10 s, loop_wait 2 s, retry_timeout 4 s, HAProxy checks every
  1 s, Redis cluster-node-timeout 2 s, pgBouncer's server_login_retry 1 s;
- `fast`: issue #17's p95 goals (crash 3 s, node loss 8 s, Redis 2 s) as the target: ttl 5 s,
  loop_wait 1 s, retry_timeout 2 s (Patroni's rule `loop_wait + 2 * retry_timeout <= ttl`
  holds with equality), HAProxy checks every 0.5 s, cluster-node-timeout 1 s,
  server_login_retry 0.5 s.

A cluster keeps the Patroni timings it was created with in etcd; `up` writes the profile's
into the cluster's dynamic configuration when they differ, so a changed `CWH_FAILOVER` takes
effect at the next `up`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class FailoverTiming:
    """The settings that decide how soon a failure is detected and a path given back."""

    name: str
    #: Patroni: the leader key's lifetime, each member's loop, the patience with DCS and
    #: PostgreSQL calls before a leader demotes itself.
    ttl_s: int
    loop_wait_s: int
    retry_timeout_s: int
    #: HAProxy's checks of Patroni's REST API on the write and read paths.
    haproxy_inter_ms: int
    haproxy_fall: int
    haproxy_rise: int
    #: Redis Cluster: how long a node may not answer before it is taken as failing.
    redis_node_timeout_ms: int
    #: pgBouncer's wait before it tries a server again after a failed login or connection.
    pgbouncer_login_retry_s: float

    def __post_init__(self) -> None:
        # Patroni's own rule: a leader must be able to retry a DCS call twice within one ttl.
        if self.loop_wait_s + 2 * self.retry_timeout_s > self.ttl_s:
            raise ValueError(f"{self.name}: loop_wait + 2 * retry_timeout must be <= ttl")

    @property
    def haproxy_inter_s(self) -> float:
        return self.haproxy_inter_ms / 1000

    @property
    def patroni_dynamic(self) -> dict[str, int]:
        """The part Patroni keeps in the DCS (its dynamic configuration)."""
        return {
            "ttl": self.ttl_s,
            "loop_wait": self.loop_wait_s,
            "retry_timeout": self.retry_timeout_s,
        }

    def rows(self) -> list[tuple[str, str]]:
        """(setting, value) for reports (run reports, bench-chaos.json)."""
        return [
            ("failover profile", self.name),
            (
                "Patroni",
                f"ttl {self.ttl_s} s, loop_wait {self.loop_wait_s} s, "
                f"retry_timeout {self.retry_timeout_s} s",
            ),
            (
                "HAProxy PostgreSQL checks",
                f"inter {self.haproxy_inter_s:g} s fall {self.haproxy_fall} "
                f"rise {self.haproxy_rise}",
            ),
            ("Redis cluster-node-timeout", f"{self.redis_node_timeout_ms} ms"),
            ("pgBouncer server_login_retry", f"{self.pgbouncer_login_retry_s:g} s"),
        ]


PROFILES = MappingProxyType(
    {
        "standard": FailoverTiming(
            name="standard",
            ttl_s=10,
            loop_wait_s=2,
            retry_timeout_s=4,
            haproxy_inter_ms=1000,
            haproxy_fall=2,
            haproxy_rise=1,
            redis_node_timeout_ms=2000,
            pgbouncer_login_retry_s=1.0,
        ),
        "fast": FailoverTiming(
            name="fast",
            ttl_s=5,
            loop_wait_s=1,
            retry_timeout_s=2,
            haproxy_inter_ms=500,
            haproxy_fall=2,
            haproxy_rise=1,
            redis_node_timeout_ms=1000,
            pgbouncer_login_retry_s=0.5,
        ),
    }
)
STANDARD = PROFILES["standard"]
#: The slowest profile: the bound every wait for a failover uses, whatever the profile.
SLOWEST = max(PROFILES.values(), key=lambda t: (t.ttl_s + t.loop_wait_s, t.redis_node_timeout_ms))
