"""The device fleet: iOS and Android phones (mix from CWH_MIX, 60/40 by default) under the load
shape CWH_SHAPE names; with CWH_ARRIVAL_RATE set, phones of the open arrival model instead.
Composition only; behaviour lives in scenarios/phone.py.

    locust -f scenarios/locustfile.py --headless -H https://... -u 100 -t 2m
"""

from __future__ import annotations

import os

from scenarios import phone
from scenarios.locust_shapes import SHAPES
from scenarios.profiles import FINISH_FILE, Tick


def _mix(spec: str) -> tuple[int, int]:
    parts = dict(p.split("=", 1) for p in spec.split(",") if "=" in p)
    return int(parts.get("ios", 60)), int(parts.get("android", 40))


# Locust runs every User class it finds in this module: bind only the model of this run.
if float(os.environ.get("CWH_ARRIVAL_RATE", "0") or 0) > 0:
    IOSPhone, AndroidPhone = phone.IOSArrivalPhone, phone.AndroidArrivalPhone
else:
    IOSPhone, AndroidPhone = phone.IOSPhone, phone.AndroidPhone
IOSPhone.weight, AndroidPhone.weight = _mix(os.environ.get("CWH_MIX", "ios=60,android=40"))


# No module-level name for the chosen shape's class: Locust runs the first shape class it finds
# among the module's names, and that would be it, not FleetShape (the finish file went unread).
class FleetShape(SHAPES[os.environ.get("CWH_SHAPE", "steady")]):  # type: ignore[misc]
    """The shape chosen for this run (Locust picks up one shape class from the locustfile),
    ended early when the fleet's finish file appears (only the master, or a lone process, ticks)."""

    def tick(self) -> Tick:
        if (phone.FLEET_DIR / FINISH_FILE).exists():
            return None
        return super().tick()  # type: ignore[no-any-return]


__all__ = ["AndroidPhone", "FleetShape", "IOSPhone"]
