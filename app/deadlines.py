"""Client-side deadlines for database calls: a statement that has not answered in time is cut.

The server's ``statement_timeout`` ends a slow statement, and TCP keepalives and
``tcp_user_timeout`` end a connection whose packets go unacknowledged, but none of them helps
when the path to the server accepts bytes and never answers (a proxy or load balancer that
hangs, a server stopped with SIGSTOP, PgBouncer waiting for a server connection): libpq then
waits for ever. Here a daemon thread, which never touches the database itself, shuts down the
socket of a call that outlived its deadline; the blocked call fails at once with a connection
error, and the caller handles it like any other outage.

The thread looks at its calls every quarter of the shortest deadline it has seen, so no call
has to wake it: a bounded call costs a dictionary entry, and is cut at most a quarter late.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError


class DeadlineExceeded(SQLAlchemyError):
    """A database call was cut at its deadline; the message is one line for the user. A
    SQLAlchemy error like any other failure of the database, so callers handle it as one."""


class Deadlines:
    """Calls in flight with their deadlines, and the thread that cuts the late ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[float, int]] = {}  # token -> (deadline, socket)
        self._cut: set[int] = set()
        self._tokens = itertools.count()
        self._period = 1.0
        self._thread: threading.Thread | None = None
        self._pid = 0

    def bound(self, fileno: int, seconds: float) -> Bound:
        """Cut the connection on socket ``fileno`` if the block has not ended within ``seconds``.

        Raises :class:`DeadlineExceeded` from the block's error (an ``Exception``) when its
        connection was cut; any other exit (``KeyboardInterrupt``, say) passes through unchanged,
        its call ended all the same.
        """
        return Bound(self, fileno, seconds)

    def start(self, fileno: int, seconds: float) -> int:
        """Begin a call on socket ``fileno`` that must end within ``seconds``; returns its token."""
        self._ensure_thread(seconds)
        token = next(self._tokens)
        with self._lock:
            self._calls[token] = (time.monotonic() + seconds, fileno)
        return token

    def end(self, token: int | None) -> bool:
        """The call ended; True when its connection was cut first."""
        if token is None:
            return False
        with self._lock:
            self._calls.pop(token, None)
            if token in self._cut:
                self._cut.discard(token)
                return True
            return False

    def _ensure_thread(self, seconds: float) -> None:
        self._period = max(0.01, min(self._period, seconds / 4))
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                # In a forked child the parent's thread does not exist: start one of its own.
                self._calls.clear()
                self._cut.clear()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._watch, name="orbit-deadlines", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(self._period)
            self.cut_late(time.monotonic())

    def cut_late(self, now: float) -> int:
        """Shut down the sockets of calls past their deadline; returns how many were cut."""
        cut = 0
        with self._lock:
            for token, (deadline, fileno) in list(self._calls.items()):
                if now >= deadline and token not in self._cut:
                    self._cut.add(token)
                    _shutdown(fileno)
                    cut += 1
        return cut


class Bound:
    """The block of :meth:`Deadlines.bound`. A class rather than a generator: it is entered on
    every enqueue and database turn, and a generator's context manager cost twice as much there
    (20 µs of an enqueue on a process that had been idle, measured)."""

    __slots__ = ("_deadlines", "_fileno", "_seconds", "_token")

    def __init__(self, deadlines: Deadlines, fileno: int, seconds: float) -> None:
        self._deadlines, self._fileno, self._seconds = deadlines, fileno, seconds
        self._token: int | None = None

    def __enter__(self) -> None:
        self._token = self._deadlines.start(self._fileno, self._seconds)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        # Ended on every exit, or the thread would later shut down a socket number that the
        # next connection may have been given. Cut just as it answered, without an error: the
        # result stands, and the connection is found broken at its next use.
        cut = self._deadlines.end(self._token)
        if cut and isinstance(error, Exception):
            raise DeadlineExceeded(f"the database did not answer within {self._seconds:g}s") from error


def _shutdown(fileno: int) -> None:
    """Shut the socket down without closing its descriptor, which its connection still owns."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fileno))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


DEADLINES = Deadlines()
