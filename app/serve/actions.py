"""What the API and the console change: enqueue, cancel, resume, retry, bulk actions, flush,
pause and drain. Each runs in the caller's transaction, through app.queries and the same rules as
the CLI, and raises :class:`ActionError` (one line, nothing written) when it cannot be done."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from app import operations, queries, recovery
from app.access import BULK_LIMIT
from app.enqueue import EnqueueError, new_run
from app.queries import RunFilter
from app.queries.runs import NewRun
from app.states import LIVE, RESUMABLE, RunStatus, ordered


class ActionError(ValueError):
    """The action is refused; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Enqueue:
    """One run asked for over HTTP or from the console."""

    pipeline: str
    params: Any = None
    priority: int = 0
    delay: Any = None
    run_at: Any = None
    key: str | None = None
    max_attempts: int | None = None
    timeout: Any = None
    group: str | None = None


def prepare(asks: list[Enqueue]) -> list[NewRun]:
    """The runs asked for, validated as enqueue() validates them; ActionError for the first bad one."""
    try:
        return [
            new_run(
                a.pipeline, a.params, a.priority, a.delay, a.max_attempts, a.timeout, a.key, a.run_at, a.group
            )
            for a in asks
        ]
    except EnqueueError as exc:
        where = "" if len(asks) == 1 else " (nothing was enqueued)"
        raise ActionError(f"{exc}{where}") from None


def enqueue(conn: Connection, asks: list[Enqueue]) -> tuple[list[int], bool]:
    """Insert the runs (all or none); returns their ids, and whether any was inserted (False: the
    one run asked for has a key a live run holds, whose id is returned)."""
    runs = prepare(asks)
    if len(runs) == 1:
        run_id, inserted = queries.insert_run_once(conn, runs[0])
        return [run_id], inserted
    keyed = [run for run in runs if run.key is not None or run.timeout is not None]
    if keyed:  # COPY takes neither; such runs go in one by one, in the same transaction
        return [queries.insert_run(conn, run) for run in runs], True
    return queries.insert_runs(conn, runs), True


def cancel(conn: Connection, run_id: int) -> str:
    """Cancel a pending or running run; returns the status it had."""
    previous = queries.cancel(conn, run_id)
    if previous is not None:
        return previous
    current = queries.get_run(conn, run_id)
    if current is None:
        raise ActionError(f"run {run_id} does not exist", 404)
    raise ActionError(f"run {run_id} is {current.status}: only pending or running runs cancel", 409)


def resume(conn: Connection, run_id: int, stale_after: timedelta) -> Any:
    """Resume an interrupted, failed or timed-out run from its last completed step."""
    try:
        return recovery.resume(conn, run_id, stale_after)
    except recovery.KeyHeld as exc:
        raise ActionError(str(exc), 409) from None
    except recovery.ResumeError as exc:
        missing = queries.get_run(conn, run_id) is None
        raise ActionError(str(exc), 404 if missing else 409) from None


def allowed(status: str) -> dict[str, bool]:
    """Which of cancel, resume and retry a run in ``status`` accepts (the rules of the functions here)."""
    return {
        "cancel": status in LIVE,
        "resume": status in RESUMABLE,
        "retry": status not in LIVE,
    }


def retry(conn: Connection, run_id: int, params: Mapping[str, Any] | None = None) -> int:
    """A new run of a finished run's pipeline, from the start, with its params or ``params``."""
    old = queries.get_run(conn, run_id)
    if old is None:
        raise ActionError(f"run {run_id} does not exist", 404)
    if old.status in LIVE:
        raise ActionError(f"run {run_id} is {old.status}: only finished runs are run again", 409)
    again = Enqueue(
        old.pipeline,
        old.params if params is None else params,
        old.priority,
        key=old.key,
        max_attempts=old.max_attempts,
        timeout=None if old.timeout is None else old.timeout.total_seconds(),
        group=old.run_group,
    )
    return enqueue(conn, [again])[0][0]


def _bulk_ids(conn: Connection, where: RunFilter, statuses: frozenset[RunStatus], admin: bool) -> list[int]:
    limit = None if admin else BULK_LIMIT
    wanted = tuple(str(s) for s in ordered(statuses) if where.status is None or s == where.status)
    if not wanted:
        return []
    ids = queries.matching_ids(conn, where, wanted, (limit or 10_000_000) + 1)
    if limit is not None and len(ids) > limit:
        raise ActionError(f"more than {limit} runs match: acting on them all needs the admin role", 403)
    return ids


def bulk_cancel(conn: Connection, where: RunFilter, *, admin: bool) -> list[int]:
    """Cancel every pending or running run matching ``where``; the ids cancelled."""
    return queries.cancel_many(conn, _bulk_ids(conn, where, LIVE, admin))


def bulk_retry(conn: Connection, where: RunFilter, *, admin: bool) -> dict[int, int]:
    """Run again every failed or timed-out run matching ``where``: {old id: new id}."""
    return {run_id: retry(conn, run_id) for run_id in _bulk_ids(conn, where, RESUMABLE, admin)}


def flush(conn: Connection, glob: str) -> int:
    """Cancel the pending runs of the pipelines matching ``glob``; how many."""
    return queries.cancel_pending_matching(conn, _like(glob))


def pause(conn: Connection, glob: str, known: set[str], by: str) -> bool:
    try:
        return operations.pause(conn, glob, known, by)
    except operations.OperationError as exc:
        raise ActionError(str(exc)) from None


def unpause(conn: Connection, glob: str) -> bool:
    _like(glob)
    return queries.unpause(conn, glob)


def running(conn: Connection, glob: str) -> list[dict[str, Any]]:
    """The runs of ``glob`` still running (what a drain waits for)."""
    from app.serve.views import record

    return [record(row) for row in queries.running_matching(conn, _like(glob))]


def _like(glob: str) -> str:
    from app import globs

    try:
        return globs.to_like(glob)
    except globs.GlobError as exc:
        raise ActionError(str(exc)) from None
