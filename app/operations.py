"""Fleet operations kept in the database: pauses and drains.

A pause is a row every worker's claim reads, so it reaches the whole fleet within one poll and
survives restarts; nothing has to be sent to a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row

from app import globs, queries


class OperationError(ValueError):
    """The operation cannot be done as asked; nothing changed. One line for the user."""


def pause(conn: Connection, glob: str, known: set[str], paused_by: str) -> bool:
    """Pause the pipelines matching ``glob`` fleet-wide; False when it was paused already.

    ``known``: the pipelines the caller loads; with those the workers registered, one must match,
    since a mistyped glob would pause nothing while the operator believes it does.
    """
    try:
        like = globs.to_like(glob)
    except globs.GlobError as exc:
        raise OperationError(str(exc)) from None
    if not any(globs.matches(glob, name) for name in known | queries.worker_pipelines(conn)):
        raise OperationError(
            f"no known pipeline matches {glob!r}: neither ORBIT_PIPELINES nor a registered "
            "worker has one; nothing was paused"
        )
    return queries.pause(conn, glob, like, paused_by)


@dataclass(frozen=True)
class DrainResult:
    drained: bool
    still_running: list[Row[Any]]


def drain(
    engine: Engine,
    glob: str,
    timeout: timedelta,
    on_progress: Callable[[list[Row[Any]]], None],
    poll: float = 0.2,
) -> DrainResult:
    """Wait until no run matching ``glob`` is running (the caller paused it first)."""
    like = globs.to_like(glob)
    deadline = time.monotonic() + timeout.total_seconds()
    shown: list[int] | None = None
    while True:
        with engine.connect() as conn:
            running = queries.running_matching(conn, like)
        if not running:
            return DrainResult(True, [])
        ids = [row.id for row in running]
        if ids != shown:
            on_progress(running)
            shown = ids
        if time.monotonic() >= deadline:
            return DrainResult(False, running)
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
