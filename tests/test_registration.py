"""A worker id belongs to one live process: a second one is refused, a dead one's id is taken back."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app import enqueue, registration
from app.registration import Registration, WorkerIdInUse
from app.states import RunStatus
from tests.conftest import fetch_run
from tests.support.runs import worker_row
from tests.support.waiting import wait_until
from tests.support.workers import stderr_of

STALE_AFTER = timedelta(seconds=15)


def _me(worker_id: str, *, hostname: str | None = None, pid: int = 4242) -> Registration:
    return Registration(worker_id, hostname or socket.gethostname(), pid, 1, "*", ["test.noop"], "t")


def _holder(engine: Engine, worker_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT hostname, pid, stopped_at FROM workers WHERE id = :id"), {"id": worker_id}
        ).first()


def _register(engine: Engine, me: Registration) -> None:
    with engine.begin() as conn:
        registration.register(conn, me, STALE_AFTER)


@pytest.mark.parametrize(
    ("heartbeat_ago", "stopped"), [(0.0, True), (60.0, False)], ids=["stopped", "silent"]
)
def test_a_stopped_or_silent_holder_gives_the_id_up(
    engine: Engine, heartbeat_ago: float, stopped: bool
) -> None:
    """An id whose holder stopped, or is silent past STALE_AFTER, is registered anew."""
    worker_row(engine, "w", heartbeat_ago=heartbeat_ago, stopped=stopped)
    _register(engine, _me("w"))
    holder = _holder(engine, "w")
    assert (holder.pid, holder.stopped_at) == (4242, None)


def test_a_live_holder_on_another_host_keeps_the_id(engine: Engine) -> None:
    """A fresh heartbeat of another host's process: refused, its row untouched."""
    worker_row(engine, "w", heartbeat_ago=1.0)
    with pytest.raises(
        WorkerIdInUse, match=r"worker id 'w' is in use by a live worker \(host test-host, pid 1"
    ):
        _register(engine, _me("w"))
    assert _holder(engine, "w").hostname == "test-host"


def test_a_holder_of_this_host_that_no_longer_runs_gives_the_id_up(engine: Engine) -> None:
    """Fresh heartbeat, but its process on this host is gone: the id is taken back at once."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    _register(engine, _me("w", pid=gone.pid))
    _register(engine, _me("w", pid=4242))
    assert _holder(engine, "w").pid == 4242


def _registered_pid(engine: Engine, worker_id: str) -> int | None:
    holder = _holder(engine, worker_id)
    return None if holder is None or holder.stopped_at is not None else int(holder.pid)


def test_a_second_live_worker_with_the_same_id_exits_2(
    engine: Engine, spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    """Two real workers with one --worker-id: the second exits 2 with one line; the first works on."""
    first = spawn_worker("--worker-id", "twin")
    wait_until(lambda: _registered_pid(engine, "twin") == first.pid, 60, "the first worker to register")
    second = spawn_worker("--worker-id", "twin")
    assert second.wait(timeout=60) == 2
    (refusal,) = [line for line in stderr_of(second).splitlines() if line.startswith("orbit:")]
    assert (
        f"worker id 'twin' is in use by a live worker (host {socket.gethostname()}, pid {first.pid}"
        in refusal
    )
    assert _registered_pid(engine, "twin") == first.pid
    with engine.begin() as conn:
        run_id = enqueue("test.noop", {}, connection=conn)
    wait_until(lambda: fetch_run(engine, run_id).status == RunStatus.SUCCEEDED, 60, "the run")
    assert fetch_run(engine, run_id).worker_id == "twin"
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0


def test_a_worker_restarted_after_a_crash_takes_its_id_back(
    engine: Engine, spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    """kill -9, then the same --worker-id at once: registered long before STALE_AFTER."""
    env = {"STALE_AFTER": "1h"}
    crashed = spawn_worker("--worker-id", "phoenix", env=env)
    wait_until(lambda: _registered_pid(engine, "phoenix") == crashed.pid, 60, "the worker to register")
    crashed.send_signal(signal.SIGKILL)
    crashed.wait(timeout=30)
    restarted = spawn_worker("--worker-id", "phoenix", env=env)
    wait_until(lambda: _registered_pid(engine, "phoenix") == restarted.pid, 60, "the restart to register")
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=30) == 0
