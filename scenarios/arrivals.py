"""The open arrival model: sessions start on a schedule, whatever the system's speed.

In a closed model (Locust's default) a phone sends its next request only after the last one
answered, so a stalled server slows the load down and the stall never shows in the latencies
(coordinated omission). Here each session has an *intended* start, drawn in advance from a
Poisson process; a session that starts late because every phone of the pool was busy counts
its wait in its latency.

Each worker process runs its own schedule at `rate / workers`: independent Poisson processes add
up to a Poisson process at the full rate, so no coordination between workers is needed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class ArrivalSchedule:
    """Intended start times (monotonic seconds) of a Poisson process at `rate` per second.

    Attributes:
        rate: sessions per second for this process.
        start_s: the first arrival's reference time.
        seed: for a reproducible schedule (None: random).
    """

    rate: float
    start_s: float
    seed: int | None = None
    _next_s: float = field(init=False)
    _rng: random.Random = field(init=False, repr=False)
    taken: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"an arrival rate must be > 0, not {self.rate!r}")
        self._rng = random.Random(self.seed)
        self._next_s = self.start_s

    def take(self) -> float:
        """The next intended start. It depends only on the schedule, never on when it is taken:
        that is what keeps a stall visible."""
        self._next_s += self._rng.expovariate(self.rate)
        self.taken += 1
        return self._next_s


def per_process_rate(rate: float, workers: int) -> float:
    """Each of `workers` processes runs `rate / workers` (their sum is Poisson at `rate`)."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    return rate / workers
