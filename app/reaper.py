"""The reaper: when a worker dies, even by SIGKILL, what its runs started dies with it.

Each executor is the leader of its own process group, and what a run starts (a ``subprocess``, a
process it forks, their children) joins that group. The executor dies with its worker
(``PR_SET_PDEATHSIG``), but the rest of its group would not: re-parented to init, a run's
``sleep 4243`` lived on while the run was executed again elsewhere.

The reaper is a small process per worker, in a session of its own (a signal to the worker's process
group does not reach it, and it ignores the usual stop signals), that knows every executor's
group: the worker writes ``+pid`` to its pipe when it starts an executor and ``-pid`` once it has
killed that executor's group and reaped it. Only the worker holds the pipe's other end, so the
reaper reads end of file the moment the worker is gone, however it went; it then kills every group
it knows and exits. A worker that stops normally has told it to forget each group first.

It imports nothing of Orbit (``python -I -S``: started in milliseconds, a few MB), and costs
nothing per run: it hears of executors, not of runs. A group it kills after the worker died still
has a member, or its number could not have been given to another process; one with no member left
is only reusable after the kernel's pid counter wraps around, far longer than the reaper takes.
Processes a run moved to a session of their own (``setsid``, ``start_new_session``) left the group
on purpose and are not followed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys


class Reaper:
    """The worker's end: starts the reaper process and tells it of each executor's group."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._groups: set[int] = set()

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    def watch(self, pid: int) -> None:
        """Kill the group led by ``pid`` if the worker dies."""
        self._groups.add(pid)
        self._send(f"+{pid}\n")

    def forget(self, pid: int) -> None:
        """The worker killed that group and reaped its leader: its number may be reused."""
        self._groups.discard(pid)
        self._send(f"-{pid}\n")

    def stop(self) -> None:
        """End the reaper (after forgetting every group, it kills nothing)."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()  # type: ignore[union-attr]
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _send(self, line: str) -> None:
        if self._process is None:
            return
        try:
            self._write(line)
        except OSError:  # someone killed the reaper: another one learns every group
            self._process.kill()
            self._process.wait()
            self.start()
            with contextlib.suppress(OSError):
                self._write("".join(f"+{pid}\n" for pid in self._groups))

    def _write(self, text: str) -> None:
        os.write(self._process.stdin.fileno(), text.encode())  # type: ignore[union-attr]


def main() -> None:
    """The reaper process: remember groups from stdin; at end of file, kill them all."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        with contextlib.suppress(ValueError):
            pid = int(line[1:])
            if pid <= 1:  # 0 and -1 would mean this process's own group, and every process
                continue
            if line.startswith(b"+"):
                groups.add(pid)
            elif line.startswith(b"-"):
                groups.discard(pid)
    for pid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
