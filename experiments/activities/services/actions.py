"""Faults of the outside services the system depends on: a storage provider's outage (the
gateway must fail over to the other provider) and an LLM 429 storm (workers retry, then dead-
letter). Outages cut the provider's proxy; the storm turns the LLM stub's knobs."""

from __future__ import annotations

from typing import Any

import requests

from experiments import harness
from experiments.activities.network.actions import disable_proxy
from experiments.settings import ChaosSettings, Configuration


def _knobs_url(s: ChaosSettings, service: str) -> str:
    comp = harness.environment(s).component(service)
    return f"http://127.0.0.1:{comp['ports']['http']}/admin/knobs"


def storage_outage(provider: str = "sharepoint", *, configuration: Configuration) -> dict[str, Any]:
    """The provider unreachable: connections dropped and refused."""
    if provider not in ("sharepoint", "gdrive"):
        raise ValueError(f"provider {provider!r}: sharepoint or gdrive")
    return disable_proxy(provider, configuration=configuration)


def llm_429_storm(
    share: float = 1.0, retry_after_s: float = 1.0, *, configuration: Configuration
) -> dict[str, Any]:
    """`share` of LLM calls answered 429 with Retry-After."""
    s = harness.settings_of(configuration)
    knobs = {"rate_429": share, "retry_after_s": retry_after_s}
    resp = requests.post(_knobs_url(s, "llm"), json=knobs, timeout=5)
    resp.raise_for_status()
    harness.mark(s, "inject", "llm-429-storm", share=share, retry_after_s=retry_after_s)
    return dict(resp.json())


def end_llm_429_storm(*, configuration: Configuration) -> dict[str, Any]:
    s = harness.settings_of(configuration)
    resp = requests.post(_knobs_url(s, "llm"), json=harness.CLEAN_KNOBS, timeout=5)
    resp.raise_for_status()
    harness.mark(s, "restore", "llm-429-storm")
    return dict(resp.json())


def slow_llm(latency_ms: int = 1500, *, configuration: Configuration) -> dict[str, Any]:
    """Every LLM call takes `latency_ms` (fixed): jobs queue faster than the workers finish."""
    if not 0 < latency_ms <= 60_000:
        raise ValueError(f"latency_ms {latency_ms}: 1 to 60000")
    s = harness.settings_of(configuration)
    resp = requests.post(
        _knobs_url(s, "llm"), json={"latency_ms": latency_ms, "latency_dist": "fixed"}, timeout=5
    )
    resp.raise_for_status()
    harness.mark(s, "inject", "slow-llm", latency_ms=latency_ms)
    return dict(resp.json())


def end_slow_llm(*, configuration: Configuration) -> dict[str, Any]:
    """The LLM stub's knobs back to their defaults (a rollback too: safe to call twice)."""
    s = harness.settings_of(configuration)
    resp = requests.post(_knobs_url(s, "llm"), json=harness.CLEAN_KNOBS, timeout=5)
    resp.raise_for_status()
    if any(f["fault"] == "slow-llm" for f in harness.open_faults(s)):
        harness.mark(s, "restore", "slow-llm")
    return dict(resp.json())
