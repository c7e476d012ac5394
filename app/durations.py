"""Parsing of human durations: ``500ms``, ``5s``, ``10m``, ``7d`` or a bare number.

Settings follow the worker guide and read a bare number as milliseconds; CLI flags such as
``--delay`` read it as seconds. Both accept an explicit unit.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_UNITS_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)

EXPECTED = "a duration: a non-negative number or one with a unit (500ms, 5s, 10m, 2h, 7d)"


def parse_duration(value: str | int | float | timedelta, *, bare_unit: str = "ms") -> timedelta:
    """Return ``value`` as a timedelta; a bare number is in ``bare_unit``."""
    if isinstance(value, timedelta):
        ms = value.total_seconds() * 1000
    elif isinstance(value, bool):
        raise ValueError(EXPECTED)
    elif isinstance(value, int | float):
        ms = float(value) * _UNITS_MS[bare_unit]
    else:
        match = _PATTERN.match(str(value))
        if match is None:
            raise ValueError(EXPECTED)
        number, unit = match.groups()
        ms = float(number) * _UNITS_MS[(unit or bare_unit).lower()]
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(EXPECTED)
    return timedelta(milliseconds=ms)


def format_duration(delta: timedelta) -> str:
    """Short human form: ``2h 15m 32s``, ``850ms``."""
    total_ms = int(delta.total_seconds() * 1000)
    if total_ms < 1000:
        return f"{total_ms}ms"
    seconds = total_ms // 1000
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown) or "0s"
