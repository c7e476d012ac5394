"""Interrupted runs: finding them, resuming them, and the rescuer that does it on its own.

A run is interrupted when it is ``running`` and its heartbeat is older than ``STALE_AFTER``, or
its worker registered itself as stopped. Recovery never executes anything: it puts the run back to
``pending``, so every resumed run passes through the one atomic claim, and completed steps are not
executed again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Row
from sqlalchemy.exc import IntegrityError

from app import queries
from app.states import RESUMABLE, RunStatus

log = structlog.get_logger("orbit.recovery")


class ResumeError(Exception):
    """A run cannot be resumed; the message is one line for the user."""


class KeyHeld(ResumeError):
    """A finished run cannot be resumed: a live run holds its key now."""


def recover_interrupted(conn: Connection, stale_after: timedelta) -> list[Row[Any]]:
    """Put every interrupted run back to pending (or failed when its attempts are spent)."""
    rows = queries.recover(conn, stale_after)
    for row in rows:
        log.warning(
            "Recovered interrupted run",
            run_id=row.id,
            pipeline=row.pipeline,
            attempt=row.attempt,
            worker_id=row.worker_id,
            status=row.status,
        )
    return rows


def resume(conn: Connection, run_id: int, stale_after: timedelta) -> Row[Any]:
    """Resume one run: an interrupted one, or a failed or timed-out one on request."""
    rows = queries.recover(conn, stale_after, only_id=run_id)
    if rows:
        return rows[0]
    current = queries.get_run(conn, run_id)
    try:
        row = queries.resume_finished(conn, run_id)
    except IntegrityError as exc:
        # A key is unique among live runs, and a run with it was enqueued since this one finished.
        if current is None or current.key is None or _constraint(exc) != "runs_key_idx":
            raise
        raise KeyHeld(
            f"run {run_id} cannot resume: a pending or running run holds its key {current.key!r}"
        ) from None
    if row is not None:
        return row
    if current is None:
        raise ResumeError(f"run {run_id} does not exist")
    if current.status == RunStatus.RUNNING:
        raise ResumeError(f"run {run_id} is running and its worker is alive: nothing to resume")
    resumable = ", ".join(sorted(RESUMABLE))
    raise ResumeError(f"run {run_id} is {current.status}: only interrupted, {resumable} runs resume")


def _constraint(exc: IntegrityError) -> str | None:
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None)


@dataclass
class Rescuer:
    """Background service of every worker: recovers interrupted runs, prunes dead workers and
    finished runs past their retention. Only the worker holding the advisory lock acts."""

    stale_after: timedelta
    worker_retention: timedelta
    retention: dict[str, timedelta] = field(default_factory=dict)
    batch: int = 1000

    def run_once(self, conn: Connection) -> list[Row[Any]] | None:
        """One pass in the caller's transaction: the runs it recovered (id, pipeline, status,
        attempt, worker_id); None when another worker holds the lock."""
        if not queries.lead(conn):
            return None
        recovered = recover_interrupted(conn, self.stale_after)
        queries.prune_workers(conn, self.worker_retention)
        queries.prune_starts(conn)
        return recovered

    def prune_once(self, conn: Connection) -> int | None:
        """Delete one batch of expired runs; None when another worker holds the lock.

        One batch per transaction keeps row locks few and short; the caller repeats.
        """
        if not queries.lead(conn):
            return None
        if not self.retention:
            return 0
        pruned = queries.prune_runs(conn, self.retention, self.batch)
        if pruned:
            log.info("Pruned finished runs", runs=pruned)
        return pruned


def prune_in_batches(
    delete_batch: Callable[[], int | None], batch: int, max_batches: int | None = None
) -> int:
    """Call ``delete_batch`` (one batch of expired runs, in its own transaction) until a batch
    comes back short, or None (another worker leads, the database is away), or ``max_batches``
    were done; returns how many runs were deleted.

    One batch per transaction keeps row locks few and short, and what is done stays done if
    interrupted; a bound on the batches keeps a worker's pass from stalling its claims for long
    behind a large backlog of expired runs (the next pass goes on where it stopped).
    """
    total, done = 0, 0
    while max_batches is None or done < max_batches:
        pruned = delete_batch()
        done += 1
        total += pruned or 0
        if pruned is None or pruned < batch:
            break
    return total
