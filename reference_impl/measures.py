"""What the leading scheduler measures for the SLOs: what the system did, not what it was told.

The SLOs of retention, periodic jobs and cache expiry (`slo/definitions/`) read these:

- the age of the oldest row that retention should have removed by now: finished requests still
  in the hot table (archived after 6 months), dead letters (14 days), the event log (30 days),
  the scheduler's run log (7 days);
- each periodic job's last run, its outcome, and how many of its intervals have passed since it
  last succeeded (from the run log, so a new leader knows what the old one did);
- the backups really in the pgBackRest repository: how many, the newest, the oldest and the
  newest full one (`reference_impl/backups.py`);
- TTLs on real Redis keys: for a sample of `req:*` and `resp:*` keys, the TTL each was given
  (its remaining PTTL plus the time since it was last touched, which is exact for a key nobody
  read since it was written) and how many have no TTL at all.

The leader exports them (`Exporter`, a Prometheus collector); a follower exports none of them,
so nothing stale outlives a change of leader.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reference_impl.backups import Backups

log = logging.getLogger("cw.scheduler")

#: Request states that never change again: what the archive takes.
FINISHED = ("completed", "failed", "dead_lettered")
#: A sample older than this is not exported: the numbers would describe the past as the present.
SAMPLE_STALE_S = 30.0

#: Oldest rows, by the name the SLOs use: (table, timestamp column, extra condition).
OLDEST = {
    "requests_finished": ("requests", "created_at", f"status IN {FINISHED!r}"),
    "dead_letters": ("dead_letters", "dead_at", "true"),
    "events": ("events", "created_at", "true"),
    "periodic_runs": ("periodic_runs", "started_at", "true"),
}


@dataclass
class JobRecord:
    """What the leader knows of one periodic job; times are UTC epoch seconds.

    Attributes:
        name: the job.
        every_s: its interval.
        first_attempt_at: this leader's first attempt (the lower bound of "since a success"
            when the run log has none).
        last_run_at: when this leader's last run of it ended; None before its first.
        last_ok: whether that run succeeded.
        last_success_at: the last committed run, by any leader (from the run log, then ours).
    """

    name: str
    every_s: float
    first_attempt_at: float | None = None
    last_run_at: float | None = None
    last_ok: bool | None = None
    last_success_at: float | None = None

    def ran(self, ok: bool, at: float) -> None:
        self.first_attempt_at = self.first_attempt_at or at
        self.last_run_at, self.last_ok = at, ok
        if ok:
            self.last_success_at = at

    def restart(self, last_success_at: float | None) -> None:
        """A new term as leader: forget this instance's earlier runs, keep the log's success."""
        self.first_attempt_at = self.last_run_at = self.last_ok = None
        self.last_success_at = last_success_at

    def intervals_since_success(self, now: float) -> float | None:
        since = self.last_success_at or self.first_attempt_at
        return None if since is None else max(0.0, now - since) / self.every_s


@dataclass(frozen=True)
class KeyTtls:
    """What a sample of one key prefix showed.

    Attributes:
        sampled: keys that answered (a key that expired between SCAN and PTTL is left out).
        given_max_s: the longest TTL a sampled key was given: remaining PTTL plus idle time.
        without_ttl: sampled keys that never expire.
    """

    sampled: int
    given_max_s: float | None
    without_ttl: int


@dataclass(frozen=True)
class Sample:
    """One measurement of the system; `taken_at` is `time.monotonic()` when it was taken, and
    ages grow from there until the next one. A part that could not be measured is None."""

    taken_at: float
    oldest_age_s: dict[str, float] | None
    backups: Backups | None
    ttls: dict[str, KeyTtls]


async def oldest_ages(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, float]:
    """Age in seconds of the oldest row of each `OLDEST` kind; 0 when there is none."""
    parts = ", ".join(
        f"COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - (SELECT min({column}) FROM {table}"
        f" WHERE {cond}))::float8, 0) AS {name}"
        for name, (table, column, cond) in OLDEST.items()
    )
    row = await conn.fetchrow(f"SELECT {parts}")
    assert row is not None
    return {name: float(row[name]) for name in OLDEST}


async def last_successes(pool: asyncpg.Pool, jobs: Iterable[str]) -> dict[str, float]:
    """Each job's last committed run in the run log (epoch seconds); jobs without one absent."""
    rows = await pool.fetch(
        "SELECT j.job, EXTRACT(EPOCH FROM r.started_at)::float8 AS at"
        " FROM unnest($1::text[]) AS j(job) CROSS JOIN LATERAL ("
        "  SELECT started_at FROM periodic_runs p WHERE p.job = j.job"
        "  ORDER BY started_at DESC LIMIT 1) r",
        list(jobs),
    )
    return {r["job"]: float(r["at"]) for r in rows}


def summarize_ttls(answers: list[tuple[Any, Any]]) -> KeyTtls:
    """From (PTTL in ms, OBJECT IDLETIME in s) per key; PTTL -2 (gone) or an error is skipped,
    -1 is a key without a TTL."""
    given: list[float] = []
    persistent = 0
    for pttl, idle in answers:
        if not isinstance(pttl, int) or not isinstance(idle, int) or pttl == -2:
            continue
        if pttl == -1:
            persistent += 1
        else:
            given.append(pttl / 1000 + idle)
    return KeyTtls(len(given) + persistent, max(given) if given else None, persistent)


async def key_ttls(redis: Any, prefix: str, limit: int) -> KeyTtls:
    """Sample up to `limit` keys `prefix:*` from every shard (SCAN) and summarize their TTLs.

    PTTL and OBJECT IDLETIME do not touch a key, so sampling changes neither its TTL nor its
    idle time (nor what LRU eviction would choose)."""
    keys: list[str] = []
    async with contextlib.aclosing(redis.scan_iter(match=f"{prefix}:*", count=500)) as scan:
        async for key in scan:
            keys.append(key)
            if len(keys) >= limit:
                break
    if not keys:
        return KeyTtls(0, None, 0)
    pipe = redis.pipeline()
    for key in keys:
        pipe.pttl(key)
        pipe.object("idletime", key)
    answers = await pipe.execute(raise_on_error=False)
    return summarize_ttls(list(zip(answers[::2], answers[1::2], strict=True)))


class Exporter(Collector):
    """The leader's measurements as Prometheus gauges, computed at scrape time.

    `leading` says whether this instance leads now; `jobs` and `sample` give what it knows. A
    follower, or a leader whose last sample is stale, exports nothing of what is concerned."""

    def __init__(
        self,
        leading: Callable[[], bool],
        jobs: Callable[[], Iterable[JobRecord]],
        sample: Callable[[], Sample | None],
    ) -> None:
        self.leading, self.jobs, self.sample = leading, jobs, sample

    def describe(self) -> Iterable[Metric]:
        return []  # computed per scrape: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        if not self.leading():
            return
        yield from self._jobs(time.time())
        sample = self.sample()
        if sample is None:
            return
        grown = time.monotonic() - sample.taken_at
        if grown > SAMPLE_STALE_S:
            return
        if sample.oldest_age_s is not None:
            oldest = GaugeMetricFamily(
                "cw_oldest_row_age_seconds",
                "Age of the oldest row that retention should remove (0: none)",
                labels=["table"],
            )
            for table, age in sample.oldest_age_s.items():
                oldest.add_metric([table], age + grown if age else 0.0)
            yield oldest
        if sample.backups is not None:
            yield from _backups(sample.backups, grown)
        yield from _ttls(sample.ttls)

    def _jobs(self, now: float) -> Iterator[Metric]:
        names = {
            "last_run_timestamp_seconds": "When the job's last run ended (UTC epoch seconds)",
            "last_run_ok": "1 when the job's last run succeeded, 0 when it failed",
            "last_success_timestamp_seconds": "The job's last committed run (UTC epoch seconds)",
            "intervals_since_success": "The job's intervals passed since it last succeeded",
            "interval_seconds": "How often the job is due",
        }
        fams = {
            k: GaugeMetricFamily(f"cw_scheduler_job_{k}", text, labels=["task"])
            for k, text in names.items()
        }
        for job in self.jobs():
            values = {
                "last_run_timestamp_seconds": job.last_run_at,
                "last_run_ok": None if job.last_ok is None else float(job.last_ok),
                "last_success_timestamp_seconds": job.last_success_at,
                "intervals_since_success": job.intervals_since_success(now),
                "interval_seconds": job.every_s,
            }
            for k, value in values.items():
                if value is not None:
                    fams[k].add_metric([job.name], value)
        yield from fams.values()


def _backups(backups: Backups, grown: float) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "cw_backups_kept", "Backups in the pgBackRest repository (all types)", backups.kept
    )
    for which, age in (
        ("newest", backups.newest_age_s),
        ("oldest", backups.oldest_age_s),
        ("newest_full", backups.newest_full_age_s),
    ):
        if age is not None:
            yield GaugeMetricFamily(
                f"cw_backup_{which}_age_seconds",
                f"Age of the {which.replace('_', ' ')} backup in the repository",
                age + grown,
            )


def _ttls(ttls: dict[str, KeyTtls]) -> Iterator[Metric]:
    sampled = GaugeMetricFamily(
        "cw_redis_ttl_keys_sampled", "Keys whose TTL was sampled", labels=["prefix"]
    )
    given = GaugeMetricFamily(
        "cw_redis_ttl_given_max_seconds",
        "The longest TTL a sampled key was given (remaining PTTL plus idle time)",
        labels=["prefix"],
    )
    persistent = GaugeMetricFamily(
        "cw_redis_keys_without_ttl", "Sampled keys that never expire", labels=["prefix"]
    )
    for prefix, t in ttls.items():
        sampled.add_metric([prefix], t.sampled)
        persistent.add_metric([prefix], t.without_ttl)
        if t.given_max_s is not None:
            given.add_metric([prefix], t.given_max_s)
    yield from (sampled, given, persistent)
