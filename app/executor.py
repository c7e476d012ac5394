"""Executor processes: where pipeline code runs, under a hard time limit.

Choice: a pool of pre-started child processes, one run at a time each, talking to the worker over
a ``multiprocessing`` Pipe. A run past its limit has its child's whole process group killed with
SIGKILL and the child replaced, so code stuck in ``time.sleep``, a blocking socket or a C loop stops
for certain, and so do processes it spawned. A child that crashes (segfault, ``os._exit``, out of
memory) fails only the run it held. A fork per run (RQ) was measured at ~360 runs/s on 2 cores.
Measured by ``python -m bench``: a no-op run's round trip through this pool (pickle, pipe, child,
outcome back) costs 83-103 µs on a quiet 2-core machine, 140-160 µs on a loaded one; see
docs/performance.md.

Children are started with ``spawn`` (never ``fork``: the worker holds threads and connections),
sit in their own process group, ignore SIGINT/SIGTERM (the worker decides their fate on shutdown)
and die with their worker (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from app.errors import FailNow, LeaseLost, Snooze
from app.outcomes import Failure
from app.queries import ClaimedRun
from app.states import ErrorKind

_MP = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class ChildConfig:
    """What a child needs to run pipelines: no settings object crosses the process boundary."""

    worker_id: str
    database_url: str
    pipeline_modules: tuple[str, ...]
    log_level: str


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
    ready: bool = False  # the child has loaded its pipelines; time limits start from here
    runs: deque[ClaimedRun] = field(default_factory=deque)  # sent to the child; the first is running
    started: float = 0.0  # when the first of ``runs`` started
    deadline: float = 0.0
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
    """

    size: int
    config: ChildConfig
    on_log: Any = None
    returned: list[ClaimedRun] = field(default_factory=list)
    _slots: list[_Slot] = field(default_factory=list)

    def start(self) -> None:
        self._slots = [self._spawn() for _ in range(self.size)]

    def _spawn(self) -> _Slot:
        parent, child = _MP.Pipe()
        process = _MP.Process(target=child_main, args=(child, self.config), daemon=True)
        process.start()
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
            _started(slot, time.monotonic())
        slot.conn.send(run)

    def connections(self) -> list[Connection]:
        """The pipes worth waiting on: children running a run or still starting."""
        return [slot.conn for slot in self._slots if slot.runs or not slot.ready]

    def next_deadline(self) -> float | None:
        deadlines = [slot.deadline for slot in self._slots if slot.runs]
        return min(deadlines, default=None)

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
                elif kind == "returned":  # told to stop before this queued run started
                    self._give_back_first(slot)
                else:
                    _, result_json, failure, finished = message
                    outcomes.append(self._finish(slot, finished, result_json=result_json, failure=failure))
                    if self._stop_doomed(index, slot):
                        return outcomes  # its child is gone; the slot has a new one
        except (EOFError, OSError):
            slot.process.join(timeout=5)
            reason = _exit_reason(slot.process)
            self._slots[index] = self._spawn()
            if not slot.runs:
                if slot.ready:
                    return outcomes
                raise ExecutorError(f"an executor process failed to start: {reason}") from None
            crash = Failure(ErrorKind.CRASH, "ExecutorCrashed", reason)
            outcomes.append(self._finish(slot, time.monotonic(), failure=crash))
            self._give_back(slot)
        return outcomes

    def _finish(
        self, slot: _Slot, finished: float, *, result_json: str | None = None, failure: Failure | None = None
    ) -> Outcome:
        """The first run of ``slot`` ended at ``finished``; the next one, if any, started then."""
        run = slot.runs.popleft()
        outcome = Outcome(run, max(0.0, finished - slot.started), result_json, failure)
        _started(slot, finished)
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
        _started(slot, time.monotonic())

    def expire(self, now: float) -> list[Outcome]:
        """Stop every run past its deadline; each ends as a timeout."""
        outcomes = []
        for index in range(len(self._slots)):
            if not self._slots[index].runs or now < self._slots[index].deadline:
                continue
            # It may have ended just now, and its queued run started: read that first.
            outcomes.extend(self._read(index, self._slots[index]))
            slot = self._slots[index]
            run = slot.run
            if run is not None and now >= slot.deadline:
                limit = f"{run.timeout_s:g}s"
                failure = Failure(ErrorKind.TIMEOUT, "Timeout", f"exceeded its time limit of {limit}")
                outcomes.append(self._kill(index, slot, failure))
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
        for slot in self._slots:
            if slot.runs and slot.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGUSR1)

    def _kill(self, index: int, slot: _Slot, failure: Failure) -> Outcome:
        _kill_group(slot.process)
        outcome = self._finish(slot, time.monotonic(), failure=failure)
        self._give_back(slot)
        slot.conn.close()
        self._slots[index] = self._spawn()
        return outcome

    def close(self) -> None:
        for slot in self._slots:
            if not slot.runs:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
        deadline = time.monotonic() + 2
        for slot in self._slots:
            slot.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                _kill_group(slot.process)
            slot.conn.close()
        self._slots = []


class ExecutorError(Exception):
    """An executor process cannot start (its pipelines fail to import, for instance)."""


def _started(slot: _Slot, at: float) -> None:
    """The first of the slot's runs (if any) started ``at``: its time limit counts from then."""
    slot.started = at
    if slot.runs:
        slot.deadline = at + slot.runs[0].timeout_s


def _key(run: ClaimedRun) -> tuple[int, int]:
    return run.id, run.attempt


def _kill_group(process: Any) -> None:
    """SIGKILL the child's process group (the child and anything it spawned)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.join(timeout=5)


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


# --- the child side ------------------------------------------------------------------------------


def child_main(conn: Connection, config: ChildConfig) -> None:
    """Entry point of an executor process: run what the worker sends until told to stop."""
    os.setpgrp()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from app import context, logs, registry

    send_lock = threading.Lock()

    def send(message: Any) -> None:
        with send_lock:
            conn.send(message)

    logs.configure_child(config.log_level, lambda event: send(("log", event)))
    pipelines = registry.discover(config.pipeline_modules)
    runtime = context.ChildRuntime(config.worker_id, config.database_url)
    signal.signal(signal.SIGUSR1, lambda *_: runtime.request_stop())
    send(("ready",))
    for run in _receive(conn):
        if runtime.draining:  # the worker is stopping: a run queued here goes back untouched
            send(("returned",))
            continue
        result_json, failure = _execute(run, pipelines, runtime)
        send(("done", result_json, failure, time.monotonic()))


def _receive(conn: Connection) -> Iterator[ClaimedRun]:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        yield message


def _execute(run: ClaimedRun, pipelines: dict[str, Any], runtime: Any) -> tuple[str | None, Failure | None]:
    from app.context import Context
    from app.queries import to_json

    pipeline = pipelines.get(run.pipeline)
    if pipeline is None:
        message = f"pipeline {run.pipeline!r} is not loaded in this worker"
        return None, Failure(ErrorKind.INVALID, "UnknownPipeline", message, fail_now=True)
    try:
        params = json.loads(run.params_json)
    except (ValueError, RecursionError) as exc:
        message = f"params cannot be decoded: {exc}"
        return None, Failure(ErrorKind.INVALID, "BadParams", message, fail_now=True)
    try:
        result = pipeline.fn(Context(run, runtime, params), params)
    except Snooze as exc:
        return None, Failure(ErrorKind.ERROR, "Snooze", str(exc), snooze=exc.delay.total_seconds())
    except FailNow as exc:
        return None, _failure(exc, fail_now=True)
    except LeaseLost as exc:
        return None, _failure(exc, fail_now=False)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from pipeline code included
        return None, _failure(exc, fail_now=False)
    finally:
        runtime.reset()
    try:
        return to_json(result), None
    except (TypeError, ValueError) as exc:
        message = f"the pipeline returned a value that is not JSON: {exc}"
        return None, Failure(ErrorKind.INVALID, "ResultNotJSON", message, fail_now=True)


def _failure(exc: BaseException, *, fail_now: bool) -> Failure:
    return Failure(
        ErrorKind.ERROR,
        type(exc).__name__,
        str(exc) or type(exc).__name__,
        "".join(traceback.format_exception(exc)),
        fail_now=fail_now,
    )


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the worker) dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
