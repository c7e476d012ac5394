"""LISTEN for new runs so an idle worker starts them at once instead of at its next poll.

An accelerator only: polling always runs, so a dropped listener (or PgBouncer in transaction
mode, which cannot carry LISTEN) costs latency, never a run. It uses ``DIRECT_URL``.

The connection is made, and made again after it breaks, by a thread of its own with a backoff,
so that the worker's loop never waits on a connect to a database that is away. Once made, it is
handed to the loop, which waits on its socket beside the executors' and reads the notifications
itself: one process wake-up per new run, where a thread of its own reading them and then waking
the loop cost two (0.2-0.3 ms of each pickup on a 2-core machine). It reads them from libpq
directly: on a process that had been idle, psycopg's ``notifies()`` took 54-63 µs at the median
to return one (its lock, its generators, a wait with no time left), this way 19-22 µs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from app.database import Database
from app.deadlines import DEADLINES, DeadlineExceeded
from app.queries.common import RUNS_CHANNEL

CHANNEL = RUNS_CHANNEL
log = structlog.get_logger("orbit.notifier")


class Notifier:
    """The listening connection: ``sockets()`` to wait on, ``take()`` what arrived.

    ``ready`` is called (from the thread) when a new connection can be adopted: the loop should
    wake and call ``take``, which adopts it and reports an empty payload, for a notification may
    have been missed while there was none.
    """

    def __init__(self, database: Database, ready: Callable[[], None]) -> None:
        self._database = database
        self._ready = ready
        self._conn: psycopg.Connection[Any] | None = None  # the loop's
        self._socket, self._encoding = -1, "utf-8"  # its socket, its payloads' encoding
        # Payloads psycopg read itself, while a statement of send() ran on the connection.
        self._queued: list[str] = []
        self._made: psycopg.Connection[Any] | None = None  # made by the thread, not yet adopted
        self._lock = threading.Lock()
        self._wanted = threading.Event()  # the loop has no connection: make one
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orbit-listener", daemon=True)

    def start(self) -> None:
        self._wanted.set()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wanted.set()
        self._drop()
        with self._lock:
            made, self._made = self._made, None
        if made is not None:
            made.close()

    def sockets(self) -> list[int]:
        """What the loop waits on: the connection's socket, when it has one."""
        return [] if self._conn is None else [self._socket]

    def take(self, ready: list[Any]) -> list[str]:
        """The payloads that arrived, if its socket is among ``ready`` (and an empty one for a
        connection just adopted); never blocks."""
        payloads = self._adopt() if self._made is not None else []
        if self._queued:
            payloads += self._queued
            self._queued.clear()
        if self._conn is None or self._socket not in ready:
            return payloads
        pgconn = self._conn.pgconn
        try:
            pgconn.consume_input()  # what the socket has, without waiting
        except psycopg.Error as exc:
            log.warning("Listener lost its connection; polling continues", error=str(exc))
            self._drop()
            return payloads
        while (notify := pgconn.notifies()) is not None:
            payloads.append(notify.extra.decode(self._encoding))
        if pgconn.status != psycopg.pq.ConnStatus.OK:  # the server's goodbye, read with the rest
            log.warning("Listener lost its connection; polling continues", error="the server closed it")
            self._drop()
        return payloads

    def send(self, payload: str) -> None:
        """Notify every listener (a run passed on to the other workers)."""
        if self._conn is None:
            return
        try:
            # The loop's own call: bounded like every other (app.deadlines).
            with DEADLINES.bound(self._socket, self._database.deadline):
                self._conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        except (psycopg.Error, DeadlineExceeded):
            self._drop()

    def _adopt(self) -> list[str]:
        with self._lock:
            made, self._made = self._made, None
        if made is None:
            return []
        self._drop()
        self._conn, self._socket, self._encoding = made, made.fileno(), made.info.encoding
        made.add_notify_handler(lambda notify: self._queued.append(notify.payload))
        return [""]

    def _drop(self) -> None:
        conn, self._conn, self._socket = self._conn, None, -1
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            if not self._stopped.is_set():
                self._wanted.set()

    def _run(self) -> None:
        failures = 0
        while True:
            self._wanted.wait()
            if self._stopped.is_set():
                return
            try:
                conn = self._database.connect_direct()
                conn.execute(f"LISTEN {CHANNEL}")
            except psycopg.Error as exc:
                failures += 1
                if failures == 1:
                    log.warning("Listener cannot connect; polling continues", error=str(exc))
                self._stopped.wait(min(30.0, 0.5 * 2**failures))
                continue
            failures = 0
            self._wanted.clear()
            with self._lock:
                self._made = conn
            if self._stopped.is_set():  # stopped while it connected: nobody will adopt it
                self.stop()
                return
            self._ready()
