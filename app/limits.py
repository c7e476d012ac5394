"""Flow control: how many runs of a pipeline may run at once across the fleet, how many may
start in a window of time, and how many of one group may run at once.

Limits come from the code (``@pipeline(..., concurrency=2, rate="100/m", group_concurrency=1)``)
and from overrides kept in the ``limits`` table (``orbit limit GLOB ...``), which win field by
field. The claim enforces them (app.queries.claim): it counts the running runs and the recent
starts of each limited pipeline under a lock held by one claimer at a time, so the counts are
exact whatever the number of workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_CAP = 1_000_000
MAX_WINDOW = 86_400.0  # the starts of rate-limited runs are kept a day (app.queries.upkeep)
RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smh])\s*$")


class LimitError(ValueError):
    """A limit that cannot be: the message is one line for the user."""


@dataclass(frozen=True)
class Rate:
    """At most ``count`` runs started in any ``seconds``."""

    count: int
    seconds: float

    def __str__(self) -> str:
        for unit, length in reversed(RATE_UNITS.items()):
            if self.seconds % length == 0:
                many = int(self.seconds // length)
                return f"{self.count}/{'' if many == 1 else many}{unit}"
        return f"{self.count}/{self.seconds:g}s"


@dataclass(frozen=True)
class Limits:
    """A pipeline's limits; None: that one does not apply."""

    concurrency: int | None = None
    rate: Rate | None = None
    group_concurrency: int | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in (self.concurrency, self.rate, self.group_concurrency))

    def as_claim(self) -> dict[str, Any]:
        """The fields the claim statement reads (app.queries.claim)."""
        return {
            "concurrency": self.concurrency,
            "rate_count": None if self.rate is None else self.rate.count,
            "rate_seconds": None if self.rate is None else self.rate.seconds,
            "group_concurrency": self.group_concurrency,
        }


def parse_rate(value: object) -> Rate:
    """``"100/m"``, ``"5/s"``, ``"1000/h"``, also ``"10/5m"``: a count over a window."""
    found = _RATE.match(value) if isinstance(value, str) else None
    if found is None:
        raise LimitError(f"rate {value!r}: expected a count per window, such as 100/m, 5/s or 1000/h")
    count, many, unit = int(found[1]), int(found[2] or 1), found[3]
    if not 1 <= count <= MAX_CAP or many < 1:
        raise LimitError(
            f"rate {value!r}: the count must be 1 to {MAX_CAP:,} and the window at least 1{unit}"
        )
    seconds = many * RATE_UNITS[unit]
    if seconds > MAX_WINDOW:
        raise LimitError(f"rate {value!r}: the window must be at most a day (24h)")
    return Rate(count, seconds)


def check_cap(what: str, value: object) -> int:
    """A concurrency: a whole number from 1 to MAX_CAP."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CAP:
        raise LimitError(f"{what} must be a whole number from 1 to {MAX_CAP:,}, not {value!r}")
    return value


def limits(concurrency: object = None, rate: object = None, group_concurrency: object = None) -> Limits:
    """Checked limits from what a user wrote; LimitError names the bad one."""
    return Limits(
        None if concurrency is None else check_cap("concurrency", concurrency),
        None if rate is None else parse_rate(rate),
        None if group_concurrency is None else check_cap("group_concurrency", group_concurrency),
    )
