"""Executor processes: where pipeline code runs, under a hard time limit.

Choice: a pool of pre-started child processes, one run at a time each, talking to the worker over
a ``multiprocessing`` Pipe. A run past its limit has its child's whole process group killed with
SIGKILL and the child replaced, so code stuck in ``time.sleep``, a blocking socket or a C loop stops
for certain, and so do processes it spawned. A child that crashes (segfault, ``os._exit``, out of
memory) fails only the run it held. A fork per run (RQ) was measured at ~360 runs/s on 2 cores.
Measured by ``python -m bench``: a no-op run's round trip through this pool (pickle, pipe, child,
outcome back) costs 140-160 µs on a loaded 2-core machine, about 30 µs on a quiet one; see
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
    run: ClaimedRun | None = None
    started: float = 0.0
    deadline: float = 0.0


@dataclass
class ExecutorPool:
    """``size`` child processes; the worker submits runs and collects their outcomes."""

    size: int
    config: ChildConfig
    on_log: Any = None
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
        return sum(1 for slot in self._slots if slot.ready and slot.run is None)

    @property
    def busy(self) -> list[ClaimedRun]:
        return [slot.run for slot in self._slots if slot.run is not None]

    def submit(self, run: ClaimedRun) -> None:
        slot = next(s for s in self._slots if s.ready and s.run is None)
        slot.run, slot.started = run, time.monotonic()
        slot.deadline = slot.started + run.timeout_s
        slot.conn.send(run)

    def connections(self) -> list[Connection]:
        """The pipes worth waiting on: children running a run or still starting."""
        return [slot.conn for slot in self._slots if slot.run is not None or not slot.ready]

    def next_deadline(self) -> float | None:
        deadlines = [slot.deadline for slot in self._slots if slot.run is not None]
        return min(deadlines, default=None)

    def collect(self, ready: list[Any]) -> list[Outcome]:
        """Read what the ready children sent: log lines are forwarded, outcomes returned."""
        outcomes = []
        for index, slot in enumerate(self._slots):
            if slot.conn not in ready:
                continue
            outcome = self._read(index, slot)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _read(self, index: int, slot: _Slot) -> Outcome | None:
        try:
            while slot.conn.poll():
                message = slot.conn.recv()
                if message[0] == "log":
                    if self.on_log is not None:
                        self.on_log(message[1])
                elif message[0] == "ready":
                    slot.ready = True
                else:
                    _, result_json, failure = message
                    return self._finish(slot, result_json=result_json, failure=failure)
        except (EOFError, OSError):
            slot.process.join(timeout=5)
            reason = _exit_reason(slot.process)
            self._slots[index] = self._spawn()
            if slot.run is None:
                raise ExecutorError(f"an executor process failed to start: {reason}") from None
            return self._finish(slot, failure=Failure(ErrorKind.CRASH, "ExecutorCrashed", reason))
        return None

    def _finish(
        self, slot: _Slot, *, result_json: str | None = None, failure: Failure | None = None
    ) -> Outcome:
        assert slot.run is not None
        outcome = Outcome(slot.run, time.monotonic() - slot.started, result_json, failure)
        slot.run = None
        return outcome

    def expire(self, now: float) -> list[Outcome]:
        """Stop every run past its deadline; each ends as a timeout."""
        outcomes = []
        for index, slot in enumerate(self._slots):
            if slot.run is not None and now >= slot.deadline:
                limit = f"{slot.run.timeout_s:g}s"
                failure = Failure(ErrorKind.TIMEOUT, "Timeout", f"exceeded its time limit of {limit}")
                outcomes.append(self._kill(index, slot, failure))
        return outcomes

    def stop(self, run_id: int, failure: Failure) -> Outcome | None:
        """Stop one run at once (cancelled, or no longer ours)."""
        for index, slot in enumerate(self._slots):
            if slot.run is not None and slot.run.id == run_id:
                return self._kill(index, slot, failure)
        return None

    def stop_all(self, failure: Failure) -> list[Outcome]:
        return [
            self._kill(index, slot, failure) for index, slot in enumerate(self._slots) if slot.run is not None
        ]

    def ask_to_stop(self) -> None:
        """Set ``ctx.should_stop`` in every busy child (cooperative; the hard stop comes later)."""
        for slot in self._slots:
            if slot.run is not None and slot.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGUSR1)

    def _kill(self, index: int, slot: _Slot, failure: Failure) -> Outcome:
        _kill_group(slot.process)
        outcome = self._finish(slot, failure=failure)
        slot.conn.close()
        self._slots[index] = self._spawn()
        return outcome

    def close(self) -> None:
        for slot in self._slots:
            if slot.run is None:
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
        result_json, failure = _execute(run, pipelines, runtime)
        send(("done", result_json, failure))


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
