"""The child's side of the executors: an executor process, forked by the fork server, runs the runs
its worker hands it, in order, and reports each one's outcome the moment it ends.

The worker hands runs over in batches (one message for many short runs); the child keeps them in
order and starts the next as the last ends, without waiting for the worker. Between runs it looks
at its mail count on the board: when the worker has sent something (more runs, runs to skip), it
reads it then, without a system call otherwise. It ends when the worker closes its socket or says
so, and retires on its own (EXECUTOR_RECYCLE_AFTER, EXECUTOR_RECYCLE_MEMORY) between runs, giving
back the runs it had not started.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from app import context, logs, registry
from app.database import Database
from app.errors import FailNow, Snooze
from app.executor import forkserver, wire
from app.executor.watchdog import Board
from app.outcomes import Failure
from app.queries import ClaimedRun
from app.states import ErrorKind
from app.storable import storable_json


@dataclass(frozen=True)
class ChildConfig:
    """What a child needs to run pipelines: no settings object crosses the process boundary.

    ``max_memory``: the memory limit of a run whose pipeline sets none (bytes, 0: none);
    ``recycle_after``, ``recycle_memory``: an executor retires between runs after that many runs,
    or once its resident size has reached that many bytes (0: never)."""

    worker_id: str
    database: Database
    pipeline_modules: tuple[str, ...]
    log_level: str
    max_memory: int = 0
    recycle_after: int = 0
    recycle_memory: int = 0


_executor_pid = 0  # in an executor process, its pid: the one process that speaks on its socket


def child_main(
    sock: socket.socket, config: ChildConfig, board: Board, index: int, pipelines: dict[str, Any] | None
) -> int:
    """Entry point of an executor, just forked: run what the worker sends until told to stop.
    ``pipelines``: those the fork server loaded, or None to load them here."""
    global _executor_pid
    os.setpgrp()
    forkserver.die_with_parent()
    _executor_pid = os.getpid()
    os.register_at_fork(after_in_child=sock.close)  # a process the run forks never holds the socket
    # Run code, and what it starts, get SIGINT and SIGTERM at their defaults (an ignored signal
    # stays ignored across exec); in its own process group, this process is not reached by a
    # signal to the worker's group anyway.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    outbox = _Outbox(sock)
    logs.configure_child(config.log_level, lambda event: outbox.send(("log", event)))
    if pipelines is None:
        pipelines = registry.discover(config.pipeline_modules)
    runtime = context.ChildRuntime(config.worker_id, config.database)
    signal.signal(signal.SIGUSR1, lambda *_: runtime.request_stop())
    outbox.send(("ready",))
    _Executor(sock, outbox, config, board, index, pipelines, runtime).serve()
    return 0


class _Outbox:
    """Sends on the socket; only the executor itself, never a process its run forked."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()  # run code may log from its threads

    def send(self, message: Any) -> None:
        if os.getpid() != _executor_pid:  # a process the run forked, logging: never on the socket
            return
        frame = wire.encode(message)
        with self.lock:
            self.sock.sendall(frame)


class _Executor:
    def __init__(
        self,
        sock: socket.socket,
        outbox: _Outbox,
        config: ChildConfig,
        board: Board,
        index: int,
        pipelines: dict[str, Any],
        runtime: context.ChildRuntime,
    ) -> None:
        self.reader = wire.Reader(sock)
        self.outbox, self.config, self.board, self.index = outbox, config, board, index
        self.pipelines, self.runtime = pipelines, runtime
        self.queue: deque[tuple[Any, ...]] = deque()  # runs handed over and not started, in order
        self.mail = board.mail(index)
        self.done = 0
        self.open = True

    def serve(self) -> None:
        while self._receive():
            if self.runtime.draining:  # the worker is stopping: runs not started go back untouched
                self._give_back("returned")
                continue
            self._run(ClaimedRun(*self.queue.popleft()))
            reason = self._retiring()
            if reason:
                self._give_back("retiring", reason)
                return

    def _receive(self) -> bool:
        """Take what the worker sent: only what the board says was sent while runs are queued,
        else wait for it. False when the worker said to end, or is gone."""
        try:
            if self.board.mail(self.index) != self.mail:
                self.mail = self.board.mail(self.index)
                self._take(self.reader.read_ready())
            while self.open and not self.queue:
                self.mail = self.board.mail(self.index)
                self._take(self.reader.read())
        except (EOFError, OSError):
            return False
        return self.open

    def _take(self, messages: Iterable[Any]) -> None:
        for message in messages:
            if message is None:
                self.open = False
            elif message[0] == "runs":
                self.queue.extend(message[1])
            elif message[0] == "skip":  # no longer this worker's: never to start
                doomed = set(message[1])
                skipped = [(run[0], run[3]) for run in self.queue if (run[0], run[3]) in doomed]
                self.queue = deque(run for run in self.queue if (run[0], run[3]) not in doomed)
                self.outbox.send(("skipped", skipped))

    def _run(self, run: ClaimedRun) -> None:
        pipeline = self.pipelines.get(run.pipeline)
        limit = (getattr(pipeline, "max_memory", None) or self.config.max_memory) if pipeline else 0
        started = time.monotonic()
        self.board.started(self.index, run.id, run.attempt, started + run.timeout_s, limit)
        result_json, failure = _execute(run, pipeline, self.runtime)
        self.board.ended(self.index)
        self.done += 1
        self.outbox.send(("done", run.id, run.attempt, result_json, failure, started, time.monotonic()))

    def _retiring(self) -> str | None:
        config = self.config
        if config.recycle_after and self.done >= config.recycle_after:
            return f"recycled after {self.done} runs (EXECUTOR_RECYCLE_AFTER)"
        if config.recycle_memory:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            if peak >= config.recycle_memory:
                return f"recycled at a resident size of {peak // 2**20} MB (EXECUTOR_RECYCLE_MEMORY)"
        return None

    def _give_back(self, kind: str, *why: str) -> None:
        runs = [(run[0], run[3]) for run in self.queue]
        self.queue.clear()
        self.outbox.send((kind, runs, *why))


def _execute(
    run: ClaimedRun, pipeline: Any, runtime: context.ChildRuntime
) -> tuple[str | None, Failure | None]:
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
