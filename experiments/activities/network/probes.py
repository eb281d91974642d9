"""What the Toxiproxy API says is injected."""

from __future__ import annotations

from typing import Any

import requests

from experiments import harness


def injected() -> dict[str, Any]:
    """Toxics per proxy and disabled proxies; empty when the network is clean."""
    proxies = requests.get(f"{harness.settings().fault_api_url}/proxies", timeout=5).json()
    return {
        "toxics": {n: [t["name"] for t in p["toxics"]] for n, p in proxies.items() if p["toxics"]},
        "disabled": sorted(n for n, p in proxies.items() if not p["enabled"]),
    }


def network_clean() -> bool:
    found = injected()
    return not found["toxics"] and not found["disabled"]
