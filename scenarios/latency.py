"""Latency recording in HDR histograms, per operation kind, mergeable exactly across workers.

Each Locust worker records into its own histograms and ships them to the master encoded (HDR's
compressed, base64 form); the master adds them up. Adding histograms is exact: the merged
histogram is the one a single process would have recorded from all the values.

In the open arrival mode a session has an *intended* start time (from the arrival schedule);
latency counts from it, not from when the client got round to sending, so a stall shows up in
the percentiles instead of being hidden (coordinated omission).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # an hour
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


@dataclass
class LatencyRecorder:
    """Histograms by operation kind (submit, read, sync, notification, time_to_result...)."""

    histograms: dict[str, HdrHistogram] = field(default_factory=dict)

    def record(
        self,
        kind: str,
        seconds: float,
        intended_start_s: float | None = None,
        started_s: float | None = None,
    ) -> None:
        """Record one latency. With an intended start (open arrivals), the time the operation
        waited to be sent counts too: `seconds + (started_s - intended_start_s)`."""
        if intended_start_s is not None and started_s is not None:
            seconds += max(0.0, started_s - intended_start_s)
        micros = min(HIGHEST_US, max(LOWEST_US, round(seconds * 1_000_000)))
        # Not setdefault(kind, new_histogram()): that builds (and throws away) a histogram of
        # 23,552 counters on every call, a tenth of a flat-out phone's CPU.
        histogram = self.histograms.get(kind)
        if histogram is None:
            histogram = self.histograms[kind] = new_histogram()
        histogram.record_value(micros)

    def encode(self) -> dict[str, str]:
        """What a worker sends to the master."""
        return {kind: h.encode().decode() for kind, h in self.histograms.items()}

    def add_encoded(self, encoded: Mapping[str, str]) -> None:
        """Add a worker's histograms (exact)."""
        for kind, blob in encoded.items():
            if kind not in self.histograms:
                self.histograms[kind] = new_histogram()
            self.histograms[kind].decode_and_add(blob.encode())

    def summary(self) -> dict[str, dict[str, float]]:
        """Count, min, max, mean and the usual percentiles per kind, in milliseconds."""
        out = {}
        for kind, h in sorted(self.histograms.items()):
            out[kind] = {
                "count": h.get_total_count(),
                "min_ms": h.get_min_value() / 1000,
                "max_ms": h.get_max_value() / 1000,
                "mean_ms": round(h.get_mean_value() / 1000, 3),
                **{f"p{q:g}_ms": h.get_value_at_percentile(q) / 1000 for q in PERCENTILES},
            }
        return out


def latency_kind(name: str, invoked_wall: float, ramped_at: float | None) -> str:
    """The histogram an operation's latency goes to: its own, or its ramp-up one when it was
    started before the fleet's first ramp ended (`ramped_at`, None while still ramping)."""
    return name if ramped_at is not None and invoked_wall >= ramped_at else f"{name} (ramp-up)"


def merged(recorders: Iterable[LatencyRecorder]) -> LatencyRecorder:
    total = LatencyRecorder()
    for r in recorders:
        total.add_encoded(r.encode())
    return total
