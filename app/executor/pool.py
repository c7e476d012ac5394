"""The worker's side of the executors: a pool of executor processes forked by the fork server, each
holding the runs handed to it (the first running, the rest queued behind it in order); a run past
its time or memory limit has its executor's process group killed and the executor replaced (see
the package's docstring).

Over 400 lines on purpose: a slot's state (its runs, what its child was told, whether the child is
still the current one) changes in nearly every method here, and split across modules those rules
would be read in pieces."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import structlog

from app.executor import wire
from app.executor.child import ChildConfig
from app.executor.forkserver import ForkFailed, ForkServer, ForkServerError
from app.executor.watchdog import Board, Kill, Watchdog, kill_group
from app.outcomes import Failure
from app.queries import ClaimedRun
from app.reaper import Reaper
from app.sizes import format_size
from app.states import ErrorKind

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
    index: int
    pid: int
    sock: socket.socket
    reader: wire.Reader
    ready: bool = False  # the child has set itself up
    runs: deque[ClaimedRun] = field(default_factory=deque)  # handed over; the first is running
    started: float = 0.0  # when the first of ``runs`` started (for its duration)
    doomed: set[tuple[int, int]] = field(default_factory=set)  # (id, attempt) of queued runs to drop
    outbox: bytearray = field(default_factory=bytearray)  # what the child has not taken yet
    closed: bool = False  # torn down: its pid may belong to another process now


@dataclass
class ExecutorPool:
    """``size`` executor processes; the worker hands them runs and collects their outcomes.

    Runs are handed over in batches, up to ``depth`` per executor (``hand_over``): an executor
    starts the next the moment the last ends, without waiting for the worker to notice, and
    sends each outcome as its run ends. A run's time limit counts from its own start, as the
    executor writes it on the board. Runs an executor held but had not started when it was
    killed, crashed, retired or was told to stop go to ``returned``, untouched, for the worker to
    take back.

    ``on_kill`` is called from the watchdog's thread when it stopped a run: the owner's loop
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
        self._board = Board(self.size)
        self._lock = threading.Lock()
        self._watchdog = Watchdog(self._board, self._lock, lambda: self.on_kill())
        self._reaper = Reaper()
        self._server = ForkServer(self.config, self._board)
        self._pending: list[Outcome] = []  # read outside collect, returned by the next one

    def start(self) -> None:
        self._reaper.start()
        try:
            unsafe = self._server.start()
        except ForkServerError as exc:
            raise ExecutorError(f"an executor process failed to start: {exc}") from None
        if unsafe:
            log.warning(
                "Each executor loads the pipelines: the fork server cannot do it for them", reason=unsafe
            )
        self._slots = [self._spawn(index) for index in range(self.size)]
        self._watchdog.start()
        # A worker ended by an error it did not expect must not leave executors behind.
        atexit.register(self.close)

    def _spawn(self, index: int) -> _Slot:
        """A new executor for slot ``index``; a fork server that died (killed: its executors died
        with it) is replaced once."""
        for attempt in (1, 2):
            ours, theirs = socket.socketpair()
            try:
                pid = self._server.fork(index, theirs)
            except ForkServerError as exc:
                ours.close()
                if attempt == 2:
                    raise ExecutorError(f"an executor process failed to start: {exc}") from None
                log.error("The fork server stopped; starting another", error=str(exc))
                self._restart_server()
                continue
            except ForkFailed as exc:
                ours.close()
                raise ExecutorError(f"an executor process failed to start: {exc}") from None
            finally:
                theirs.close()
            ours.setblocking(False)
            self._reaper.watch(pid)
            return _Slot(index, pid, ours, wire.Reader(ours))
        raise AssertionError("unreachable")

    def _restart_server(self) -> None:
        self._server.close()
        try:
            self._server.start()
        except ForkServerError as exc:
            raise ExecutorError(f"an executor process failed to start: {exc}") from None

    # --- what the worker reads -------------------------------------------------------------

    @property
    def free(self) -> int:
        """Executors with nothing to do."""
        return sum(1 for slot in self._slots if slot.ready and not slot.runs)

    def room(self, depth: int) -> int:
        """How many more runs the executors take with at most ``depth`` each."""
        return sum(max(0, depth - len(slot.runs)) for slot in self._slots if slot.ready)

    @property
    def busy(self) -> list[ClaimedRun]:
        """Every run held by an executor: running, or queued behind the running one."""
        return [run for slot in self._slots for run in slot.runs]

    @property
    def held(self) -> int:
        """How many runs the executors hold (``len(busy)``, without building the list)."""
        return sum(len(slot.runs) for slot in self._slots)

    @property
    def unreported(self) -> bool:
        """Whether outcomes read outside ``collect`` wait for the next one."""
        return bool(self._pending)

    @property
    def running(self) -> int:
        return sum(1 for slot in self._slots if slot.runs)

    @property
    def pids(self) -> list[int]:
        """The executors' pids, and the fork server's last."""
        server = self._server.pid
        return self.executor_pids + ([server] if server else [])

    @property
    def executor_pids(self) -> list[int]:
        return [slot.pid for slot in self._slots]

    @property
    def server_pid(self) -> int | None:
        return self._server.pid

    def connections(self) -> list[socket.socket]:
        """The sockets to wait on: every executor's (an idle one speaks only to say it retires)."""
        return [slot.sock for slot in self._slots]

    # --- handing runs over -----------------------------------------------------------------

    def hand_over(
        self, runs: deque[ClaimedRun], depth: int = 1, quick: Collection[str] = ()
    ) -> list[ClaimedRun]:
        """Hand ``runs`` to the executors, in order, the least busy first, up to ``depth`` each,
        and queued only behind runs of ``quick`` pipelines (nothing waits behind a run that may
        be long); returns those handed over, taken from the front of ``runs``."""
        slots = [slot for slot in self._slots if slot.ready and _open(slot, depth, quick)]
        if not slots or not runs:
            return []
        batches: dict[int, list[ClaimedRun]] = {}
        handed = []
        while runs and slots:
            run = runs.popleft()
            slot = min(slots, key=lambda s: len(s.runs))
            if slot.runs and run.pipeline not in quick and any(not s.runs for s in slots):
                slot = next(s for s in slots if not s.runs)  # a run that may be long starts at once
            if not slot.runs:
                slot.started = time.monotonic()
            slot.runs.append(run)
            batches.setdefault(slot.index, []).append(run)
            handed.append(run)
            if not _open(slot, depth, quick):
                slots.remove(slot)
        for index, batch in batches.items():
            self._post(self._slots[index], ("runs", [tuple(run) for run in batch]))
        self._watchdog.busy.set()
        return handed

    def _post(self, slot: _Slot, message: Any) -> None:
        slot.outbox += wire.encode(message)
        self._flush(slot)

    def _flush(self, slot: _Slot) -> None:
        """Send what the child has room for, never blocking: the rest goes when it has read
        (a busy child reads between runs; one with nothing queued is waiting to read)."""
        if not slot.outbox:
            return
        try:
            sent = slot.sock.send(slot.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:  # the child is gone: its end of file says so on the next read
            return
        del slot.outbox[:sent]
        self._board.post(slot.index)

    # --- what comes back -------------------------------------------------------------------

    def collect(self, ready: list[Any]) -> list[Outcome]:
        """Read what the ready executors sent: log lines are forwarded, outcomes returned (with
        those read earlier, when a run was stopped)."""
        outcomes, self._pending = self._pending, []
        for slot in list(self._slots):
            self._flush(slot)
            if slot.sock in ready:
                outcomes.extend(self._read(slot))
        return outcomes

    def _read(self, slot: _Slot) -> list[Outcome]:
        try:
            messages = slot.reader.read()
        except (EOFError, OSError):
            return self._gone(slot)
        outcomes = self._handle(slot, messages)
        if self._current(slot) and slot.runs and _key(slot.runs[0]) in slot.doomed:
            # It started before its child read that it should not: stop it.
            outcomes.extend(self._stop_doomed(slot))
        return outcomes

    def _drain(self, slot: _Slot) -> list[Outcome]:
        """What the child sent that is not read yet, without waiting: read before the child is
        killed, or the runs that ended after the one killed would be given back and run again."""
        try:
            messages = slot.reader.read_ready()
        except (EOFError, OSError):
            return self._gone(slot)
        return self._handle(slot, messages)

    def _handle(self, slot: _Slot, messages: list[Any]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for message in messages:
            if not self._current(slot):
                break  # the child was replaced while its messages were read: the rest is void
            kind = message[0]
            if kind == "log":
                if self.on_log is not None:
                    self.on_log(message[1])
            elif kind == "ready":
                slot.ready = True
            elif kind == "done":
                outcomes.extend(self._done(slot, *message[1:]))
            elif kind in ("returned", "skipped", "retiring"):
                self._taken_back(slot, message[1], dropped=kind == "skipped")
                if kind == "retiring":
                    log.info("Executor replaced", pid=slot.pid, reason=message[2])
                    self._end(slot)
        return outcomes

    def _current(self, slot: _Slot) -> bool:
        return self._slots[slot.index] is slot

    def _done(
        self,
        slot: _Slot,
        run_id: int,
        attempt: int,
        result_json: str | None,
        failure: Failure | None,
        started: float,
        finished: float,
    ) -> list[Outcome]:
        if not slot.runs or _key(slot.runs[0]) != (run_id, attempt):
            log.warning(
                "Outcome of a run its executor is not running, ignored", run_id=run_id, attempt=attempt
            )
            return []
        run = slot.runs.popleft()
        slot.started = finished
        if slot.doomed and _key(run) in slot.doomed:  # no longer this worker's: nothing to report
            slot.doomed.discard(_key(run))
            log.warning(
                "Run ended as it was stopped: no longer owned by this worker, its outcome dropped",
                run_id=run_id,
                attempt=attempt,
            )
            return []
        return [Outcome(run, max(0.0, finished - started), result_json, failure)]

    def _taken_back(self, slot: _Slot, keys: list[tuple[int, int]], *, dropped: bool) -> None:
        """Runs the child did not start (told to stop, told to skip them, or retiring): back to
        the worker, except those no longer its own."""
        back = {tuple(key) for key in keys}
        for run in [run for run in slot.runs if _key(run) in back]:
            slot.runs.remove(run)
            if _key(run) in slot.doomed:
                slot.doomed.discard(_key(run))
            elif not dropped:
                self.returned.append(run)

    def _give_back(self, slot: _Slot) -> None:
        """Runs queued in a child that is gone never started: the worker takes them back."""
        self._taken_back(slot, [_key(run) for run in slot.runs], dropped=False)

    def expire(self) -> list[Outcome]:
        """The runs the watchdog stopped, each ended as a timeout or a memory kill (with whatever
        their executors sent before they were killed)."""
        if not self._watchdog.kills:
            if not self.running:
                self._watchdog.busy.clear()
            return []
        with self._lock:
            pids = {kill.pid for kill in self._watchdog.kills}
        outcomes = []
        for slot in list(self._slots):
            if slot.pid in pids:
                outcomes.extend(self._drain(slot))
                if self._current(slot):  # no end of file yet: it is on its way
                    outcomes.extend(self._gone(slot))
        with self._lock:  # and kills of children the worker had replaced already
            self._watchdog.kills[:] = [kill for kill in self._watchdog.kills if kill.pid not in pids]
        return outcomes

    # --- stopping runs ---------------------------------------------------------------------

    def stop(self, run_id: int) -> ClaimedRun | None:
        """Stop one run at once (cancelled, or no longer ours): a queued one never starts, a
        running one is killed. Its outcome is dropped, also when it had ended unread (the worker
        was busy, or frozen): it is not the worker's to write. Those of the runs that ended
        meanwhile are returned by the next ``collect``. Returns the run if it had not ended."""
        slot = next((s for s in self._slots if any(run.id == run_id for run in s.runs)), None)
        if slot is None:
            return None
        run = next(run for run in slot.runs if run.id == run_id)
        slot.doomed.add(_key(run))
        self._pending.extend(self._drain(slot))  # what ended before, this run perhaps
        if not self._current(slot) or run not in slot.runs:
            return None
        if slot.runs[0] is not run:
            self._post(slot, ("skip", [_key(run)]))
        else:
            self._pending.extend(self._stop_doomed(slot))
        return run

    def _stop_doomed(self, slot: _Slot) -> list[Outcome]:
        """Kill the child running a run no longer this worker's, once what it sent is read (the
        run may have ended meanwhile, and runs after it too)."""
        outcomes = self._drain(slot)
        if self._current(slot) and slot.runs and _key(slot.runs[0]) in slot.doomed:
            self._end(slot, LEASE_LOST)  # its outcome is not the worker's to report
        return outcomes

    def stop_all(self, failure: Failure) -> list[Outcome]:
        """Kill every child running a run (the worker's grace is over); the runs killed end with
        ``failure``. Outcomes of runs that ended before are returned by the next ``collect``."""
        killed = []
        for slot in list(self._slots):
            self._pending.extend(self._drain(slot))
            if self._current(slot) and slot.runs:
                killed.extend(self._end(slot, failure))
        return killed

    def ask_to_stop(self) -> None:
        """Set ``ctx.should_stop`` in every busy child (cooperative; the hard stop comes later).

        A child told so gives back its queued runs without starting them.
        """
        self.stopping = True
        for slot in self._slots:
            if slot.runs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGUSR1)

    # --- an executor's end ------------------------------------------------------------------

    def _gone(self, slot: _Slot) -> list[Outcome]:
        """The child of ``slot`` died (end of file on its socket): its run ends as a timeout or a
        memory kill when the watchdog killed it for that run, else as a crash."""
        if not slot.runs and not (slot.ready or self.stopping or self._killed_by_watchdog(slot)):
            # A child that never started is fatal (its pipelines cannot be imported, say), but not
            # to a stopping worker: it has outcomes to write and needs no more children.
            reason, _ = self._teardown(slot)
            raise ExecutorError(f"an executor process failed to start: {reason}") from None
        return self._end(slot, CRASHED)

    def _killed_by_watchdog(self, slot: _Slot) -> bool:
        with self._lock:
            return any(kill.pid == slot.pid for kill in self._watchdog.kills)

    def _end(self, slot: _Slot, failure: Failure | None = None) -> list[Outcome]:
        """Tear the child of ``slot`` down and start another in its place. Its running run, if
        any, ends with ``failure`` (no outcome without one), unless the watchdog killed it for
        that run: then as a timeout or a memory kill. ``CRASHED`` says how the child ended. The
        runs queued behind go back to the worker."""
        reason, kill = self._teardown(slot)
        outcomes = []
        if slot.runs and failure is not None:
            run = slot.runs[0]
            if _key(run) in slot.doomed:  # no longer this worker's: nothing to report
                slot.doomed.discard(_key(run))
                slot.runs.popleft()
            elif kill is not None and (kill.run_id, kill.attempt) == _key(run):
                outcomes.append(self._finish(slot, _killed(run, kill)))
            elif kill is None or failure is not CRASHED:
                if failure is CRASHED:
                    failure = Failure(ErrorKind.CRASH, "ExecutorCrashed", reason)
                outcomes.append(self._finish(slot, failure))
            # else: killed for the run before it, which had just ended; this one had not started
        self._give_back(slot)
        try:
            self._slots[slot.index] = self._spawn(slot.index)
        except ExecutorError:
            self._pending.extend(outcomes)  # still the worker's to write
            raise
        return outcomes

    def _teardown(self, slot: _Slot) -> tuple[str, Kill | None]:
        """SIGKILL the child's process group (the child and anything its runs started, a crashed
        child's leftovers included), clear its row on the board, have it reaped, and have the
        reaper forget the group; how the child ended, and the watchdog's kill of it, if it made
        one. The group is killed before the child is reaped, so its number cannot belong to
        another; the row is cleared after the kill, so the child cannot write it again."""
        if slot.closed:
            return "executor process was already gone", None
        slot.closed = True
        kill_group(slot.pid)
        with self._lock:
            self._board.ended(slot.index)
            kill = next((k for k in self._watchdog.kills if k.pid == slot.pid), None)
            self._watchdog.kills[:] = [k for k in self._watchdog.kills if k.pid != slot.pid]
        try:
            reason = _exit_reason(self._server.reap(slot.pid))
        except ForkServerError:  # the server is gone, and its children died with it
            reason = "executor process ended with its fork server"
        self._reaper.forget(slot.pid)
        slot.sock.close()
        return reason, kill

    def _finish(self, slot: _Slot, failure: Failure) -> Outcome:
        run = slot.runs.popleft()
        return Outcome(run, max(0.0, time.monotonic() - slot.started), None, failure)

    def close(self) -> None:
        atexit.unregister(self.close)
        self._watchdog.stop()
        idle = [slot for slot in self._slots if not slot.runs and not slot.closed]
        for slot in idle:
            with contextlib.suppress(OSError):
                slot.sock.setblocking(True)
                slot.sock.sendall(wire.encode(None))
        # Idle children exit on their own first (end of file on their socket); then each group
        # is killed, whatever a run left running in it, and the child reaped.
        deadline = time.monotonic() + 2
        waiting = [slot.sock for slot in idle]
        while waiting and time.monotonic() < deadline:
            ended = wait(waiting, max(0.0, deadline - time.monotonic()))
            waiting = [sock for sock in waiting if not (sock in ended and _closed(sock))]
        for slot in self._slots:
            self._teardown(slot)
        self._slots = []
        self._server.close()
        self._board.close()
        self._reaper.stop()


# How a run ends when its child is stopped by the worker or dies.
LEASE_LOST = Failure(ErrorKind.INTERRUPTED, "LeaseLost", "run is no longer owned")
CRASHED = Failure(ErrorKind.CRASH, "ExecutorCrashed", "executor process died")  # with its reason


class ExecutorError(Exception):
    """An executor process cannot start (its pipelines fail to import, for instance)."""


def _killed(run: ClaimedRun, kill: Kill) -> Failure:
    if kill.memory_limit:
        message = (
            f"exceeded its memory limit of {format_size(kill.memory_limit)}"
            f" (reached {format_size(kill.memory)})"
        )
        return Failure(ErrorKind.MEMORY, "MemoryLimit", message)
    return Failure(ErrorKind.TIMEOUT, "Timeout", f"exceeded its time limit of {run.timeout_s:g}s")


def _open(slot: _Slot, depth: int, quick: Collection[str]) -> bool:
    """Whether another run may be handed to ``slot``: it holds fewer than ``depth``, and the last
    of them (the one the next would wait for) is of a quick pipeline. Nothing is queued behind a
    run of a pipeline that is not quick, so such a run is always the last."""
    return not slot.runs or (len(slot.runs) < depth and slot.runs[-1].pipeline in quick)


def _closed(sock: socket.socket) -> bool:
    """Whether the other end of ``sock``, ready to read, has closed it."""
    try:
        return not sock.recv(1 << 16)
    except BlockingIOError:
        return False
    except OSError:
        return True


def _key(run: ClaimedRun) -> tuple[int, int]:
    return run.id, run.attempt


def _exit_reason(status: int | None) -> str:
    if status is None:
        return "executor process stopped answering"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"executor process was killed by {name}"
    return f"executor process exited with status {code}"
