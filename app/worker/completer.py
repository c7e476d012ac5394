"""What happens when a run ends: its outcome is recorded, logged and counted, then written to the
database in a batch, exactly once, fenced by run, attempt and worker.

Outcomes are written together with the next claim when there is one (see Producer), or on their
own when the flush policy says so (app.batching). While the database is away they are held here,
and their runs keep their heartbeat (``held``); a worker stopped before they could be written saves
them on disk (app.spool). A turn whose reply was lost may have committed anyway: the next write
tells outcomes already written by it from late ones the fence refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app import queries, spool
from app.batching import FlushPolicy
from app.executor import Outcome
from app.masking import one_line
from app.metrics import WorkerMetrics
from app.outcomes import Backoff, Failure, release, transition_for
from app.queries import ClaimedRun, Success, Transition
from app.states import RunStatus
from app.stats import WorkerStats
from app.worker.exchange import Exchange, run_fields
from app.worker.runlog import RunLog
from app.worker.session import Session


class Completer:
    def __init__(
        self,
        session: Session,
        exchange: Exchange,
        backoff: Backoff,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        log: Any,
    ) -> None:
        self.session, self.exchange, self.backoff = session, exchange, backoff
        self.stats, self.metrics, self.log = stats, metrics, log
        self.runlog = RunLog(log, exchange.worker_id)
        self.successes: list[Success] = []
        self.transitions: list[Transition] = []
        self.held: dict[int, ClaimedRun] = {}  # by run id: its outcome is not in the database yet
        self.in_doubt = False  # a turn that wrote outcomes failed: it may have committed anyway
        self.policy = FlushPolicy()

    @property
    def waiting(self) -> int:
        """Outcomes recorded and not written yet."""
        return len(self.successes) + len(self.transitions)

    # --- recording ---------------------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        """A run ended in its executor: keep its outcome for the next write, log and count it."""
        run = outcome.run
        self.policy.added(time.monotonic())
        if outcome.failure is None:
            self.successes.append(Success(run.id, run.attempt, outcome.result_json or "null"))
            self.stats.record(success=True, duration=outcome.duration)
            self.metrics.attempt_ended(run.pipeline, RunStatus.SUCCEEDED, outcome.duration)
            self.runlog.succeeded(run, round(outcome.duration * 1000))
        else:
            fields = run_fields(run)
            transition = transition_for(run, outcome.failure, self.backoff)
            self.transitions.append(transition)
            if outcome.failure.snooze is None:
                self.stats.record(success=False, duration=outcome.duration)
                self.metrics.attempt_ended(run.pipeline, str(transition.status), outcome.duration)
            self._log_failure(outcome.failure, transition, fields)
        self.held[run.id] = run

    def release(self, run: ClaimedRun) -> None:
        """Give a run back: pending again at once, its attempt not counted."""
        self.transitions.append(release(run))
        self.held[run.id] = run
        self.policy.added(time.monotonic())

    def _log_failure(self, failure: Failure, t: Transition, fields: dict[str, Any]) -> None:
        if failure.snooze is not None:
            self.log.info("Run snoozed", delay_s=failure.snooze, **fields)
            return
        retried = t.status == RunStatus.PENDING
        getattr(self.log, "warning" if retried else "error")(
            "Run will be retried" if retried else "Run failed",
            kind=str(failure.kind),
            error=failure.summary,
            status=str(t.status),
            retry_in_s=round(t.delay, 3) if retried else None,
            **fields,
        )

    # --- writing -----------------------------------------------------------------------------

    def due(self, now: float, *, idle: bool) -> bool:
        return self.policy.due(now, self.waiting, idle=idle)

    def remaining(self, now: float) -> float:
        """Seconds until the outcomes waiting must be written (infinite when none wait)."""
        return self.policy.remaining(now) if self.waiting else float("inf")

    def flush(self) -> None:
        """Write what waits, unless a failed call's backoff is still running."""
        if self.waiting and self.session.ready(time.monotonic()):
            self.write()

    def write(self) -> None:
        successes, transitions = self.successes, self.transitions
        ended = self.pipelines(successes, transitions)
        done = self.session.call(
            lambda conn: self.exchange(conn, successes, transitions, ended=ended), atomic=False
        )
        if done is None:
            self.in_doubt = True
        else:
            self.written(successes, transitions, done[0])

    def pipelines(self, successes: list[Success], transitions: list[Transition]) -> set[str]:
        """The pipelines of the runs whose outcomes these are."""
        held = self.held
        ids = [s.id for s in successes] + [t.id for t in transitions]
        return {held[run_id].pipeline for run_id in ids if run_id in held}

    def written(self, successes: list[Success], transitions: list[Transition], owned: set[int]) -> None:
        """Forget outcomes now in the database; warn about those that were no longer ours."""
        ids = {s.id for s in successes} | {t.id for t in transitions}
        rejected = ids - owned
        landed = self._landed_earlier(successes, transitions, rejected)
        self.in_doubt = False
        for run_id in ids:
            run = self.held.pop(run_id, None)
            fields = run_fields(run) if run is not None else {"run_id": run_id}
            if run_id in landed:
                self.log.info("Outcome was already written, by the turn whose reply was lost", **fields)
            elif run_id in rejected:
                self.log.warning("Late outcome rejected: the run is no longer owned by this worker", **fields)
        self.successes = self.successes[len(successes) :]
        self.transitions = self.transitions[len(transitions) :]
        if not self.waiting:
            self.policy.written()

    def _landed_earlier(
        self, successes: list[Success], transitions: list[Transition], rejected: set[int]
    ) -> set[int]:
        """After a turn whose reply was lost, its outcomes (successes and transitions alike) may
        be in the database already, and writing them again is refused by the fence: those are
        not late, only written once."""
        if not (self.in_doubt and rejected):
            return set()
        mine = [s for s in successes if s.id in rejected], [t for t in transitions if t.id in rejected]
        worker_id = self.exchange.worker_id
        return self.session.call(lambda conn: queries.landed(conn, worker_id, *mine)) or set()

    def write_last(self, until: Callable[[], float], sleep: Callable[[float], None]) -> None:
        """Keep trying, with the session's backoff, until ``until()`` (a second signal moves it to
        now): the outcomes held are the only record of what those runs did. Tried at least once."""
        tried = False
        while self.waiting:
            now = time.monotonic()
            if tried and now >= until():
                break
            sleep(min(self.session.retry_at, until()) - now)
            self.write()
            tried = True

    # --- saving what could not be written ----------------------------------------------------

    def save(self, data_dir: Path) -> bool:
        """Save what could not be written, for the next worker or ``orbit outcomes apply``;
        False when nothing had to be saved."""
        if not self.waiting:
            return False
        worker_id = self.exchange.worker_id
        path = spool.path_for(data_dir, worker_id)
        outcomes: list[Success | Transition] = [*self.successes, *self.transitions]
        items = [spool.Unwritten(worker_id, self._pipeline_of(o.id), o) for o in outcomes]
        for item in items:
            self.log.error(
                "Outcome could not be written: saved for later",
                run_id=item.outcome.id,
                pipeline=item.pipeline,
                attempt=item.outcome.attempt,
                outcome=item.status,
                file=str(path),
            )
        try:
            spool.save(path, items)
        except (OSError, TypeError, ValueError) as exc:  # the log lines above are then all there is
            self.log.error("Outcomes could not be saved", error=one_line(exc), file=str(path))
            return True
        self.log.error(
            "Outcomes could not be written: apply them with `orbit outcomes apply` once the database"
            " answers (the next worker started with this DATA_DIR does it)",
            outcomes=len(items),
            file=str(path),
        )
        return True

    def _pipeline_of(self, run_id: int) -> str:
        run = self.held.get(run_id)
        return "" if run is None else run.pipeline


def apply_saved(engine: Engine, data_dir: Path, log: Any) -> None:
    """Apply the outcomes a worker stopped during an outage saved in ``data_dir``; called before
    the worker registers (the sooner, the likelier their runs are not recovered meanwhile)."""
    for path in spool.files(data_dir):
        try:
            applied = spool.apply_file(engine, path)
        except (spool.SpoolError, OSError, SQLAlchemyError) as exc:
            log.error("Saved outcomes not applied", file=str(path), error=one_line(exc))
            continue
        for done in applied or []:
            o = done.item.outcome
            getattr(log, "info" if done.result != "refused" else "warning")(
                f"Saved outcome {done.result}",
                run_now=done.now,
                run_id=o.id,
                pipeline=done.item.pipeline,
                attempt=o.attempt,
                outcome=done.item.status,
                saved_by=done.item.worker_id,
            )
