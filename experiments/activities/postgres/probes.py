"""PostgreSQL as `cwh env status` sees it: each standby's replay lag."""

from __future__ import annotations

from typing import Any

from env.process import wait_until
from experiments import harness
from experiments.pg_failover import pg_members
from experiments.settings import Configuration


def replay_lag_s(*, configuration: Configuration) -> dict[str, float | None]:
    """Replay lag of each standby, in seconds, from the primary's `pg_stat_replication`."""
    status = harness.environment(harness.settings_of(configuration)).state()
    return {
        name: m.detail.get("replay_lag_s")
        for name, m in pg_members(status).items()
        if m.role != "primary"
    }


def replay_lag_below(
    max_s: float = 1.0, timeout_s: float = 60, *, configuration: Configuration
) -> dict[str, Any]:
    """Wait (bounded) until every standby replays within `max_s`; returns the lags then."""
    env = harness.environment(harness.settings_of(configuration))

    def under() -> dict[str, float | None] | None:
        lags = replay_lag_s(configuration=configuration)
        ok = lags and all(v is not None and v < max_s for v in lags.values())
        return lags if ok else None

    lags = wait_until(under, env.settings.timeout(timeout_s), f"every replay lag under {max_s} s")
    return {"max_s": max_s, "lags": lags}
