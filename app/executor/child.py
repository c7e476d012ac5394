"""The child's side of the executors: the entry point of an executor process and how it runs a
pipeline, reports the outcome on its pipe, and keeps a run's forks off that pipe."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from app import context, logs, registry
from app.database import Database
from app.errors import FailNow, Snooze
from app.outcomes import Failure
from app.queries import ClaimedRun
from app.states import ErrorKind
from app.storable import storable_json
from app.time_limits import Board

# What a terminal or a process manager sends a whole process group to stop it.
GROUP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@dataclass(frozen=True)
class ChildConfig:
    """What a child needs to run pipelines: no settings object crosses the process boundary."""

    worker_id: str
    database: Database
    pipeline_modules: tuple[str, ...]
    log_level: str


_executor_pid = 0  # in an executor process, its pid: the one process that speaks on its pipe


def child_main(conn: Connection, config: ChildConfig, board: Board, index: int) -> None:
    """Entry point of an executor process: run what the worker sends until told to stop."""
    global _executor_pid
    os.setpgrp()
    for sig in GROUP_SIGNALS:  # blocked since the spawn (see ExecutorPool._spawn): ignoring a
        signal.signal(sig, signal.SIG_IGN)  # pending one discards it, as it was the worker's
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)
    _die_with_parent()
    _executor_pid = os.getpid()
    os.register_at_fork(after_in_child=conn.close)  # a process the run forks never holds the pipe
    # Run code, and what it starts, get SIGINT and SIGTERM at their defaults: an ignored signal
    # stays ignored across exec, and a run's terminate() of its own subprocess did nothing. In its
    # own process group, this process is not reached by a signal to the worker's group anyway.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    send_lock = threading.Lock()

    def send(message: Any) -> None:
        if os.getpid() != _executor_pid:  # a process the run forked, logging: never on the pipe
            return
        with send_lock:
            conn.send(message)

    logs.configure_child(config.log_level, lambda event: send(("log", event)))
    pipelines = registry.discover(config.pipeline_modules)
    runtime = context.ChildRuntime(config.worker_id, config.database)
    signal.signal(signal.SIGUSR1, lambda *_: runtime.request_stop())
    send(("ready",))
    for run in _receive(conn):
        if runtime.draining:  # the worker is stopping: a run queued here goes back untouched
            send(("returned", run.id, run.attempt))
            continue
        board.started(index, run.id, run.attempt, time.monotonic() + run.timeout_s)
        result_json, failure = _execute(run, pipelines, runtime)
        board.ended(index)
        send(("done", run.id, run.attempt, result_json, failure, time.monotonic()))


def _receive(conn: Connection) -> Iterator[ClaimedRun]:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        yield message


def _execute(
    run: ClaimedRun, pipelines: dict[str, Any], runtime: context.ChildRuntime
) -> tuple[str | None, Failure | None]:
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
        result = _call(pipeline.fn, context.Context(run, runtime, params), params)
    except Snooze as exc:
        return None, Failure(ErrorKind.ERROR, "Snooze", str(exc), snooze=exc.delay.total_seconds())
    except FailNow as exc:
        return None, _failure(exc, fail_now=True)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from pipeline code included
        return None, _failure(exc, fail_now=False)
    finally:
        runtime.reset()
    try:
        return storable_json(result), None
    except (TypeError, ValueError, RecursionError) as exc:
        # A RecursionError (a value that contains itself, or nested past the interpreter's limit)
        # fails the same way on every attempt: the run fails now, with the reason.
        reason = "it contains itself or is nested too deeply" if isinstance(exc, RecursionError) else exc
        message = f"the pipeline returned a value that is not JSON: {reason}"
        return None, Failure(ErrorKind.INVALID, "ResultNotJSON", message, fail_now=True)


def _call(fn: Callable[[Any, Any], Any], ctx: Any, params: Any) -> Any:
    """The pipeline's code. A process it forked that comes back here (it returned, raised or
    called ``sys.exit``) ends now, as a program of its own would, and never reaches the code that
    writes the board and sends outcomes."""
    try:
        result = fn(ctx, params)
    except BaseException as exc:
        if os.getpid() != _executor_pid:
            _end_fork(exc)
        raise
    if os.getpid() != _executor_pid:
        _end_fork(None)
    return result


def _end_fork(exc: BaseException | None) -> NoReturn:
    """Exit a forked process with the status Python gives a program that ended so."""
    status = 0
    if isinstance(exc, SystemExit):
        status = _exit_status(exc.code)
    elif exc is not None:
        traceback.print_exception(exc)
        status = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


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
