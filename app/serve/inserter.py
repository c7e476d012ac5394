"""Single-run enqueues over HTTP, written together: the runs of the requests that arrive while
earlier ones are being written go to the database in the next write, on a connection kept for it.

Measured on two cores (docs/performance.md): handing each request to a thread of its own costs
the event loop about 170 µs of CPU, and a pooled transaction (ping, BEGIN, INSERT, COMMIT) four
round trips. Here a request costs a future on the loop; a write is one hand-off to a writer
thread (``FLUSHERS`` of them) and one statement per batch in autocommit (a COPY for the runs
without a key or a timeout, which is what most are), so the cost per run falls as the load
rises, and a quiet server still writes each run at once. Each request is answered only after
its run is committed.

A write fails as a whole only on the connection's account (an outage, a deadline): then every
request of it gets that error. When the statement itself is refused, the runs are written again
one by one, so one request's bad run never fails another's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from psycopg import OperationalError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from app import queries
from app.database import KeptConnection
from app.deadlines import DEADLINES
from app.queries.runs import NewRun

# Writes in flight at once, each on its own connection. One, measured (docs/performance.md): with
# two, each batch is half as big and the threads contend for the interpreter; 1,000 requests from
# 10 clients went 42-48 % of enqueue()'s rate with two and 47-62 % with one.
FLUSHERS = 1
MAX_BATCH = 1_000

Outcome = tuple[int, bool] | BaseException
Waiting = tuple[NewRun, "asyncio.Future[tuple[int, bool]]"]


class Inserter:
    """Writes single runs for the request handlers of one serve process."""

    def __init__(self, engine: Engine, deadline: float, flushers: int = FLUSHERS) -> None:
        self._engine = engine
        self._deadline = deadline
        self._flushers = flushers
        self._pool = ThreadPoolExecutor(flushers, thread_name_prefix="orbit-enqueue")
        self._local = threading.local()
        self._waiting: list[Waiting] = []
        self._writing = 0

    async def insert(self, run: NewRun) -> tuple[int, bool]:
        """The run's id once it is committed, and whether it was inserted (False: a live run
        holds its key, and that run's id is returned)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, bool]] = loop.create_future()
        self._waiting.append((run, done))
        if self._writing < self._flushers:
            self._write_next(loop)
        return await done

    def close(self) -> None:
        """Finish the writes in flight and close the kept connections."""
        self._pool.shutdown(wait=True)

    def _write_next(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._writing += 1
        written = loop.run_in_executor(self._pool, self.write, [run for run, _ in batch])
        written.add_done_callback(lambda future: self._answer(loop, batch, future))

    def _answer(
        self, loop: asyncio.AbstractEventLoop, batch: list[Waiting], written: asyncio.Future[list[Outcome]]
    ) -> None:
        self._writing -= 1
        error = written.exception()
        outcomes: list[Outcome] = [error] * len(batch) if error is not None else written.result()
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            _settle(done, outcome)
        if self._waiting and self._writing < self._flushers:
            self._write_next(loop)

    # --- in a flusher thread ----------------------------------------------------------------------

    def write(self, runs: list[NewRun]) -> list[Outcome]:
        """Each run's outcome: written together, or one by one when the statement was refused."""
        try:
            return list(self._on_kept(lambda kept: _insert(kept, runs)))
        except DBAPIError as exc:
            if len(runs) == 1 or isinstance(exc.orig, OperationalError):
                raise
        outcomes: list[Outcome] = []
        for run in runs:
            try:
                outcomes.extend(self._on_kept(lambda kept, run=run: _insert(kept, [run])))  # type: ignore[misc]
            except SQLAlchemyError as exc:
                outcomes.append(exc)
        return outcomes

    def _on_kept(self, write: Callable[[Connection], list[tuple[int, bool]]]) -> list[tuple[int, bool]]:
        kept: KeptConnection | None = getattr(self._local, "kept", None)
        if kept is None:
            kept = self._local.kept = KeptConnection(self._engine)
        conn = kept.get()
        try:
            with DEADLINES.bound(kept.socket, self._deadline):
                return write(conn)
        except SQLAlchemyError:
            kept.drop()
            raise


def _insert(conn: Connection, runs: list[NewRun]) -> list[tuple[int, bool]]:
    """The runs in autocommit: those without a key or a timeout in one COPY (one INSERT when
    alone), the others one statement each (a key is looked up, in order)."""
    plain = [run for run in runs if run.key is None and run.timeout is None]
    if len(plain) > 1:
        ids = iter(queries.insert_runs(conn, plain))
        return [
            (next(ids), True)
            if run.key is None and run.timeout is None
            else queries.insert_run_once(conn, run)
            for run in runs
        ]
    return [queries.insert_run_once(conn, run) for run in runs]


def _settle(done: asyncio.Future[tuple[int, bool]], outcome: Outcome) -> None:
    loop = done.get_loop()
    if loop is not asyncio.get_running_loop():  # a request of another event loop (in tests)
        loop.call_soon_threadsafe(_settle, done, outcome)
        return
    if done.done():  # the request went away; its run is written all the same
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
