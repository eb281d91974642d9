"""Load profiles: (phones, spawn rate) as pure functions of the run time.

A profile returns `(users, spawn_rate_per_s)`, or None when the run is over. The Locust shapes in
`scenarios/locust_shapes.py` only read their parameters and delegate here, so every shape is
tested without a runner (and without importing Locust, which monkey-patches the process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Tick = tuple[int, float] | None

#: The shapes a run can take; `scenarios/locust_shapes.py` maps each to a Locust shape. Kept here,
#: free of Locust, so the fleet runner can validate a name without being monkey-patched.
SHAPE_NAMES = ("steady", "ramp", "spike", "soak", "diurnal", "storm")

#: In the fleet's folder (CWH_FLEET_DIR), the file that ends a run before its duration: the
#: shape returns None once it exists, and Locust stops its phones as at the end of the run
#: time. A chaos experiment writes it once every path has recovered (`stop_fleet`).
FINISH_FILE = "finish"


@dataclass(frozen=True)
class Profile:
    """Attributes:
    users: the peak (or steady) number of phones.
    duration_s: the run's length; the profile returns None from then on.
    spawn_rate: phones started (or stopped) per second while the count changes.
    """

    users: int
    duration_s: float
    spawn_rate: float = 50.0

    def __post_init__(self) -> None:
        if self.users < 1 or self.duration_s <= 0 or self.spawn_rate <= 0:
            raise ValueError("a profile needs users >= 1, duration_s > 0, spawn_rate > 0")


def steady(p: Profile, t: float) -> Tick:
    """All phones as fast as the spawn rate allows, held to the end."""
    return None if t >= p.duration_s else (p.users, p.spawn_rate)


def ramp(p: Profile, t: float, steps: int = 10) -> Tick:
    """From a tenth of the phones to all of them in `steps` equal stairs over the run (each
    stair long enough for an autoscaler to react)."""
    if t >= p.duration_s:
        return None
    stair = min(steps - 1, int(t / (p.duration_s / steps)))
    low = max(1, p.users // 10)
    return (low + round((p.users - low) * stair / (steps - 1)), p.spawn_rate)


def spike(
    p: Profile, t: float, base_share: float = 0.2, at: float = 0.4, length: float = 0.2
) -> Tick:
    """A baseline of `base_share` of the phones; all of them arrive at once at `at` of the run,
    for `length` of it; then back to the baseline."""
    if t >= p.duration_s:
        return None
    base = max(1, round(p.users * base_share))
    start, end = at * p.duration_s, (at + length) * p.duration_s
    if start <= t < end:
        return (p.users, max(p.spawn_rate, float(p.users)))  # arrive within a second
    return (base, max(p.spawn_rate, float(p.users)))


def diurnal(p: Profile, t: float, days: float = 1.0, trough: float = 0.1) -> Tick:
    """A day (or `days` of them) compressed into the run: trough at its start, peak at half."""
    if t >= p.duration_s:
        return None
    phase = 2 * math.pi * days * t / p.duration_s
    level = trough + (1 - trough) * (1 - math.cos(phase)) / 2
    return (max(1, round(p.users * level)), p.spawn_rate)


def storm_due(p: Profile, t: float, at: float = 0.5) -> bool:
    """The reconnect storm: every phone drops its socket at once at `at` of the run. Phones ask
    this (through their shape) and come back with their own backoff strategy."""
    return t >= at * p.duration_s
