"""The worker's side of the executors: a pool of pre-started child processes, one run at a time
each (and one queued behind it), over a ``multiprocessing`` Pipe; a run past its limit has its
child's process group killed and the child replaced (see the package's docstring)."""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any

import structlog

from app.executor.child import GROUP_SIGNALS, ChildConfig, child_main
from app.outcomes import Failure
from app.queries import ClaimedRun
from app.reaper import Reaper
from app.states import ErrorKind
from app.time_limits import Board, Kill, TimeLimits, kill_group

_MP = multiprocessing.get_context("spawn")

log = structlog.get_logger("orbit.executor")


@dataclass(frozen=True)
class Outcome:
    """An attempt's end: ``result_json`` on success, else ``failure``."""

    run: ClaimedRun
    duration: float
    result_json: str | None = None
    failure: Failure | None = None


@dataclass
class _Slot:
    process: Any
    conn: Connection
    ready: bool = False  # the child has loaded its pipelines
    runs: deque[ClaimedRun] = field(default_factory=deque)  # sent to the child; the first is running
    started: float = 0.0  # when the first of ``runs`` started (for its duration)
    doomed: set[tuple[int, int]] = field(default_factory=set)  # (id, attempt) of queued runs to stop

    @property
    def run(self) -> ClaimedRun | None:
        return self.runs[0] if self.runs else None


@dataclass
class ExecutorPool:
    """``size`` child processes; the worker submits runs and collects their outcomes.

    A child may be sent a second run while it runs the first (``queue=True``): it starts it the
    moment the first ends, without waiting for the worker to notice, which on a busy or idle
    machine saves a wake-up of two processes per run. The queued run's time limit counts from
    the end of the first, as the child reports it (``time.monotonic`` is one clock for every
    process of the machine). A queued run that cannot start (its child killed or crashed while
    running the first, or told to stop) goes to ``returned``, untouched, for the worker to take
    back.

    ``on_kill`` is called from the time-limit thread when it stopped a run: the owner's loop
    should wake and call :meth:`expire`.
    """

    size: int
    config: ChildConfig
    on_log: Any = None
    on_kill: Callable[[], None] = lambda: None
    returned: list[ClaimedRun] = field(default_factory=list)
    stopping: bool = False  # the worker is stopping: see ask_to_stop
    _slots: list[_Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._board = Board(self.size, _MP)
        self._lock = threading.Lock()
        self._limits = TimeLimits(self._board, self._lock, lambda: self.on_kill())
        self._reaper = Reaper()

    def start(self) -> None:
        self._reaper.start()
        self._slots = [self._spawn(index) for index in range(self.size)]
        self._limits.start()
        # At exit multiprocessing sends its children SIGTERM, which run code may ignore, then
        # waits for them without a limit: a worker ended by an error it did not expect could
        # hang. Registered after multiprocessing's own handler, this one runs first.
        atexit.register(self.close)

    def _spawn(self, index: int) -> _Slot:
        parent, child = _MP.Pipe()
        process = _MP.Process(target=child_main, args=(child, self.config, self._board, index), daemon=True)
        # Until child_main moves it to a group of its own, the child is in the worker's process
        # group, which supervisord's stopasgroup and Ctrl-C signal as a whole: it starts with
        # those signals blocked, and discards what reached it meanwhile (the worker's to handle).
        # The resource tracker is started first: starting it unblocks them in this thread.
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._reaper.watch(process.pid or 0)
        child.close()
        return _Slot(process, parent)

    @property
    def free(self) -> int:
        """Children with nothing to do."""
        return sum(1 for slot in self._slots if slot.ready and not slot.runs)

    @property
    def queueable(self) -> int:
        """Children running one run, which could be sent the next."""
        return sum(1 for slot in self._slots if slot.ready and len(slot.runs) == 1)

    @property
    def busy(self) -> list[ClaimedRun]:
        """Every run held by a child: running, or queued behind a running one."""
        return [run for slot in self._slots for run in slot.runs]

    @property
    def running(self) -> int:
        return sum(1 for slot in self._slots if slot.runs)

    def submit(self, run: ClaimedRun, *, queue: bool = False) -> None:
        """Start ``run`` in a free child or, with ``queue``, behind the run of a busy one."""
        slot = next((s for s in self._slots if s.ready and not s.runs), None)
        if slot is None and queue:
            slot = min(
                (s for s in self._slots if s.ready and len(s.runs) == 1),
                key=lambda s: s.started,
                default=None,
            )
        if slot is None:
            raise ExecutorError("no executor can take a run")
        slot.runs.append(run)
        if len(slot.runs) == 1:
            slot.started = time.monotonic()
        slot.conn.send(run)
        self._limits.busy.set()

    def connections(self) -> list[Connection]:
        """The pipes worth waiting on: children running a run or still starting."""
        return [slot.conn for slot in self._slots if slot.runs or not slot.ready]

    def collect(self, ready: list[Any]) -> list[Outcome]:
        """Read what the ready children sent: log lines are forwarded, outcomes returned."""
        outcomes: list[Outcome] = []
        for index, slot in enumerate(self._slots):
            if slot.conn in ready:
                outcomes.extend(self._read(index, slot))
        return outcomes

    def _read(self, index: int, slot: _Slot) -> list[Outcome]:
        outcomes = []
        try:
            while slot.conn.poll():
                message = slot.conn.recv()
                kind = message[0]
                if kind == "log":
                    if self.on_log is not None:
                        self.on_log(message[1])
                elif kind == "ready":
                    slot.ready = True
                elif not _is_first(slot, message[1], message[2]):
                    log.warning("Outcome of a run its executor is not running, ignored",
                                message=kind, run_id=message[1], attempt=message[2])  # fmt: skip
                elif kind == "returned":  # told to stop before this queued run started
                    self._give_back_first(slot)
                else:
                    _, _, _, result_json, failure, finished = message
                    outcomes.append(self._finish(slot, finished, result_json=result_json, failure=failure))
                    if self._stop_doomed(index, slot):
                        return outcomes  # its child is gone; the slot has a new one
        except (EOFError, OSError):
            outcomes.extend(self._gone(index, slot))
        return outcomes

    def _gone(self, index: int, slot: _Slot) -> list[Outcome]:
        """The child of ``slot`` died: reap it, end its run (a timeout when the time-limit thread
        killed it for that run, else a crash), give its queued run back, start another child."""
        kill = self._forget(index, slot)
        self._retire(slot)  # what its run started ends with it
        reason = _exit_reason(slot.process)
        self._slots[index] = self._spawn(index)
        if not slot.runs:
            # A child that never started is fatal (its pipelines cannot be imported, say), but not
            # to a stopping worker: it has outcomes to write and needs no more children.
            if slot.ready or kill is not None or self.stopping:
                return []
            raise ExecutorError(f"an executor process failed to start: {reason}") from None
        run = slot.runs[0]
        if kill is not None and (kill.run_id, kill.attempt) != _key(run):
            # The run it was killed for had just ended and this one had started: not its fault.
            self._give_back(slot)
            return []
        failure = _timeout(run) if kill is not None else Failure(ErrorKind.CRASH, "ExecutorCrashed", reason)
        outcome = self._finish(slot, time.monotonic(), failure=failure)
        self._give_back(slot)
        return [outcome]

    def _forget(self, index: int, slot: _Slot) -> Kill | None:
        """Clear the slot's row before its child is reaped, so the time-limit thread never
        signals that pid again; returns the thread's kill of that child, if it made one."""
        with self._lock:
            self._board.ended(index)
            pid = slot.process.pid
            kill = next((k for k in self._limits.kills if k.pid == pid), None)
            self._limits.kills[:] = [k for k in self._limits.kills if k.pid != pid]
        return kill

    def _finish(
        self, slot: _Slot, finished: float, *, result_json: str | None = None, failure: Failure | None = None
    ) -> Outcome:
        """The first run of ``slot`` ended at ``finished``; the next one, if any, started then."""
        run = slot.runs.popleft()
        outcome = Outcome(run, max(0.0, finished - slot.started), result_json, failure)
        slot.started = finished
        return outcome

    def _stop_doomed(self, index: int, slot: _Slot) -> bool:
        """A queued run that was stopped while it waited has just started: stop it now. The run is
        no longer this worker's, so its outcome is dropped."""
        if not slot.runs or _key(slot.runs[0]) not in slot.doomed:
            return False
        self._kill(index, slot, Failure(ErrorKind.INTERRUPTED, "LeaseLost", "run is no longer owned"))
        return True

    def _give_back(self, slot: _Slot) -> None:
        """Runs queued in a child that is gone never started: the worker takes them back."""
        while slot.runs:
            self._give_back_first(slot)

    def _give_back_first(self, slot: _Slot) -> None:
        run = slot.runs.popleft()
        if _key(run) in slot.doomed:
            slot.doomed.remove(_key(run))
        else:
            self.returned.append(run)
        slot.started = time.monotonic()

    def expire(self) -> list[Outcome]:
        """The runs the time-limit thread stopped, each ended as a timeout (with whatever their
        children sent before they were killed)."""
        if not self._limits.kills:
            if not self.running:
                self._limits.busy.clear()
            return []
        with self._lock:
            pids = {kill.pid for kill in self._limits.kills}
        outcomes = []
        for index, slot in enumerate(self._slots):
            if slot.process.pid in pids:
                outcomes.extend(self._read(index, slot))
                if self._slots[index] is slot:  # no end of file yet: a grandchild holds the pipe
                    outcomes.extend(self._gone(index, slot))
        with self._lock:  # and kills of children the worker had replaced already
            self._limits.kills[:] = [kill for kill in self._limits.kills if kill.pid not in pids]
        return outcomes

    def stop(self, run_id: int, failure: Failure) -> ClaimedRun | None:
        """Stop one run at once (cancelled, or no longer ours); a queued one as soon as it starts."""
        for index, slot in enumerate(self._slots):
            for position, run in enumerate(slot.runs):
                if run.id != run_id:
                    continue
                if position == 0:
                    self._kill(index, slot, failure)
                else:
                    slot.doomed.add(_key(run))
                return run
        return None

    def stop_all(self, failure: Failure) -> list[Outcome]:
        return [self._kill(index, slot, failure) for index, slot in enumerate(self._slots) if slot.runs]

    def ask_to_stop(self) -> None:
        """Set ``ctx.should_stop`` in every busy child (cooperative; the hard stop comes later).

        A child told so returns its queued run without starting it.
        """
        self.stopping = True
        for slot in self._slots:
            if slot.runs and slot.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGUSR1)

    def _kill(self, index: int, slot: _Slot, failure: Failure) -> Outcome:
        kill = self._forget(index, slot)
        if kill is not None and slot.runs and (kill.run_id, kill.attempt) == _key(slot.runs[0]):
            failure = _timeout(slot.runs[0])  # the time limit came first
        self._retire(slot)
        outcome = self._finish(slot, time.monotonic(), failure=failure)
        self._give_back(slot)
        self._slots[index] = self._spawn(index)
        return outcome

    def _retire(self, slot: _Slot) -> None:
        """SIGKILL the child's process group (the child and anything its runs started, a crashed
        child's leftovers included), reap the child, and have the reaper forget the group. The
        group is killed before the child is reaped, so its number cannot belong to another."""
        kill_group(slot.process.pid)
        slot.process.join(timeout=5)
        self._reaper.forget(slot.process.pid)
        slot.conn.close()

    def close(self) -> None:
        atexit.unregister(self.close)
        self._limits.stop()
        for slot in self._slots:
            if not slot.runs:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
        # Idle children exit on their own (and close their connections cleanly) first; then each
        # group is killed, whatever a run left running in it, and the child reaped.
        deadline = time.monotonic() + 2
        running = [slot.process.sentinel for slot in self._slots]
        while running and time.monotonic() < deadline:
            ended = wait(running, max(0.0, deadline - time.monotonic()))
            running = [sentinel for sentinel in running if sentinel not in ended]
        for slot in self._slots:
            self._retire(slot)
        self._slots = []
        self._reaper.stop()


class ExecutorError(Exception):
    """An executor process cannot start (its pipelines fail to import, for instance)."""


def _timeout(run: ClaimedRun) -> Failure:
    return Failure(ErrorKind.TIMEOUT, "Timeout", f"exceeded its time limit of {run.timeout_s:g}s")


def _key(run: ClaimedRun) -> tuple[int, int]:
    return run.id, run.attempt


def _is_first(slot: _Slot, run_id: int, attempt: int) -> bool:
    """Whether ``run_id``/``attempt`` is the run ``slot``'s child is running (or about to start)."""
    return bool(slot.runs) and _key(slot.runs[0]) == (run_id, attempt)


def _exit_reason(process: Any) -> str:
    code = process.exitcode
    if code is None:
        return "executor process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"executor process was killed by {name}"
    return f"executor process exited with status {code}"
