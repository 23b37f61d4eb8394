"""A number from a JSON document someone else wrote (a worker's answer, a webhook's payload)."""

from __future__ import annotations

import math


def finite(value) -> float | None:
    """`value` as a finite float if it is a JSON number; None for anything else: a bool, a
    string, NaN or an infinity (Python's json reads both), an integer beyond any float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
