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

from sqlalchemy import Engine, Row

from app import globs, queries


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
