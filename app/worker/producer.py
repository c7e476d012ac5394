"""Claiming and dispatch: how many runs to claim, the claim itself, and keeping the executors busy.

The claim goes in one transaction with the outcomes waiting to be written (one commit for both).
When runs finish quickly the worker claims a few ahead of its free slots (app.batching): a run
claimed ahead is the worker's like a running one (its heartbeat is kept) and is given back
untouched at shutdown. A claim whose reply was lost may have committed: the next turn takes up the
runs it claimed instead of leaving them to the rescuer.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from app import queries
from app.batching import Durations, Pace
from app.executor import ExecutorPool
from app.metrics import WorkerMetrics
from app.queries import ClaimedRun
from app.worker.completer import Completer
from app.worker.exchange import Exchange, run_fields
from app.worker.runlog import RunLog
from app.worker.session import Session

# How soon a worker looks again at a limited pipeline whose lock another worker held.
CONTENDED_RETRY = 0.05
# A run announced to another worker is looked for by the others, with room, once it has waited
# this long: the one chosen may be gone, or the workers may not agree on who it is (one joined or
# left since their heartbeats). Such a look takes only runs due this long ago, so it never races
# the chosen worker for a new run.
LEFT_WAITING = 0.25


class Producer:
    def __init__(
        self,
        session: Session,
        pool: ExecutorPool,
        completer: Completer,
        exchange: Exchange,
        metrics: WorkerMetrics,
        log: Any,
        *,
        poll_interval: float,
        burst: bool,
    ) -> None:
        self.session, self.pool, self.completer, self.exchange = session, pool, completer, exchange
        self.metrics, self.log = metrics, log
        self.runlog = RunLog(log, exchange.worker_id)
        self.poll_interval, self.burst = poll_interval, burst
        self.claimed: deque[ClaimedRun] = deque()  # claimed ahead, not started yet
        self.pace = Pace(pool.size)
        self.durations = Durations()  # which pipelines' runs are quick (fed by the loop)
        self.in_doubt = False  # a turn that claimed failed: it may have committed anyway
        self.next_poll = 0.0
        # When to look for runs announced to another worker that it left waiting (app.worker.wakeup).
        self.look_again = float("inf")

    def limit(self, now: float) -> int:
        """How many runs to claim now: enough for every executor, plus runs ahead when runs are
        short (claimed again once half of those are used up, so that one turn claims many)."""
        size, ahead = self.pool.size, self.pace.ahead(now)
        in_hand = self.pool.held + len(self.claimed)
        if in_hand < size or (ahead and in_hand <= size + ahead // 2):
            return size + ahead - in_hand
        return 0

    def depth(self, now: float) -> int:
        """How many runs each executor holds at most: one, or when runs are short, its share of
        the runs claimed ahead, queued behind its running one."""
        ahead = self.pace.ahead(now)
        return 1 + -(-ahead // self.pool.size) if ahead else 1

    def due(self, now: float) -> float | None:
        """Whether to claim now: None, or how long the runs to claim must have been due (0: any;
        for a look at runs announced to another worker, only those it left waiting)."""
        if now >= self.next_poll:
            return 0.0
        return LEFT_WAITING if now >= self.look_again else None

    def claim(self, now: float, limit: int, waited: float = 0.0) -> int | None:
        """Write the outcomes waiting and claim up to ``limit`` runs (due at least ``waited``
        seconds ago) in one turn, then start what fits; the number claimed, or None when the
        database could not be reached."""
        if not self.session.ready(now):
            return None
        self.look_again = float("inf")
        if not waited:
            # Burst mode exits when nothing is runnable; never let it wait a poll interval.
            self.next_poll = now if self.burst else now + self.poll_interval
        self.log.debug("Worker polling...")
        if self.in_doubt and not self.take_up_unheld():
            return None
        c = self.completer
        successes, transitions = c.successes, c.transitions
        ended = c.pipelines(successes, transitions) if self.exchange.claimer.limited else set()
        done = self.session.call(
            lambda conn: self.exchange(conn, successes, transitions, limit, ended, waited), atomic=False
        )
        if done is None:
            self.in_doubt = True
            c.in_doubt |= bool(successes or transitions)
            return None
        owned, claimed = done
        c.written(successes, transitions, owned)
        for run in claimed:
            self.metrics.run_claimed(run)
        self.claimed.extend(claimed)
        self.dispatch()
        if len(claimed) >= limit:
            self.next_poll = now  # as many as asked for: there may be more, poll again when there is room
        elif self.exchange.contended:  # another worker was claiming a limited pipeline: its turn ends soon
            self.next_poll = min(self.next_poll, now + CONTENDED_RETRY)
        return len(claimed)

    def take_up_unheld(self) -> bool:
        """After a failed turn: the connection may have been cut after its COMMIT, so runs it
        claimed are this worker's without it knowing. They are taken up, as if just claimed,
        instead of waiting for the rescuer; False while the database is still away."""
        self.take_back()
        held = {run.id for run in [*self.pool.busy, *self.claimed]} | set(self.completer.held)
        worker_id = self.exchange.worker_id
        unheld = self.session.call(lambda conn: queries.unheld_runs(conn, worker_id, held), atomic=False)
        if unheld is None:
            return False
        self.in_doubt = False
        for run in unheld:
            self.log.warning("Run claimed as the connection was lost, taken up", **run_fields(run))
            self.metrics.run_claimed(run)
        self.claimed.extend(unheld)
        return True

    def dispatch(self) -> None:
        """Hand runs claimed ahead to the executors: one each, or when runs are short, a few
        queued behind each running run, so that its executor starts the next the moment one
        ends."""
        self.take_back()
        if not self.claimed:
            return
        for run in self.pool.hand_over(self.claimed, self.depth(time.monotonic()), self.durations.quick):
            self.runlog.started(run)

    def take_back(self) -> None:
        """Runs an executor returned unstarted (it was killed, crashed or told to stop) go first."""
        if self.pool.returned:
            self.claimed.extendleft(reversed(self.pool.returned))
            self.pool.returned.clear()

    def forget(self, run_ids: Iterable[int]) -> None:
        """Drop runs claimed ahead that are no longer this worker's (cancelled, rescued)."""
        lost = set(run_ids)
        if lost and self.claimed:
            self.claimed = deque(run for run in self.claimed if run.id not in lost)

    def give_back(self) -> None:
        """At shutdown: the runs claimed ahead go back, pending at once, their attempt not counted."""
        if not self.claimed:
            return
        self.log.info("Runs claimed ahead given back at shutdown", runs=len(self.claimed))
        for run in self.claimed:
            self.completer.release(run)
        self.claimed.clear()
