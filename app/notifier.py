"""LISTEN for new runs so an idle worker starts them at once instead of at its next poll.

An accelerator only: polling always runs, so a dropped listener (or PgBouncer in transaction
mode, which cannot carry LISTEN) costs latency, never a run. It uses ``DIRECT_URL``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import structlog

from app.database import Database
from app.queries.common import RUNS_CHANNEL

CHANNEL = RUNS_CHANNEL
log = structlog.get_logger("orbit.notifier")


class Notifier:
    """A daemon thread holding one LISTEN connection; calls ``wake`` on each notification."""

    def __init__(self, database: Database, wake: Callable[[], None]) -> None:
        self._database = database
        self._wake = wake
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orbit-notifier", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                with self._database.connect_direct() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    # A notification may have been missed while reconnecting: poll now.
                    self._wake()
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._wake()
            except psycopg.Error as exc:
                failures += 1
                if failures == 1 and not self._stopped.is_set():
                    log.warning("Listener lost its connection; polling continues", error=str(exc))
                self._stopped.wait(min(30.0, 0.5 * 2**failures))
