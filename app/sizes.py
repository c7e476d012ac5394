"""Parsing of memory sizes: ``500MB``, ``1.5GB``, ``512MiB``, ``2048KB`` or a bare number of bytes.

Units are powers of 1024 whichever way they are written (``MB`` and ``MiB`` alike), as ``ps``,
``top`` and process managers such as PM2 (``max_memory_restart: 500M``) read them. A size must be
at least 1 MB (a smaller limit could never be met by a Python process) and at most 1 PB.
"""

from __future__ import annotations

import math
import re

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)

MIN_SIZE = 2**20
MAX_SIZE = 2**50

EXPECTED = "a memory size: a number of bytes or one with a unit (500MB, 1.5GB, 512MiB), at least 1MB"
TOO_BIG = "a memory size of at most 1 PB"


def parse_size(value: str | int | float) -> int:
    """Return ``value`` in bytes; raises ValueError (:data:`EXPECTED` or :data:`TOO_BIG`)."""
    if isinstance(value, bool):
        raise ValueError(EXPECTED)
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(EXPECTED)
        number, unit = float(match.group(1)), match.group(2).lower()
    size = number * _UNITS[unit]
    if math.isnan(size) or size < MIN_SIZE:
        raise ValueError(EXPECTED)
    if size > MAX_SIZE:
        raise ValueError(TOO_BIG)
    return int(size)


def format_size(size: int) -> str:
    """Short human form: ``512 MB``, ``1.5 GB``, ``900 KB``."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 10 and value != int(value) else f"{value:.0f} {unit}"
    return f"{size} B"
