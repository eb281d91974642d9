"""What the services report about their dependencies, from their own metrics."""

from __future__ import annotations

from experiments import harness
from experiments.activities.process.probes import service_rows
from experiments.settings import Configuration


def gateway_fetches(provider: str, outcome: str = "ok", *, configuration: Configuration) -> float:
    """Documents the gateway fetched from `provider` with `outcome` (ok, network, error, 429)."""
    return harness.service_metric(
        harness.settings_of(configuration),
        "gateway",
        "cw_storage_calls_total",
        provider=provider,
        outcome=outcome,
    )


def jobs(outcome: str, *, configuration: Configuration) -> float:
    """Jobs by outcome over every worker (completed, retry, dead_lettered, ...), since each
    worker started."""
    s = harness.settings_of(configuration)
    return sum(
        harness.service_metric(s, w.name, "cw_jobs_total", outcome=outcome)
        for w in service_rows("worker", configuration=configuration)
    )
