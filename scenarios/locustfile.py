"""The device fleet: iOS and Android phones (mix from CWH_MIX, 60/40 by default) under the load
shape CWH_SHAPE names; with CWH_ARRIVAL_RATE set, phones of the open arrival model instead.
Composition only; behaviour lives in scenarios/phone.py.

    locust -f scenarios/locustfile.py --headless -H https://... -u 100 -t 2m
"""

from __future__ import annotations

import os

from scenarios import phone
from scenarios.locust_shapes import SHAPES


def _mix(spec: str) -> tuple[int, int]:
    parts = dict(p.split("=", 1) for p in spec.split(",") if "=" in p)
    return int(parts.get("ios", 60)), int(parts.get("android", 40))


# Locust runs every User class it finds in this module: bind only the model of this run.
if float(os.environ.get("CWH_ARRIVAL_RATE", "0") or 0) > 0:
    IOSPhone, AndroidPhone = phone.IOSArrivalPhone, phone.AndroidArrivalPhone
else:
    IOSPhone, AndroidPhone = phone.IOSPhone, phone.AndroidPhone
IOSPhone.weight, AndroidPhone.weight = _mix(os.environ.get("CWH_MIX", "ios=60,android=40"))

_shape = SHAPES[os.environ.get("CWH_SHAPE", "steady")]


class FleetShape(_shape):  # type: ignore[valid-type, misc]
    """The shape chosen for this run (Locust picks up one shape class from the locustfile)."""


__all__ = ["AndroidPhone", "FleetShape", "IOSPhone"]
