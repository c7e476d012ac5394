"""Executor processes still starting (importing pipelines the fork server could not load for them):
a signal to the worker's whole process group is the worker's to handle, and a stopping worker does
not die of a child that never started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path

import pytest

from app.database import resolve
from app.executor import ChildConfig, ExecutorError, ExecutorPool
from app.settings import Settings
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

SLOW = "tests.support.slow_start"

# A pool of one child, in a process group of its own like a worker's: it reports "spawned",
# then whether its child became ready or died. SIGTERM is handled (not ignored: an ignored
# signal would stay ignored in the child and hide what this tests).
POOL = textwrap.dedent(f"""
    import signal, sys, time
    from multiprocessing.connection import wait
    from app.database import resolve
    from app.executor import ChildConfig, ExecutorError, ExecutorPool
    from app.settings import Settings
    signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM", flush=True))
    pool = ExecutorPool(1, ChildConfig("pool", resolve(Settings()), ({SLOW!r},), "info"))
    pool.start()
    print("spawned", flush=True)
    deadline = time.monotonic() + 60
    try:
        while not pool.free and time.monotonic() < deadline:
            pool.collect(wait(pool.connections(), 0.5))
        print("ready" if pool.free else "timed out", flush=True)
    except ExecutorError as exc:
        print(exc, flush=True)
    pool.close()
""")


def test_a_signal_to_the_process_group_spares_an_executor_still_starting(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """supervisord's stopasgroup or Ctrl-C while a child imports its pipelines: the child lives
    on (it was never in the worker's group, and the signal was the worker's)."""
    gate = tmp_path / "gate"
    env = {**worker_env, "ORBIT_TEST_START_GATE": str(gate)}
    pool = subprocess.Popen(
        [sys.executable, "-c", POOL], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert pool.stdout is not None
        while (line := pool.stdout.readline()) and "spawned" not in line:
            assert "fork server cannot" in line  # the module cannot be loaded before a fork
        assert line.strip() == "spawned"
        wait_until(lambda: _executors(pool.pid), what="an executor to start")
        os.killpg(pool.pid, signal.SIGTERM)
        assert pool.stdout.readline().strip() == "SIGTERM"
        gate.touch()
        assert pool.stdout.readline().strip() == "ready"
        assert pool.wait(timeout=60) == 0
    finally:
        if pool.poll() is None:
            pool.kill()


@pytest.mark.parametrize("stopping", [False, True])
def test_a_child_that_dies_before_it_started_ends_only_a_worker_that_is_not_stopping(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopping: bool
) -> None:
    """A child that dies while starting is fatal to a working worker (its pipelines may not
    import), not to a stopping one, which still has outcomes to write."""
    monkeypatch.setenv("ORBIT_TEST_START_GATE", str(tmp_path / "never"))
    pool = ExecutorPool(1, ChildConfig("pool", resolve(make_settings()), (SLOW,), "info"))
    pool.start()
    try:
        (child,) = wait_until(lambda: _executors(os.getpid()), what="the child to start")
        if stopping:
            pool.ask_to_stop()
        os.kill(child, signal.SIGKILL)
        if stopping:
            wait_until(lambda: pool.collect(wait(pool.connections(), 0.5)) == [] and not _alive(child))
        else:
            with pytest.raises(
                ExecutorError, match="failed to start: executor process was killed by SIGKILL"
            ):
                for _ in range(60):  # its end is read within a wait or two
                    pool.collect(wait(pool.connections(), 0.5))
    finally:
        pool.close()


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def _executors(pid: int) -> list[int]:
    """The executors of the pool in process ``pid``: the children of its fork server."""
    for child in _children(pid):
        try:
            if b"app.executor.forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                return _children(child)
        except OSError:
            continue
    return []


def _alive(pid: int) -> bool:
    return pid in _executors(os.getpid())
