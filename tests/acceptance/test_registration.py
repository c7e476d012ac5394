"""A second worker process with a live worker's id is refused; a crashed one takes its id back."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Callable

from sqlalchemy import Engine, text

from app import enqueue
from app.states import RunStatus
from tests.support.runs import fetch_run
from tests.support.waiting import wait_until
from tests.support.workers import stderr_of


def _registered_pid(engine: Engine, worker_id: str) -> int | None:
    with engine.connect() as conn:
        holder = conn.execute(
            text("SELECT pid, stopped_at FROM workers WHERE id = :id"), {"id": worker_id}
        ).first()
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
