"""Who leads, sampled while no fault is injected: every change is a spurious failover.

Faster failure detection has a price: a member that misses its heartbeats under load or CPU
contention is taken for dead when it is only slow, and the cluster fails over for nothing. A
no-fault soak samples the PostgreSQL cluster (Patroni's `/cluster`: the leader, its timeline,
each member's role) and the Redis Cluster (`CLUSTER NODES`: the masters serving slots;
`CLUSTER INFO`: the current epoch, which every failover raises) and counts:

- PostgreSQL leader changes (the leader's name changed between two samples);
- timeline changes (a promotion, also one that put the same member back in charge between two
  samples, or a crash restart that Patroni answered with a promotion);
- demotions (a member seen as leader, later seen as anything else, with or without a new leader);
- Redis master changes (the set of nodes serving slots changed) and epoch bumps.

A sample that could not be taken (a probe error) is skipped: changes are counted between the
known values around it, so a gap hides nothing that lasted past it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from env import probes


@dataclass(frozen=True)
class RoleSample:
    """The roles at one moment (`t_s`: seconds since the sampling began). A field is None or
    empty when its probe failed; `errors` says why."""

    t_s: float
    pg_roles: dict[str, str] = field(default_factory=dict)
    pg_timeline: int | None = None
    redis_masters: tuple[str, ...] = ()
    redis_epoch: int | None = None
    errors: tuple[str, ...] = ()

    @property
    def pg_leader(self) -> str | None:
        leaders = [m for m, role in self.pg_roles.items() if role in ("leader", "standby_leader")]
        return leaders[0] if len(leaders) == 1 else None


@dataclass(frozen=True)
class RoleChanges:
    """What changed over a series of samples; `events` says when and what, in order."""

    pg_leader_changes: int
    pg_timeline_changes: int
    pg_demotions: int
    redis_master_changes: int
    redis_epoch_bumps: int
    samples: int
    pg_samples: int
    redis_samples: int
    events: list[str]

    @property
    def total(self) -> int:
        """Failovers: one PostgreSQL failover changes the leader, raises the timeline and
        demotes the old leader (once it is back), so the most of the three counts them; one
        Redis failover changes a slot range's master and raises the epoch (a replica's election
        that failed raises it too: an attempt is counted)."""
        pg = max(self.pg_leader_changes, self.pg_timeline_changes, self.pg_demotions)
        return pg + max(self.redis_master_changes, self.redis_epoch_bumps)

    def summary(self) -> str:
        return (
            f"PostgreSQL: {self.pg_leader_changes} leader changes, {self.pg_timeline_changes} "
            f"timelines, {self.pg_demotions} demotions; Redis: {self.redis_master_changes} "
            f"master changes, {self.redis_epoch_bumps} epoch bumps"
        )


def role_changes(samples: Sequence[RoleSample]) -> RoleChanges:
    """Count the changes between consecutive known values (pure)."""
    events: list[str] = []
    leader_changes = timeline_changes = demotions = master_changes = epoch_bumps = 0
    leader: str | None = None
    timeline: int | None = None
    roles: dict[str, str] = {}
    masters: tuple[str, ...] | None = None
    epoch: int | None = None
    pg_samples = redis_samples = 0
    for s in samples:
        if s.pg_roles:
            pg_samples += 1
            for member, role in s.pg_roles.items():
                was = roles.get(member)
                if was == "leader" and role != "leader":
                    demotions += 1
                    events.append(f"{s.t_s:.0f} s: PostgreSQL {member} demoted ({was} -> {role})")
                roles[member] = role
            now = s.pg_leader
            if now is not None:
                if leader is not None and now != leader:
                    leader_changes += 1
                    events.append(f"{s.t_s:.0f} s: PostgreSQL leader {leader} -> {now}")
                leader = now
        if s.pg_timeline is not None:
            if timeline is not None and s.pg_timeline != timeline:
                # Two promotions hidden by a probe's gap raise it by two.
                timeline_changes += max(1, s.pg_timeline - timeline)
                events.append(f"{s.t_s:.0f} s: timeline {timeline} -> {s.pg_timeline}")
            timeline = s.pg_timeline
        if s.redis_masters:
            redis_samples += 1
            if masters is not None and s.redis_masters != masters:
                master_changes += 1
                events.append(
                    f"{s.t_s:.0f} s: Redis masters {', '.join(masters)} -> "
                    f"{', '.join(s.redis_masters)}"
                )
            masters = s.redis_masters
        if s.redis_epoch is not None:
            if epoch is not None and s.redis_epoch > epoch:
                epoch_bumps += s.redis_epoch - epoch
                events.append(f"{s.t_s:.0f} s: Redis epoch {epoch} -> {s.redis_epoch}")
            # The highest seen: a node that answers with an older epoch (it has not heard of a
            # bump yet) must not make the same bump count twice.
            epoch = s.redis_epoch if epoch is None else max(epoch, s.redis_epoch)
    return RoleChanges(
        pg_leader_changes=leader_changes,
        pg_timeline_changes=timeline_changes,
        pg_demotions=demotions,
        redis_master_changes=master_changes,
        redis_epoch_bumps=epoch_bumps,
        samples=len(samples),
        pg_samples=pg_samples,
        redis_samples=redis_samples,
        events=events,
    )


@dataclass(frozen=True)
class RoleProbe:
    """Where the roles are read: every Patroni's REST port (the first that answers is asked)
    and every Redis node's port, with the harness's Redis user."""

    patroni_ports: list[int]
    redis_ports: list[int]
    redis_creds: probes.RedisCredentials | None

    @classmethod
    def of(cls, settings: Any, urls: Mapping[str, str], ca_file: str) -> RoleProbe:
        """From an environment's settings and its status's URLs (`redis`: the admin user)."""
        ports = settings.ports
        creds = None
        if urls.get("redis"):
            url = urlsplit(urls["redis"])
            creds = probes.RedisCredentials(url.username or "", url.password or "", ca_file)
        return cls(
            [ports.patroni(m) for m in range(settings.pg_members)],
            [ports.redis(n) for n in range(settings.redis_nodes)],
            creds,
        )

    async def sample(self, t_s: float) -> RoleSample:
        errors: list[str] = []
        pg_roles: dict[str, str] = {}
        timeline = None
        try:
            members = await probes.patroni_cluster(self.patroni_ports)
            pg_roles = {m.name: m.role for m in members}
            timeline = next(
                (m.timeline for m in members if m.role in ("leader", "standby_leader")), None
            )
        except Exception as exc:  # one failed probe is a gap, not the end of the record
            errors.append(f"patroni: {type(exc).__name__}: {exc}")
        masters: tuple[str, ...] = ()
        epoch = None
        if self.redis_creds is not None and self.redis_ports:
            try:
                info, nodes = await probes.redis_cluster_view(self.redis_ports, self.redis_creds)
                masters = tuple(
                    sorted(str(n.port) for n in nodes if n.role == "master" and n.slots > 0)
                )
                epoch = int(info["cluster_current_epoch"])
            except Exception as exc:
                errors.append(f"redis: {type(exc).__name__}: {exc}")
        return RoleSample(t_s, pg_roles, timeline, masters, epoch, tuple(errors))

    def sample_now(self, t_s: float) -> RoleSample:
        """`sample` from a thread without an event loop (the soak's sampler)."""
        return asyncio.run(self.sample(t_s))
