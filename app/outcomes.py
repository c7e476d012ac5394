"""How an attempt's end maps to the run's next state: the one place that decides retries."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from app.queries import ClaimedRun, Transition
from app.states import ErrorKind, RunStatus


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits base * 2^(n-1), capped, times 0.5-1.0."""

    base: timedelta
    cap: timedelta

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        exponential = self.base.total_seconds() * (2 ** max(attempt - 1, 0))
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
    if not failure.fail_now and run.attempt < run.max_attempts:
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
