"""``GET /api/events``: server-sent events of run state changes and of the fleet, for the console.

One reader per serve process, whatever the number of listeners: while anybody listens, it reads
what changed every ``SERVE_EVENTS_INTERVAL`` (new runs by id, runs started or finished since the
last read, each from an index) and the workers' heartbeats, and hands each listener the events.
Polling, not LISTEN, so it works the same through PgBouncer in transaction mode.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import anyio.to_thread
import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app import queries
from app.masking import one_line

log = structlog.get_logger("orbit.serve")

KEEPALIVE_SECONDS = 15.0
MAX_QUEUED = 1000  # per listener: one that stops reading loses events, not the server's memory


class Changes:
    """What the reader keeps between two reads: the last id seen and the last read's time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.after_id: int | None = None
        self.since: datetime | None = None
        self.workers: tuple[Any, ...] = ()

    def read_once(self) -> list[tuple[str, dict[str, Any]]]:
        """Events since the last call (none on the first, which sets the starting point)."""
        with self._engine.begin() as conn:
            now = queries.db_now(conn)
            if self.after_id is None or self.since is None:
                self.after_id, self.since = queries.last_id(conn), now
                self.workers = _worker_states(conn)
                return []
            rows = queries.changes(conn, self.after_id, self.since)
            workers = _worker_states(conn)
        events: list[tuple[str, dict[str, Any]]] = [
            ("run", {k: v for k, v in row._mapping.items()}) for row in rows
        ]
        self.after_id = max([self.after_id, *(row.id for row in rows)])
        self.since = now
        if events or workers != self.workers:
            self.workers = workers
            events.append(("fleet", {"workers": len(workers), "at": now.isoformat()}))
        return events


def _worker_states(conn: Any) -> tuple[Any, ...]:
    return tuple((row.id, row.stopped_at is None) for row in queries.list_workers(conn))


class Broadcaster:
    """Fans one reader's events out to every listener of this process."""

    def __init__(self, read: Callable[[], list[tuple[str, dict[str, Any]]]], interval: float) -> None:
        self._read = read
        self._interval = interval
        self._listeners: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()
        self._task: asyncio.Task[None] | None = None

    async def listen(self) -> AsyncIterator[str]:
        """Server-sent event text for one listener, until it goes away."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(MAX_QUEUED)
        self._listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"
        finally:
            self._listeners.discard(queue)

    async def _run(self) -> None:
        failing = False
        while self._listeners:
            try:
                events = await anyio.to_thread.run_sync(self._read)
                failing = False
            except SQLAlchemyError as exc:
                if not failing:
                    log.warning("Cannot read changes for live views", error=one_line(exc))
                failing, events = True, []
            for event in events:
                for queue in list(self._listeners):
                    if not queue.full():
                        queue.put_nowait(event)
            await asyncio.sleep(self._interval)
        self._task = None
