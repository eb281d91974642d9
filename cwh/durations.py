"""Durations as Locust users type them (`-t 90s`, `10m`, `1h30m`), or plain seconds."""

from __future__ import annotations

import math
import re

#: Hours, minutes and seconds, each optional but in this order, whole numbers (Locust's form).
_SPAN = re.compile(r"(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")


def parse_duration(text: str) -> float:
    """Seconds from `90`, `2.5`, `90s`, `10m`, `1h30m` or `1h30m15s` (case and surrounding
    blanks ignored).

    Raises:
        ValueError: anything else, naming the forms it takes.
    """
    raw = text.strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        span = _SPAN.fullmatch(raw)
        if raw and span is not None:
            h, m, s = (int(span[k] or 0) for k in ("h", "m", "s"))
            return float(h * 3600 + m * 60 + s)
    else:
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    raise ValueError(f"{text!r} is not a duration (like 90s, 10m, 1h30m, or seconds)")
