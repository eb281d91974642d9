"""How many replicas a workload has, and waiting (bounded) for the autoscaler to change it."""

from __future__ import annotations

import time
from typing import Any

from env.process import wait_until
from experiments import harness
from experiments.settings import Configuration


def replicas(workload: str, *, configuration: Configuration) -> int:
    """The running replicas of `workload` (`cwh env workloads`)."""
    view = harness.environment(harness.settings_of(configuration)).workloads()
    for w in view["workloads"]:
        if w["name"] == workload:
            return len(w["replicas"])
    raise ValueError(f"no workload {workload!r}")


def wait_replicas(
    workload: str,
    above: int | None = None,
    at_most: int | None = None,
    timeout_s: float = 180,
    *,
    configuration: Configuration,
) -> dict[str, Any]:
    """Wait until `workload` has more than `above` replicas, or at most `at_most`; the count
    and how long it took. A timeout is an error: the autoscaler did not do its job."""
    if (above is None) == (at_most is None):
        raise ValueError("give exactly one of above and at_most")
    s = harness.settings_of(configuration)
    started = time.monotonic()

    def reached() -> int | None:
        n = replicas(workload, configuration=configuration)
        ok = n > above if above is not None else n <= (at_most or 0)
        return n if ok else None

    want = f"more than {above}" if above is not None else f"at most {at_most}"
    n = wait_until(
        reached, s.env.timeout(timeout_s), f"{workload} with {want} replicas", interval_s=1.0
    )
    return {"workload": workload, "replicas": n, "waited_s": round(time.monotonic() - started, 1)}
