"""How much a worker claims ahead and how long it holds outcomes before writing them.

A database commit costs about as much as hundreds of no-op runs, so a worker that claims only its
free slots and writes each outcome at once is capped near the commit rate. Claiming a little ahead
and writing outcomes in batches keeps the commit count per run small, while bounding how long a
claimed run waits in the worker and how long a finished run waits before it is marked so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Claim ahead only what this worker would start within about this long: a run claimed ahead
# waits in the worker, not in the table where another worker could take it.
CLAIM_AHEAD_WINDOW = 0.05
CLAIM_AHEAD_MAX = 250
# Outcomes are written when this many are waiting, or the oldest has waited this long (sooner
# when the worker goes idle, claims, or stops).
FLUSH_BATCH = 100
FLUSH_DELAY = 0.005


@dataclass
class Pace:
    """How many runs to claim ahead of free slots, from how many finished in the last window.

    Nothing is claimed ahead until the worker finishes at least ``concurrency`` runs a window,
    so runs longer than the window are claimed one free slot at a time, as before.
    """

    concurrency: int
    window: float = CLAIM_AHEAD_WINDOW
    cap: int = CLAIM_AHEAD_MAX
    _started: float = 0.0
    _count: int = 0
    _previous: int = 0

    def finished(self, now: float) -> None:
        self._roll(now)
        self._count += 1

    def ahead(self, now: float) -> int:
        self._roll(now)
        recent = max(self._previous, self._count)
        return min(self.cap, recent) if recent >= self.concurrency else 0

    def _roll(self, now: float) -> None:
        elapsed = now - self._started
        if elapsed >= self.window:
            # A window with nothing in it in between means the pace is unknown: start again.
            self._previous = self._count if elapsed < 2 * self.window else 0
            self._started, self._count = now, 0


@dataclass
class FlushPolicy:
    """When the outcomes held by the worker are due to be written."""

    batch: int = FLUSH_BATCH
    delay: float = FLUSH_DELAY
    oldest: float | None = None  # when the oldest unwritten outcome arrived

    def added(self, now: float) -> None:
        if self.oldest is None:
            self.oldest = now

    def written(self) -> None:
        self.oldest = None

    def due(self, now: float, waiting: int, *, idle: bool) -> bool:
        if not waiting or self.oldest is None:
            return False
        return idle or waiting >= self.batch or now - self.oldest >= self.delay

    def remaining(self, now: float) -> float:
        return float("inf") if self.oldest is None else max(0.0, self.oldest + self.delay - now)


# A run is queued behind another only if that one's pipeline is quick: its runs have taken less
# than this, on average, lately. Behind a run of 50 ms, a queue of 1 ms runs waited 50 ms while
# other executors were free (a drain beside a capped pipeline lost a tenth of its speed).
QUICK_RUN = 0.025
_WEIGHT = 0.2  # of the latest duration in the moving average


@dataclass
class Durations:
    """How long each pipeline's runs take lately (an exponential moving average), and which are
    quick. A pipeline not seen yet is not quick: its first run may take an hour."""

    quick: set[str] = field(default_factory=set)
    _average: dict[str, float] = field(default_factory=dict)

    def ended(self, pipeline: str, duration: float) -> None:
        before = self._average.get(pipeline)
        average = duration if before is None else before + _WEIGHT * (duration - before)
        self._average[pipeline] = average
        if average < QUICK_RUN:
            self.quick.add(pipeline)
        else:
            self.quick.discard(pipeline)
