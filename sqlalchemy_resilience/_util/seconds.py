"""Time values for options: seconds as float or ``timedelta``, validated with a clear error."""

from __future__ import annotations

import math
from datetime import timedelta

Seconds = float | int | timedelta

#: The longest time an option takes (about 31 years): beyond it a timer
#: overflows the platform's clock types, and no timeout means that much.
MAX_SECONDS = 1e9


def to_seconds(name: str, value: object, *, minimum: float = 0.0, allow_zero: bool = True) -> float:
    """``value`` (float seconds or ``timedelta``) as float seconds, or a ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise TypeError(
            f"{name} must be seconds (int or float) or a datetime.timedelta, got {value!r}"
        )
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if seconds < minimum or (not allow_zero and seconds == 0) or seconds > MAX_SECONDS:
        bound = f"> {minimum}" if not allow_zero else f">= {minimum}"
        raise ValueError(f"{name} must be {bound} and <= {MAX_SECONDS:g} seconds, got {value!r}")
    return seconds
