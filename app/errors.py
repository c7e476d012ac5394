"""Exceptions a pipeline may raise to steer what happens to its run."""

from __future__ import annotations

from datetime import timedelta

from app.durations import parse_duration


class FailNow(Exception):
    """Fail the run at once, without retrying, whatever attempts are left."""


class Snooze(Exception):
    """Run again after ``delay`` (seconds, or a duration such as ``"5m"``) without using an attempt."""

    def __init__(self, delay: float | str | timedelta = 60) -> None:
        # A bad delay raises here, in the pipeline's code: its run fails with the reason, as for any
        # other error of the pipeline, and the queue's write of the snooze never sees it.
        try:
            self.delay = parse_duration(delay, bare_unit="s")
        except ValueError as exc:
            raise ValueError(f"Snooze delay {delay!r}: expected {exc}") from None
        super().__init__(f"snoozed for {self.delay.total_seconds():g}s")


class StepError(Exception):
    """A step was used wrongly (a name used twice in one run, an output that is not JSON)."""


class LeaseLost(Exception):
    """This worker no longer owns the run (it was rescued, cancelled or finished elsewhere)."""
