"""What the leading scheduler measures, as pure arithmetic: TTLs from PTTL and idle time, each
job's intervals since success, and a follower exporting nothing (the backups' arithmetic is in
test_backups.py)."""

from __future__ import annotations

import calendar
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from reference_impl.backups import Backups
from reference_impl.measures import Exporter, JobRecord, KeyTtls, Sample, summarize_ttls

NOW = calendar.timegm(time.strptime("20261201T120000Z", "%Y%m%dT%H%M%SZ"))


def test_the_ttl_a_key_was_given_is_its_pttl_plus_its_idle_time():
    answers = [(299_500, 0), (100_000, 200), (-1, 40), (-2, 0), (RuntimeError("moved"), 3)]
    assert summarize_ttls(answers) == KeyTtls(sampled=3, given_max_s=300.0, without_ttl=1)
    assert summarize_ttls([]) == KeyTtls(0, None, 0)


def test_intervals_since_success_count_from_the_log_or_from_the_first_attempt():
    job = JobRecord("purge", every_s=15)
    assert job.intervals_since_success(NOW) is None  # nothing known yet
    job.ran(False, NOW - 60)
    assert job.intervals_since_success(NOW) == pytest.approx(4)  # failing since its first run
    job.ran(True, NOW - 15)
    assert job.intervals_since_success(NOW) == pytest.approx(1)
    assert (job.last_ok, job.last_run_at) == (True, NOW - 15)
    job.restart(last_success_at=NOW - 150)  # a new term: what the run log says
    assert (job.last_ok, job.last_run_at) == (None, None)
    assert job.intervals_since_success(NOW) == pytest.approx(10)


def scrape(exporter: Exporter) -> str:
    registry = CollectorRegistry()
    registry.register(exporter)
    return generate_latest(registry).decode()


def test_the_leader_exports_what_it_measured_and_a_follower_nothing():
    job = JobRecord("purge_dead_letters", every_s=15)
    job.ran(False, time.time())
    sample = Sample(
        taken_at=time.monotonic(),
        oldest_age_s={"dead_letters": 15 * 86400.0, "events": 0.0},
        backups=Backups(1, 60.0, 60.0, 60.0),
        ttls={"req": KeyTtls(3, 300.0, 0)},
    )
    leading = True
    exporter = Exporter(lambda: leading, lambda: [job], lambda: sample)
    text = scrape(exporter)
    assert 'cw_scheduler_job_last_run_ok{task="purge_dead_letters"} 0.0' in text
    assert 'cw_oldest_row_age_seconds{table="events"} 0.0' in text
    assert 'cw_redis_ttl_given_max_seconds{prefix="req"} 300.0' in text
    assert "cw_backups_kept 1.0" in text
    assert "cw_backup_newest_full_age_seconds 60" in text
    (age,) = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('cw_oldest_row_age_seconds{table="dead_letters"}')
    ]
    assert 15 * 86400 <= age < 15 * 86400 + 5  # grown since the sample, not frozen
    leading = False
    assert "cw_" not in scrape(exporter)


def test_a_stale_sample_is_not_exported():
    sample = Sample(time.monotonic() - 3600, {"events": 10.0}, None, {})
    text = scrape(Exporter(lambda: True, list, lambda: sample))
    assert "cw_oldest_row_age_seconds" not in text
