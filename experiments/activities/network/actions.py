"""Network faults through the Toxiproxy API (the local fault proxy, a real Toxiproxy at the
configuration's `cwh_toxiproxy_url`, or on the kubernetes runtime the in-cluster Toxiproxy
through the API server's service proxy: `experiments.harness.fault_api`): toxics and disabled
proxies, each recorded in the fault journal.

Proxies of the local environment: postgres-write, postgres-read, redis0..N, llm, sharepoint,
gdrive, and pg<m>-replication (the link the standbys stream from when pg<m> is primary).
"""

from __future__ import annotations

from typing import Any

import requests

from experiments import harness
from experiments.settings import ChaosSettings, Configuration


def _check(resp: requests.Response, what: str) -> Any:
    if not resp.ok:
        raise RuntimeError(f"{what}: Toxiproxy answered {resp.status_code} {resp.text.strip()}")
    return resp.json() if resp.content else None


def _set_enabled(s: ChaosSettings, proxy: str, enabled: bool) -> Any:
    api = harness.fault_api(s)
    resp = api.session.post(api.proxy_url(proxy), json={"enabled": enabled}, timeout=5)
    return _check(resp, proxy)


def add_toxic(
    proxy: str,
    toxic_type: str,
    attributes: dict[str, int] | None = None,
    stream: str = "downstream",
    toxicity: float = 1.0,
    name: str = "",
    *,
    configuration: Configuration,
) -> dict[str, Any]:
    """Add a toxic (latency, bandwidth, timeout, reset_peer, slow_close, slicer, limit_data)."""
    s = harness.settings_of(configuration)
    api = harness.fault_api(s)
    body: dict[str, Any] = {
        "name": name or f"{toxic_type}_{stream}",
        "type": toxic_type,
        "stream": stream,
        "toxicity": toxicity,
        "attributes": attributes or {},
    }
    resp = api.session.post(f"{api.proxy_url(proxy)}/toxics", json=body, timeout=5)
    toxic = _check(resp, proxy)
    harness.mark(s, "inject", f"toxic-{proxy}-{body['name']}", proxy=proxy, toxic=toxic)
    return {"proxy": proxy, **toxic}


def remove_toxic(proxy: str, name: str, *, configuration: Configuration) -> bool:
    """Remove a toxic; true when it was there."""
    s = harness.settings_of(configuration)
    api = harness.fault_api(s)
    resp = api.session.delete(f"{api.proxy_url(proxy)}/toxics/{name}", timeout=5)
    harness.mark(s, "restore", f"toxic-{proxy}-{name}")
    return resp.status_code == 204


def disable_proxy(proxy: str, *, configuration: Configuration) -> dict[str, Any]:
    """Stop the proxy: every connection through it dropped, new ones refused (a partition)."""
    s = harness.settings_of(configuration)
    out = _set_enabled(s, proxy, False)
    harness.mark(s, "inject", f"partition-{proxy}", proxy=proxy)
    return dict(out)


def enable_proxy(proxy: str, *, configuration: Configuration) -> dict[str, Any]:
    s = harness.settings_of(configuration)
    out = _set_enabled(s, proxy, True)
    harness.mark(s, "restore", f"partition-{proxy}")
    return dict(out)


def heal_partitions(*, configuration: Configuration) -> list[str]:
    """Enable every proxy this run disabled (storage outages, Redis partitions)."""
    healed = []
    for fault in harness.open_faults(harness.settings_of(configuration)):
        if fault["fault"].startswith("partition-"):
            enable_proxy(fault["proxy"], configuration=configuration)
            healed.append(fault["proxy"])
    return healed


def remove_toxics(*, configuration: Configuration) -> list[str]:
    """Remove every toxic this run added."""
    removed = []
    for fault in harness.open_faults(harness.settings_of(configuration)):
        if fault["fault"].startswith("toxic-"):
            remove_toxic(fault["proxy"], fault["toxic"]["name"], configuration=configuration)
            removed.append(f"{fault['proxy']}/{fault['toxic']['name']}")
    return removed
