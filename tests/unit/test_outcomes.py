"""Outcomes: the retry backoff of an attempt, whatever its number."""

from __future__ import annotations

import random
from datetime import timedelta

from app.outcomes import Backoff


def test_the_backoff_of_any_attempt_is_a_delay_within_the_cap() -> None:
    """Attempt 5,000 (a run written before max_attempts was bounded) waits at most the cap; before,
    2^4999 could not become a float and the worker's recording of the outcome raised."""
    backoff = Backoff(timedelta(seconds=2), timedelta(minutes=10))
    rng = random.Random(7)
    for attempt in (1, 2, 30, 1025, 5000, 2**31 - 1):
        delay = backoff.delay(attempt, rng)
        assert 0 < delay <= 600
    assert backoff.delay(5000, rng) >= 300  # equal jitter: at least half the cap
