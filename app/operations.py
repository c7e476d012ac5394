"""Fleet operations kept in the database: pauses and drains.

A pause is a row every worker's claim reads, so it reaches the whole fleet within one poll and
survives restarts; nothing has to be sent to a worker.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, Row

from app import queries


class GlobError(ValueError):
    """A glob Orbit cannot match; one line for the user."""


def glob_to_like(glob: str) -> str:
    """The LIKE pattern matching what ``glob`` matches (``*`` and ``?`` only)."""
    if not glob or glob != glob.strip() or len(glob) > 200:
        raise GlobError(f"bad glob {glob!r}: expected 1 to 200 characters without surrounding spaces")
    if "[" in glob or "]" in glob:
        raise GlobError(f"bad glob {glob!r}: only * and ? are supported, not [...]")
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def matches_any(glob: str, pipelines: Iterable[str]) -> bool:
    """Whether ``glob`` (already checked by :func:`glob_to_like`) matches one of ``pipelines``."""
    return any(fnmatch.fnmatchcase(name, glob) for name in pipelines)


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
    like = glob_to_like(glob)
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
