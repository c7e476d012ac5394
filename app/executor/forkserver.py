"""The fork server: one process per worker that has Orbit and the pipelines loaded, and forks an
executor in about a millisecond whenever the worker needs one.

Executors used to be started with ``spawn``: a fresh interpreter each, importing SQLAlchemy,
psycopg, structlog and the pipelines anew, about 0.6 s of CPU and 51 MB each. A run stopped at its
time limit costs its executor, so each kill paid that start again. Forking the worker itself is no
option: it holds threads (the listener, the time limits, the metrics endpoint), a connection and
locks a child must never inherit. So the fork server is a fresh interpreter too, started with
``subprocess`` (nothing of the worker crosses the ``exec``), in a session of its own (a signal to
the worker's process group does not reach it or its children); it imports what executors need,
freezes that memory for the garbage collector (``gc.freeze``: a collection in a child would
otherwise touch, and copy, every page of it) and then only forks. Its children share those pages
with it and with each other until they write to them.

The pipelines are loaded in the server too, unless loading them started a thread or opened a
socket (a module that connects at import): an executor would then inherit it, and share one
connection with its siblings. The server says so, and the worker starts another that leaves the
pipelines to each executor (``preload`` off), as ``spawn`` did.

The worker speaks to it on a socket pair, one request at a time: ``fork`` (with the executor's end
of its own socket pair, passed as a file descriptor) answered with the pid, and ``reap`` answered
with the exit status. The server never reaps a child before it is asked: the worker kills an
executor's process group before it asks, so a group number is never reused while the worker could
still signal it. The server dies with its worker (``PR_SET_PDEATHSIG``, and end of file on its
socket), and each executor with the server.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

from app.executor import wire
from app.executor.watchdog import Board

# The server's first lines run before any module of Orbit is importable: they set sys.path as the
# worker has it (pipelines may live in the worker's current directory, say).
_BOOT = (
    "import sys, json; sys.path[:] = json.loads(sys.argv[1]);"
    " from app.executor.forkserver import main; main()"
)
REAP_TIMEOUT = 5.0


class ForkServerError(Exception):
    """The fork server cannot start or stopped answering; the message is one line."""


class ForkFailed(Exception):
    """The fork server is there but could not fork (no memory, a limit on processes)."""


class ForkServer:
    """The worker's end: starts the server and asks it for executors."""

    def __init__(self, config: Any, board: Board) -> None:
        self.config = config
        self.board = board
        self.preload = True
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: wire.Reader | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> str | None:
        """Start the server and wait until it has loaded what executors need; returns why the
        pipelines could not be preloaded, if so (the server then leaves them to each executor)."""
        reason = self._start()
        if reason is not None:
            self.close()
            self.preload = False
            self._start()
        return reason

    def _start(self) -> str | None:
        ours, theirs = socket.socketpair()
        args = [json.dumps(sys.path), str(theirs.fileno()), str(self.board.fd), str(os.getpid())]
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, *args],
                pass_fds=(theirs.fileno(), self.board.fd),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._sock, self._reader = ours, wire.Reader(ours)
        wire.send(ours, ("setup", self.config, self.preload, self.board.size))
        kind, detail = self._answer()
        if kind == "failed":
            self.close()
            raise ForkServerError(detail)
        return detail if kind == "unsafe" else None

    def fork(self, index: int, executor_end: socket.socket) -> int:
        """A new executor for slot ``index``, speaking on ``executor_end``; returns its pid."""
        self._ask(lambda sock: socket.send_fds(sock, [wire.encode(("fork", index))], [executor_end.fileno()]))
        kind, detail = self._answer()
        if kind == "failed":
            raise ForkFailed(detail)
        return int(detail)

    def reap(self, pid: int) -> int | None:
        """Wait (up to REAP_TIMEOUT) for the end of an executor whose group was killed or which
        died; its wait status, or None if it is still there."""
        self._ask(lambda sock: wire.send(sock, ("reap", pid)))
        _, status = self._answer()
        return None if status is None else int(status)

    def _ask(self, send: Callable[[socket.socket], object]) -> None:
        if self._sock is None:
            raise ForkServerError("the fork server is not running")
        try:
            send(self._sock)
        except OSError as exc:
            raise ForkServerError(f"the fork server stopped answering: {exc}") from None

    def _answer(self) -> tuple[str, Any]:
        assert self._reader is not None
        try:
            while True:
                messages = self._reader.read()
                if messages:
                    (answer,) = messages
                    return answer  # type: ignore[no-any-return]
        except (EOFError, OSError) as exc:
            status = self._process.poll() if self._process else None
            message = f"the fork server stopped answering (exit status {status}): {exc}"
            raise ForkServerError(message) from None

    def close(self) -> None:
        """Stop the server (its executors die with it)."""
        process, self._process = self._process, None
        if self._sock is not None:
            self._sock.close()
            self._sock = self._reader = None
        if process is not None:
            try:
                process.wait(timeout=REAP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- the server -------------------------------------------------------------------------------


def main() -> None:
    """The server process: ``python -c _BOOT PATH CONTROL_FD BOARD_FD WORKER_PID``."""
    control = socket.socket(fileno=int(sys.argv[2]))
    board_fd, worker = int(sys.argv[3]), int(sys.argv[4])
    for fd in (control.fileno(), board_fd):  # never passed on to what a run executes
        os.set_inheritable(fd, False)
    die_with_parent()
    if os.getppid() != worker:  # the worker died before the line above
        os._exit(1)
    reader = wire.Reader(control)
    (setup,) = reader.read()
    _, config, preload, slots = setup
    from app.executor import child  # what every executor needs, loaded once here

    try:
        pipelines, unsafe = _preload(config) if preload else ({}, None)
    except Exception as exc:
        wire.send(control, ("failed", " ".join(str(exc).split()) or type(exc).__name__))
        return
    wire.send(control, ("unsafe" if unsafe else "ready", unsafe))
    if unsafe:
        return
    board = Board.attach(board_fd, slots)
    gc.freeze()  # no collection first: 50 ms before the first executor, for a few hundred objects
    _serve(control, board, config, pipelines, child.child_main)


def _preload(config: Any) -> tuple[dict[str, Any], str | None]:
    """Load the pipelines; also why that is unsafe to fork from, if it is."""
    from app import registry

    before = _sockets()
    pipelines = registry.discover(config.pipeline_modules)
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        return pipelines, f"loading the pipeline modules started {threads - 1} thread(s)"
    opened = _sockets() - before
    if opened:
        return pipelines, f"loading the pipeline modules opened {len(opened)} socket(s) (a connection?)"
    return pipelines, None


def _sockets() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                found.add(target)
    return found


def _serve(control: socket.socket, board: Board, config: Any, pipelines: dict[str, Any], entry: Any) -> None:
    reader = wire.Reader(control)
    lingering: set[int] = set()  # killed children that had not ended within REAP_TIMEOUT
    while True:
        try:
            # The executor's end arrives close-on-exec: never inherited by a program a run runs.
            data, fds, _, _ = socket.recv_fds(control, 1 << 16, 4, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return
        if not data:
            return  # the worker is gone
        for message in reader.feed(data):
            if message[0] == "fork":
                try:
                    answer: tuple[str, Any] = (
                        "forked",
                        _fork(control, fds.pop(0), board, config, pipelines, message[1], entry),
                    )
                except OSError as exc:  # no memory, or a limit on processes: say so, carry on
                    answer = ("failed", f"cannot fork an executor: {exc}")
                wire.send(control, answer)
            elif message[0] == "reap":
                wire.send(control, ("reaped", _reap(message[1], lingering)))
        for fd in fds:
            os.close(fd)


def _fork(
    control: socket.socket,
    fd: int,
    board: Board,
    config: Any,
    pipelines: dict[str, Any],
    index: int,
    entry: Any,
) -> int:
    sys.stdout.flush()  # else what the pipelines printed at import is printed again by each child
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        os.close(fd)
        raise
    if pid:
        os.close(fd)
        return pid
    status = 1
    try:
        control.close()
        status = entry(socket.socket(fileno=fd), config, board, index, pipelines or None)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status or 0)


def _reap(pid: int, lingering: set[int]) -> int | None:
    """The wait status of child ``pid`` (killed, or dead), waiting up to REAP_TIMEOUT; None if it
    is still there then (it is reaped later, with the next request) or was no child of this one."""
    for other in list(lingering):  # killed earlier and slow to go: no zombie left behind
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(other, os.WNOHANG)[0]:
                lingering.discard(other)
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    try:
        if pidfd is not None:
            select.select([pidfd], [], [], REAP_TIMEOUT)  # readable once the child has ended
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    finally:
        if pidfd is not None:
            os.close(pidfd)
    if not done:
        lingering.add(pid)
        return None
    return status


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (PR_SET_PDEATHSIG): the fork
    server with its worker, an executor with its fork server."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
