"""Reconnect backoff strategies of a phone (AWS Architecture Blog, "Exponential Backoff and
Jitter"): none, full jitter, equal jitter, decorrelated jitter.

Each strategy is a function of the attempt number (1-based), the previous delay and a random
source, so a reconnect storm is reproducible from a seed and the strategies can be compared.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

STRATEGIES = ("none", "full", "equal", "decorrelated")


@dataclass(frozen=True)
class Backoff:
    """Delays in seconds between reconnect attempts.

    Attributes:
        strategy: one of `STRATEGIES`.
        base_s: the first step of the exponential.
        cap_s: no delay exceeds it.
    """

    strategy: str = "full"
    base_s: float = 0.5
    cap_s: float = 30.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"backoff strategy {self.strategy!r}: one of {', '.join(STRATEGIES)}")
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")

    def delay_s(self, attempt: int, previous_s: float, rng: random.Random) -> float:
        """The delay before `attempt` (1 = the first reconnect)."""
        if attempt < 1:
            raise ValueError("attempt counts from 1")
        step = min(self.cap_s, self.base_s * 2 ** min(attempt - 1, 60))
        if self.strategy == "none":
            return step
        if self.strategy == "full":
            return rng.uniform(0, step)
        if self.strategy == "equal":
            return step / 2 + rng.uniform(0, step / 2)
        # Decorrelated: grows from the previous delay, not from the attempt count.
        return min(self.cap_s, rng.uniform(self.base_s, max(self.base_s, previous_s * 3)))

    def schedule(self, attempts: int, rng: random.Random) -> list[float]:
        """The first `attempts` delays, each from the one before."""
        out, prev = [], self.base_s
        for n in range(1, attempts + 1):
            prev = self.delay_s(n, prev, rng)
            out.append(prev)
        return out
