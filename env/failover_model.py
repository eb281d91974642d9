"""The config-to-RTO model: from the environment's timing settings, the worst-case time each
failover experiment should take to give a path back, term by term.

`make bench-chaos` prints each bound beside the measured distribution, so a setting changed for
speed shows its effect on both (and a measurement above its bound says the model misses a
step). The terms are upper bounds of each step, worst phase of each periodic loop included; the
measured RTO (from the fault to the first of five good operations in a row on the path, seen
by the phones) should sit between the bound's fixed part and the bound itself.

The steps, per experiment:

- pg-lose-primary-node (postgres and Patroni SIGKILLed: nobody releases the leader key): the key
  expires (ttl after its last renewal), a replica notices at its next loop (loop_wait), promotes
  itself (about a second), HAProxy marks it up after `rise` checks at `inter`, pgBouncer tries
  the server again after its `server_login_retry`, and a phone's next attempt comes after the
  503's Retry-After.
- pg-kill-primary (postgres SIGKILLed, Patroni alive; primary_start_timeout 0): Patroni notices
  at its next loop and releases the key; the synchronous standby, woken by its watch on the key,
  takes it and promotes; then HAProxy and the phone as above.
- pg-switchover (planned): the primary demotes, the standby promotes; HAProxy needs `fall`
  checks to take the old primary out and `rise` to put the new one in (whichever is longer).
- redis-kill-master: a peer's next ping to the dead master leaves up to half the node timeout
  after the kill, the master is marked failing cluster-node-timeout after it, the failure is
  agreed through gossip (about half the timeout), its replica waits its election delay (500 ms
  + up to 500 ms random + rank x 1 s; rank 0 with one replica) and wins; the services' breaker
  on the dead master lets a call through every REDIS_COOLDOWN_S (reference_impl stores.py),
  which finds the new owner; then the phone's next attempt. The notification path needs no
  election (the hub subscribes on any node): its bound is loose, not wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from env.failover_timing import STANDARD, FailoverTiming
from reference_impl.stores import REDIS_COOLDOWN_S

#: How long a promotion takes once a member has decided to promote (pg_ctl promote, the
#: new timeline, Patroni's role change): measured on this machine at under a second.
PROMOTE_S = 1.0
#: A planned switchover's demotion of the old primary (a fast shutdown and restart as replica).
DEMOTE_S = 1.0
#: A phone's next attempt on a path after a 503 (the API's Retry-After).
CLIENT_RETRY_S = 1.0
#: Redis Cluster's replica election delay: 500 ms fixed + up to 500 ms random + rank x 1 s.
REDIS_ELECTION_DELAY_S = 1.0


@dataclass(frozen=True)
class Term:
    """One step of a failover and its worst case."""

    name: str
    seconds: float


@dataclass(frozen=True)
class Bound:
    """The predicted worst-case RTO of one path in one experiment, with its derivation."""

    experiment: str
    path: str
    terms: tuple[Term, ...]

    @property
    def seconds(self) -> float:
        return round(sum(t.seconds for t in self.terms), 3)

    def formula(self) -> str:
        """e.g. `ttl 10 + loop_wait 2 + promote 1 + rise x inter 1 + retry 1 = 15 s`."""
        parts = " + ".join(f"{t.name} {t.seconds:g}" for t in self.terms)
        return f"{parts} = {self.seconds:g} s"


def _haproxy_up(t: FailoverTiming) -> Term:
    return Term("rise x inter", t.haproxy_rise * t.haproxy_inter_s)


def _retry() -> Term:
    return Term("phone retry", CLIENT_RETRY_S)


def _redis_failover(t: FailoverTiming) -> tuple[Term, ...]:
    timeout_s = t.redis_node_timeout_ms / 1000
    return (
        # A node pings each peer at least every half node timeout: the first unanswered ping
        # after the kill may leave that long after it, and the timeout counts from that ping.
        Term("ping phase", timeout_s / 2),
        Term("cluster-node-timeout", timeout_s),
        # The failure report's spread through gossip, the same half timeout.
        Term("gossip", timeout_s / 2),
        Term("election delay", REDIS_ELECTION_DELAY_S),
        # The services' breaker on the dead master lets a trial call through this often.
        Term("breaker cooldown", REDIS_COOLDOWN_S),
        _retry(),
    )


def _pgbouncer_retry(t: FailoverTiming) -> Term:
    """Writes go through pgBouncer, which waits this long before it tries a server again."""
    return Term("server_login_retry", t.pgbouncer_login_retry_s)


def bounds(t: FailoverTiming = STANDARD) -> dict[str, dict[str, Bound]]:
    """experiment -> path -> its predicted bound under timings `t`, for the paths the
    experiment interrupts."""
    loop = Term("loop_wait", t.loop_wait_s)
    node_loss = Bound(
        "pg-lose-primary-node",
        "write",
        (
            Term("ttl", t.ttl_s),
            loop,
            Term("promote", PROMOTE_S),
            _haproxy_up(t),
            _pgbouncer_retry(t),
            _retry(),
        ),
    )
    crash = Bound(
        "pg-kill-primary",
        "write",
        (loop, Term("promote", PROMOTE_S), _haproxy_up(t), _pgbouncer_retry(t), _retry()),
    )
    switchover = Bound(
        "pg-switchover",
        "write",
        (
            Term("demote", DEMOTE_S),
            Term("promote", PROMOTE_S),
            Term(
                "max(fall, rise) x inter",
                max(t.haproxy_fall, t.haproxy_rise) * t.haproxy_inter_s,
            ),
            _pgbouncer_retry(t),
            _retry(),
        ),
    )
    out: dict[str, dict[str, Bound]] = {
        b.experiment: {b.path: b} for b in (node_loss, crash, switchover)
    }
    out["redis-kill-master"] = {
        path: Bound("redis-kill-master", path, _redis_failover(t))
        for path in ("write", "notification")
    }
    return out


#: Issue #17's goals: p95 of the path's RTO over >= 10 jittered trials, in seconds.
GOALS_P95_S: dict[tuple[str, str], float] = {
    ("pg-kill-primary", "write"): 3.0,
    ("pg-lose-primary-node", "write"): 8.0,
    ("redis-kill-master", "notification"): 2.0,
}
