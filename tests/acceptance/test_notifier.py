"""LISTEN/NOTIFY wakes idle workers at once; a listener whose connection is cut comes back."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

from sqlalchemy import Engine, text

from app import enqueue
from app.states import RunStatus
from tests.support.runs import fetch_run
from tests.support.waiting import wait_until

Spawn = Callable[..., subprocess.Popen[str]]
LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN orbit_runs%' AND datname = current_database()"
)


def _listeners(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text(LISTENERS)).scalars())


def _enqueue_and_wait(engine: Engine, timeout: float) -> None:
    with engine.begin() as conn:
        run_id = enqueue("test.noop", {}, connection=conn)
    wait_until(
        lambda: fetch_run(engine, run_id).status == RunStatus.SUCCEEDED,
        timeout=timeout,
        what="a woken worker",
    )


def test_a_cut_listener_reconnects_and_still_wakes_the_worker(engine: Engine, spawn_worker: Spawn) -> None:
    """With a one-minute poll interval, only a notification can start a run within seconds."""
    worker = spawn_worker("--concurrency", "1", env={"POLL_INTERVAL": "60s"})
    (first,) = wait_until(lambda: _listeners(engine), what="the worker's listener")
    _enqueue_and_wait(engine, timeout=20)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    (second,) = wait_until(lambda: [p for p in _listeners(engine) if p != first], what="a new listener")
    assert second != first
    _enqueue_and_wait(engine, timeout=20)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
