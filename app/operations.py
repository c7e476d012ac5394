"""Fleet operations kept in the database: pauses, drains and limits' overrides.

A pause or a limit is a row every worker's claim reads, so it reaches the whole fleet within one
poll and survives restarts; nothing has to be sent to a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row

from app import globs, queries
from app.limits import Limits, Rate


class OperationError(ValueError):
    """The operation cannot be done as asked; nothing changed. One line for the user."""


def pause(conn: Connection, glob: str, known: set[str], paused_by: str) -> bool:
    """Pause the pipelines matching ``glob`` fleet-wide; False when it was paused already.

    ``known``: the pipelines the caller loads; with those the workers registered, one must match,
    since a mistyped glob would pause nothing while the operator believes it does.
    """
    return queries.pause(conn, glob, _known_match(conn, glob, known, "paused"), paused_by)


def _known_match(conn: Connection, glob: str, known: set[str], what: str) -> str:
    """``glob`` as LIKE, when it matches a pipeline the caller loads or a registered worker runs
    (a mistyped glob would do nothing while the operator believes it does)."""
    try:
        like = globs.to_like(glob)
    except globs.GlobError as exc:
        raise OperationError(str(exc)) from None
    if not any(globs.matches(glob, name) for name in known | queries.worker_pipelines(conn)):
        raise OperationError(
            f"no known pipeline matches {glob!r}: neither ORBIT_PIPELINES nor a registered "
            f"worker has one; nothing was {what}"
        )
    return like


def set_limit(conn: Connection, glob: str, flow: Limits, known: set[str], set_by: str) -> None:
    """Override the limits ``flow`` sets (the others stay as they were) for the pipelines
    matching ``glob``, fleet-wide, from every worker's next claim."""
    if not flow:
        raise OperationError("give a concurrency, a rate or a group concurrency")
    like = _known_match(conn, glob, known, "limited")
    queries.set_limit(conn, glob, like, flow.as_claim(), set_by)


def clear_limit(conn: Connection, glob: str) -> bool:
    """Remove the override ``glob``; False when there was none."""
    try:
        globs.to_like(glob)
    except globs.GlobError as exc:
        raise OperationError(str(exc)) from None
    return queries.clear_limit(conn, glob)


def limits_in_force(conn: Connection, known: dict[str, Limits]) -> dict[str, list[dict[str, Any]]]:
    """The limited pipelines (those ``known`` with their code's limits, and those registered
    workers run), each limit with where it comes from (``code``, or ``override GLOB``), their
    running and due runs; and the overrides."""
    code = dict(known)
    for name in queries.worker_pipelines(conn):
        code.setdefault(name, Limits())
    rows = [_shown(row) for row in queries.effective_limits(conn, code) if _limited(row)]
    overrides = [
        {**dict(row._mapping), "limits": describe(dict(row._mapping))} for row in queries.list_limits(conn)
    ]
    return {"pipelines": rows, "overrides": overrides}


def describe(values: dict[str, Any]) -> str:
    """``concurrency 2, rate 100/m, group concurrency 1``: what a row of limits sets."""
    parts = []
    if values.get("concurrency") is not None:
        parts.append(f"concurrency {values['concurrency']}")
    if values.get("rate_count") is not None:
        parts.append(f"rate {Rate(values['rate_count'], values['rate_seconds'])}")
    if values.get("group_concurrency") is not None:
        parts.append(f"group concurrency {values['group_concurrency']}")
    return ", ".join(parts)


def _limited(row: dict[str, Any]) -> bool:
    return any(row[field] is not None for field in ("concurrency", "rate_count", "group_concurrency"))


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    def source(value: Any, pattern: str | None) -> str | None:
        if value is None:
            return None
        return f"{value} ({'code' if pattern is None else 'override ' + pattern})"

    rate = None if row["rate_count"] is None else Rate(row["rate_count"], row["rate_seconds"])
    return {
        "pipeline": row["name"],
        "concurrency": source(row["concurrency"], row["concurrency_from"]),
        "rate": source(rate, row["rate_from"]),
        "group_concurrency": source(row["group_concurrency"], row["group_concurrency_from"]),
        "running": row["running"],
        "due": row["due"],
    }


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
