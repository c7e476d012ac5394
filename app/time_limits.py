"""Hard time limits, enforced by a thread of the worker that never waits on the database.

Each executor writes what it is running into its row of a shared-memory board: its pid, the run
and attempt, and the run's deadline on ``time.monotonic`` (one clock for every process of the
machine). A daemon thread of the worker reads the board and kills the process group of an
executor whose run passed its deadline. The worker's loop learns of it afterwards, from the
board's record of kills, whatever it was doing meanwhile: a statement blocked on a database that
stopped answering no longer delays a time limit (before, a run with a 3 s limit ran for 12 s,
until the database answered again).

The child writes its row without a message, so a run queued behind another is timed from the
moment it really starts; the thread reads a row twice around its deadline to see a consistent
one (the child is the only writer of its row, the deadline is written last and cleared first).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import RawArray
from typing import Any

_FIELDS = 4  # pid, run id, attempt, deadline
_PID, _RUN, _ATTEMPT, _DEADLINE = range(_FIELDS)
# How often the thread looks for runs started since its last look, when a run is in flight; a
# run is stopped at most this late after its limit (the thread sleeps to a known deadline exactly).
SCAN_INTERVAL = 0.05


@dataclass(frozen=True)
class Kill:
    """A run the thread stopped: the executor's pid, the run, its attempt."""

    pid: int
    run_id: int
    attempt: int


class Board:
    """One row per executor slot in shared memory; each child writes only its own row."""

    def __init__(self, size: int, context: Any) -> None:
        self.size = size
        self.cells: Any = context.RawArray("d", size * _FIELDS) if context else RawArray("d", size * _FIELDS)

    def started(self, index: int, run_id: int, attempt: int, deadline: float) -> None:
        """In the child: it starts a run that must end by ``deadline``."""
        base = index * _FIELDS
        self.cells[base + _DEADLINE] = 0.0
        self.cells[base + _PID] = float(os.getpid())
        self.cells[base + _RUN] = float(run_id)
        self.cells[base + _ATTEMPT] = float(attempt)
        self.cells[base + _DEADLINE] = deadline

    def ended(self, index: int) -> None:
        """In the child when its run ends; in the worker when the child is gone."""
        self.cells[index * _FIELDS + _DEADLINE] = 0.0

    def read(self, index: int) -> tuple[int, int, int, float] | None:
        """(pid, run id, attempt, deadline) of the run in flight in ``index``, if any."""
        base = index * _FIELDS
        while True:
            deadline = self.cells[base + _DEADLINE]
            if not deadline:
                return None
            pid, run_id, attempt = (int(self.cells[base + f]) for f in (_PID, _RUN, _ATTEMPT))
            if self.cells[base + _DEADLINE] == deadline:
                return pid, run_id, attempt, deadline


class TimeLimits:
    """The thread that stops runs past their deadline; ``on_kill`` wakes the worker's loop.

    ``lock`` is held while a process group is killed, and by the worker while it clears the row
    of a child it is about to reap, so a pid is never signalled after it could have been reused.
    """

    def __init__(self, board: Board, lock: threading.Lock, on_kill: Callable[[], None]) -> None:
        self.board = board
        self.lock = lock
        self.on_kill = on_kill
        self.kills: list[Kill] = []  # read and emptied by the worker under ``lock``
        self.busy = threading.Event()  # set by the worker while any run is in flight
        self._stopped = False
        self._thread = threading.Thread(target=self._watch, name="orbit-time-limits", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self.busy.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopped:
            self.busy.wait()
            delay = self.run_once(time.monotonic())
            if not self._stopped:
                time.sleep(delay)

    def run_once(self, now: float) -> float:
        """Kill every run past its deadline; returns how long to sleep before the next look."""
        nearest = now + SCAN_INTERVAL
        killed = False
        with self.lock:
            for index in range(self.board.size):
                row = self.board.read(index)
                if row is None:
                    continue
                pid, run_id, attempt, deadline = row
                if now < deadline:
                    nearest = min(nearest, deadline)
                    continue
                kill_group(pid)
                self.board.ended(index)
                self.kills.append(Kill(pid, run_id, attempt))
                killed = True
        if killed:
            self.on_kill()
        return max(0.0, nearest - time.monotonic())


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (an executor and anything it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
