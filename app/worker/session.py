"""The worker's database session: one kept connection, each call a short transaction with a
deadline, and the backoff that follows a failed call.

A call that fails does not raise: it is logged, the connection is dropped, and ``retry_at`` says
when the next call may be tried. The loop carries on meanwhile (time limits, outcomes held in
memory, signals), so a database that is away or hangs never stops the worker's other duties.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from app.database import Database, KeptConnection
from app.deadlines import DEADLINES
from app.masking import one_line

T = TypeVar("T")


class Session:
    def __init__(
        self, database: Database, poll_interval: float, log: Any, last_call_by: Callable[[], float]
    ) -> None:
        self.database = database
        self.engine: Engine = database.engine(pool_size=2)
        self.retry_at = 0.0  # after a failed call: when the next may be tried
        self.failures = 0  # failed calls in a row
        # When a stopping worker's calls must end: its last try at writing (app.worker.shutdown).
        self.last_call_by = last_call_by
        self._poll_interval = poll_interval
        self._conn = KeptConnection(self.engine)
        self.log = log

    def ready(self, now: float) -> bool:
        """True unless a failed call's backoff is still running."""
        return now >= self.retry_at

    def call(self, action: Callable[[Connection], T], *, atomic: bool = True) -> T | None:
        """Run ``action`` in a short transaction; on database trouble log, back off, return None.

        Everything runs on one connection kept in autocommit: a transaction is an explicit
        BEGIN ... COMMIT on it, which saves the pool check-out and liveness ping of each
        ``engine.begin()``. With ``atomic=False`` each statement of ``action`` commits on its own:
        the heartbeat is a single statement, and queries.exchange sends its own BEGIN and COMMIT
        with its statements, in one round trip.
        """
        now = time.monotonic()
        try:
            result = self._run(action, atomic)
        except SQLAlchemyError as exc:
            self._conn.drop()
            self.failures += 1
            # Capped at the poll interval, so work is noticed within one poll once the database is back.
            delay = min(self._poll_interval, 0.25 * 2**self.failures)
            self.retry_at = now + delay
            self.log.error("Database error; will retry", error=one_line(exc), retry_in_s=round(delay, 2))
            return None
        except BaseException:
            self._conn.drop()  # closing it ends what it began: no transaction left holding locks
            raise
        if self.failures:
            self.log.info("Database is reachable again", after_failures=self.failures)
        self.failures = 0
        self.retry_at = 0.0
        return result

    def _run(self, action: Callable[[Connection], T], atomic: bool) -> T:
        conn = self._conn.get()
        # The whole action has a deadline: a database that stops answering must not hold the
        # loop (its outcomes, heartbeats and signals) for longer than that.
        with DEADLINES.bound(self._conn.socket, self.deadline()):
            if not atomic:
                return action(conn)
            conn.exec_driver_sql("BEGIN")
            try:
                result = action(conn)
            except BaseException:
                self._conn.drop()  # closing the connection rolls back what it began
                raise
            conn.exec_driver_sql("COMMIT")
            return result

    def deadline(self) -> float:
        """Seconds a call may take: the database's deadline, or for a stopping worker what is left
        until its last try at writing (at least 1 s), so it is done within SHUTDOWN_GRACE +
        SHUTDOWN_WRITE_TIMEOUT and a few seconds (supervisord.conf)."""
        left = self.last_call_by() - time.monotonic()
        return min(self.database.deadline, max(1.0, left))

    def close(self) -> None:
        self._conn.drop()
        self.engine.dispose()
