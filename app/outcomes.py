"""How an attempt's end maps to the run's next state, by the retry rule of :mod:`app.states`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from app.queries import ClaimedRun, Transition
from app.states import ErrorKind, RunStatus, retries
from app.storable import storable


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits base * 2^(n-1), capped, times 0.5-1.0."""

    base: timedelta
    cap: timedelta

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        # The exponent is capped: past 2^1023 the int cannot become a float (OverflowError), and
        # runs written before max_attempts was bounded may have thousands of attempts.
        exponential = self.base.total_seconds() * (2 ** min(max(attempt - 1, 0), 64))
        bounded = min(exponential, self.cap.total_seconds())
        # "Equal jitter": never less than half the computed delay, so retries still back off.
        return float(bounded * (0.5 + 0.5 * (rng or random).random()))


@dataclass(frozen=True)
class Failure:
    """An attempt that did not succeed, as reported by the executor."""

    kind: ErrorKind
    type: str
    message: str
    traceback: str = ""
    fail_now: bool = False
    snooze: float | None = None

    def __post_init__(self) -> None:
        # The text comes from pipeline code and ends up in the database: made storable here, where
        # every failure is built, it can never make the write of a batch of outcomes fail.
        for name in ("type", "message", "traceback"):
            object.__setattr__(self, name, storable(getattr(self, name)))

    def entry(self, attempt: int) -> dict[str, Any]:
        return {
            "attempt": attempt,
            "kind": str(self.kind),
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
        }

    @property
    def summary(self) -> str:
        prefix = "timed out" if self.kind is ErrorKind.TIMEOUT else self.type
        return f"{prefix}: {self.message}"[:2000]


def transition_for(run: ClaimedRun, failure: Failure, backoff: Backoff) -> Transition:
    """The fenced transition that ends ``run``'s current attempt with ``failure``."""
    if failure.snooze is not None:
        return Transition(run.id, run.attempt, RunStatus.PENDING, delay=failure.snooze, refund=True)
    if not failure.fail_now and retries(run.attempt, run.max_attempts):
        return Transition(
            run.id,
            run.attempt,
            RunStatus.PENDING,
            delay=backoff.delay(run.attempt),
            error=failure.summary,
            entry=failure.entry(run.attempt),
        )
    final = RunStatus.TIMED_OUT if failure.kind is ErrorKind.TIMEOUT else RunStatus.FAILED
    return Transition(run.id, run.attempt, final, error=failure.summary, entry=failure.entry(run.attempt))


def release(run: ClaimedRun) -> Transition:
    """Give a run back untouched (shutdown): pending at once, the attempt not counted."""
    return Transition(run.id, run.attempt, RunStatus.PENDING, refund=True)
