"""Hard limits: a thread of the worker that stops a run past its time limit or its memory limit,
and never waits on the database.

Each executor writes what it is running into its row of a board in shared memory: its pid, the
run and attempt, the run's deadline on ``time.monotonic`` (one clock for every process of the
machine) and its memory limit. The thread reads the board and kills the process group of an
executor whose run passed its deadline, or whose resident memory passed the run's limit. The
worker's loop learns of it afterwards, from the list of kills, whatever it was doing meanwhile: a
statement blocked on a database that stopped answering no longer delays a limit (before, a run
with a 3 s limit ran for 12 s, until the database answered again).

The child writes its row without a message, so a run queued behind others is timed from the
moment it really starts; the thread reads a row twice around its deadline to see a consistent one
(the child is the only writer of its run's fields, the deadline is written last and cleared first).
The row also carries the worker's ``mail`` count, which the worker raises when it sends the child
something: a busy child looks at one number between runs instead of at its socket.

The board is a ``memfd`` mapped by the worker and by the fork server, whose executors inherit the
mapping.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_FIELDS = 6  # pid, run id, attempt, deadline, memory limit, mail
_PID, _RUN, _ATTEMPT, _DEADLINE, _MEMORY, _MAIL = range(_FIELDS)
# How often the thread looks for runs started since its last look, when a run is in flight; a
# run is stopped at most this late after its limit (the thread sleeps to a known deadline exactly).
SCAN_INTERVAL = 0.05
# How often the memory of a run with a memory limit is read: Python allocates a few hundred MB in
# this time at most, the overshoot a limit may see before the run is stopped.
MEMORY_INTERVAL = 0.02
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Kill:
    """A run the thread stopped: the executor's pid, the run, its attempt, and, for a memory limit,
    the limit and the resident size it reached (bytes)."""

    pid: int
    run_id: int
    attempt: int
    memory_limit: int = 0
    memory: int = 0


class Board:
    """One row per executor slot in shared memory; each child writes only its run's fields."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.size = size
        length = size * _FIELDS * 8
        if fd is None:
            fd = os.memfd_create("orbit-board")
            os.ftruncate(fd, length)
        self.fd = fd
        self._map = mmap.mmap(fd, length)
        self.cells = memoryview(self._map).cast("d")

    @classmethod
    def attach(cls, fd: int, size: int) -> Board:
        """The board created by another process, shared through ``fd``."""
        return cls(size, fd)

    def close(self) -> None:
        self.cells.release()
        self._map.close()
        os.close(self.fd)

    def started(self, index: int, run_id: int, attempt: int, deadline: float, memory_limit: int = 0) -> None:
        """In the child: it starts a run that must end by ``deadline`` (and stay under ``memory_limit``
        bytes, when not 0)."""
        cells, base = self.cells, index * _FIELDS
        cells[base + _DEADLINE] = 0.0
        cells[base + _PID] = float(os.getpid())
        cells[base + _RUN] = float(run_id)
        cells[base + _ATTEMPT] = float(attempt)
        cells[base + _MEMORY] = float(memory_limit)
        cells[base + _DEADLINE] = deadline

    def ended(self, index: int) -> None:
        """In the child when its run ends; in the worker when the child is gone."""
        self.cells[index * _FIELDS + _DEADLINE] = 0.0

    def read(self, index: int) -> tuple[int, int, int, float, int] | None:
        """(pid, run id, attempt, deadline, memory limit) of the run in flight in ``index``, if any."""
        cells, base = self.cells, index * _FIELDS
        while True:
            deadline = cells[base + _DEADLINE]
            if not deadline:
                return None
            pid, run_id, attempt, memory = (int(cells[base + f]) for f in (_PID, _RUN, _ATTEMPT, _MEMORY))
            if cells[base + _DEADLINE] == deadline:
                return pid, run_id, attempt, deadline, memory

    def post(self, index: int) -> None:
        """In the worker: it sent the child of ``index`` something to read."""
        self.cells[index * _FIELDS + _MAIL] += 1.0

    def mail(self, index: int) -> float:
        """In the child: how many times the worker posted (compare with the count last seen)."""
        return float(self.cells[index * _FIELDS + _MAIL])


class Watchdog:
    """The thread that stops runs past their limits; ``on_kill`` wakes the worker's loop.

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
        self._thread = threading.Thread(target=self._watch, name="orbit-limits", daemon=True)

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
        """Kill every run past its deadline or its memory limit; returns how long to sleep
        before the next look."""
        nearest = now + SCAN_INTERVAL
        killed = False
        with self.lock:
            for index in range(self.board.size):
                row = self.board.read(index)
                if row is None:
                    continue
                pid, run_id, attempt, deadline, memory_limit = row
                memory = resident(pid) if memory_limit else 0
                if now < deadline and memory <= memory_limit:
                    nearest = min(nearest, deadline, now + MEMORY_INTERVAL if memory_limit else nearest)
                    continue
                kill_group(pid)
                self.board.ended(index)
                if memory > memory_limit and now < deadline:
                    self.kills.append(Kill(pid, run_id, attempt, memory_limit, memory))
                else:
                    self.kills.append(Kill(pid, run_id, attempt))
                killed = True
        if killed:
            self.on_kill()
        return max(0.0, nearest - time.monotonic())


def resident(pid: int) -> int:
    """The resident size of ``pid`` in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (an executor and anything it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
