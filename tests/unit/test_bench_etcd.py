"""`make bench-etcd`'s pure parts: the high-water growth that tells a level (a snapshot's
sawtooth included) from growth, when memory levelled off, and the flags it shares with the
environment's etcd."""

from __future__ import annotations

import pytest

from bench.etcd_memory import Point, Run, figures, high_water_growth, levelled_at
from env.commands import ETCD_SNAPSHOT_COUNT, etcd_memory_flags


def test_a_sawtooth_under_its_first_peak_has_no_high_water_growth() -> None:
    # Snapshots drop memory and it fills again, never past the first half's peak.
    saw = [(w, 20.0 + (w % 4000) / 1000) for w in range(1000, 30001, 1000)]
    growth = high_water_growth(saw)
    assert growth is not None
    assert growth <= 0.0


def test_growth_that_goes_on_misses_and_has_not_levelled() -> None:
    rising = [(w, 20.0 + w / 2000) for w in range(1000, 30001, 1000)]
    growth = high_water_growth(rising)
    assert growth is not None
    assert growth > 0.2
    assert levelled_at(rising) is None
    row = figures(Run(1000, [Point(w, m, m, 1.0) for w, m in rising]))
    assert row["met"] is False
    assert row["levelled_at_writes"] is None


def test_it_levels_where_the_peak_stops_rising_by_more_than_the_tolerance() -> None:
    # Fills until 9,000 writes, then wobbles within 3 % of that level.
    points = [(w, 16.0 + w / 1000) for w in range(1000, 9001, 1000)]
    points += [(w, 25.0 * (1 - 0.03 * (w // 1000 % 2))) for w in range(10000, 30001, 1000)]
    assert levelled_at(points) == 8000  # 24 MiB then, and nothing after passes 24 * 1.05
    row = figures(Run(ETCD_SNAPSHOT_COUNT, [Point(w, m, m, 1.0) for w, m in points]))
    assert row["met"] is True
    assert row["environment"] is True
    assert row["levelled_at_patroni_h"] == pytest.approx(8000 / 2.3 / 3600)


def test_a_run_that_failed_misses_whatever_it_sampled() -> None:
    flat = [Point(w, 20.0, 20.0, 1.0) for w in range(1000, 5001, 1000)]
    assert figures(Run(1000, flat, error="connection refused"))["met"] is False
    assert high_water_growth([]) is None
    assert high_water_growth([(1000, 20.0)]) is None


def test_the_retention_is_scaled_and_the_snapshot_count_is_the_environments() -> None:
    assert etcd_memory_flags() == [
        *("--auto-compaction-mode", "periodic"),
        *("--auto-compaction-retention", "300000ms"),
        *("--snapshot-count", str(ETCD_SNAPSHOT_COUNT)),
    ]
    assert "3448ms" in etcd_memory_flags(300 / 87, 10000)
    assert "3600000ms" in etcd_memory_flags(3600, 10000)  # no exponent at an hour
