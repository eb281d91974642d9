"""What the services report about their dependencies, from their own metrics."""

from __future__ import annotations

import requests

from experiments import harness


def _counter_sum(service: str, metric: str, **labels: str) -> float:
    comp = harness.environment().component(service)
    text = requests.get(f"http://127.0.0.1:{comp['ports']['http']}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def gateway_fetches(provider: str, outcome: str = "ok") -> float:
    """Documents the gateway fetched from `provider` with `outcome` (ok, network, error, 429)."""
    return _counter_sum("gateway", "cw_storage_calls_total", provider=provider, outcome=outcome)


def jobs(outcome: str) -> float:
    """Jobs by outcome over every worker (completed, retry, dead_lettered, ...)."""
    env = harness.environment()
    workers = [c["name"] for c in (env.supervisor_status() or {}).get("components", [])]
    return sum(
        _counter_sum(w, "cw_jobs_total", outcome=outcome) for w in workers if w.startswith("worker")
    )
