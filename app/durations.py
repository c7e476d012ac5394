"""Parsing of human durations: ``500ms``, ``5s``, ``10m``, ``7d`` or a bare number.

Settings follow the worker guide and read a bare number as milliseconds; CLI flags such as
``--delay`` read it as seconds. Both accept an explicit unit.

Every duration is at most :data:`MAX_DURATION`. Past it, values fail far from where they were
given (measured on PostgreSQL 16): ``make_interval`` past 9.2e12 seconds wraps round to a negative
interval without an error (then ``timeout > 0`` fails), ``now()`` plus that leaves the range of a
timestamp, and a time past the year 9999 (``now()`` plus 2.5e11 seconds) is stored but cannot be
read back into Python. A hundred years keeps the sums Orbit writes (``now() + delay``,
``started_at + timeout + STALE_AFTER``, ``now() - RETENTION``) well inside all of them, and inside
Python's ``timedelta`` and ``threading`` timeouts (``threading.TIMEOUT_MAX``, 9.2e9 seconds).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_UNITS_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)

MAX_DURATION = timedelta(days=36_525)  # 100 years

EXPECTED = "a duration: a non-negative number or one with a unit (500ms, 5s, 10m, 2h, 7d)"
TOO_LONG = "a duration of at most 100 years (36525d)"


def parse_duration(value: str | int | float | timedelta, *, bare_unit: str = "ms") -> timedelta:
    """Return ``value`` as a timedelta; a bare number is in ``bare_unit``.

    Raises ValueError (:data:`EXPECTED` or :data:`TOO_LONG`) for anything else.
    """
    ms = _milliseconds(value, bare_unit)
    if math.isnan(ms) or ms < 0:
        raise ValueError(EXPECTED)
    if ms > _MAX_MS:
        raise ValueError(TOO_LONG)
    return timedelta(milliseconds=ms)


_MAX_MS = MAX_DURATION.total_seconds() * 1000


def _milliseconds(value: str | int | float | timedelta, bare_unit: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds() * 1000
    if isinstance(value, bool):
        raise ValueError(EXPECTED)
    number: str | int | float = value
    unit = bare_unit
    if not isinstance(value, int | float):
        match = _PATTERN.match(str(value))
        if match is None:
            raise ValueError(EXPECTED)
        number, unit = match.group(1), (match.group(2) or bare_unit).lower()
    try:
        return float(number) * _UNITS_MS[unit]
    except OverflowError:  # an int past a float's range: 10**400
        return math.inf


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
