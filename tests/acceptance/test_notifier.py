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


def _run_and_wait(engine: Engine, timeout: float) -> int:
    """Enqueue a test.noop run and wait for it to succeed; its id."""
    with engine.begin() as conn:
        run_id = enqueue("test.noop", {}, connection=conn)
    wait_until(
        lambda: fetch_run(engine, run_id).status == RunStatus.SUCCEEDED,
        timeout=timeout,
        what="a woken worker",
    )
    return run_id


def test_a_cut_listener_reconnects_and_still_wakes_the_worker(engine: Engine, spawn_worker: Spawn) -> None:
    """With a one-minute poll interval, only a notification can start a run within seconds."""
    worker = spawn_worker("--concurrency", "1", env={"POLL_INTERVAL": "60s"})
    (first,) = wait_until(lambda: _listeners(engine), what="the worker's listener")
    _run_and_wait(engine, timeout=20)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    (second,) = wait_until(lambda: [p for p in _listeners(engine) if p != first], what="a new listener")
    assert second != first
    _run_and_wait(engine, timeout=20)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def _fleet_of_two(engine: Engine, spawn_worker: Spawn) -> tuple[list[subprocess.Popen[str]], list[str]]:
    """Two idle workers that know of each other (each beat once after both registered), which
    only notifications wake (a one-minute poll interval). They stop within a second of being
    told, a long run released (it would hold its worker for SHUTDOWN_GRACE)."""
    ids = ["worker-a", "worker-b"]
    env = {"POLL_INTERVAL": "60s", "HEARTBEAT_INTERVAL": "300ms", "SHUTDOWN_GRACE": "1s"}
    workers = [spawn_worker("--concurrency", "1", env={**env, "WORKER_ID": worker_id}) for worker_id in ids]
    both = (
        "SELECT count(*) FROM workers"
        " WHERE heartbeat_at > (SELECT max(started_at) FROM workers) + interval '0.7 s'"
    )
    wait_until(lambda: _count(engine, both) == 2, what="both workers to read the fleet")
    return workers, ids


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _stop(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0]


def test_each_new_run_wakes_the_one_worker_chosen_for_it(engine: Engine, spawn_worker: Spawn) -> None:
    """One run at a time to two idle workers: each is claimed by the worker its id chooses, not
    by whichever won a race (half of them would go to the other)."""
    workers, ids = _fleet_of_two(engine, spawn_worker)
    try:
        for _ in range(8):
            run_id = _run_and_wait(engine, timeout=30)
            assert fetch_run(engine, run_id).worker_id == ids[run_id % 2]
    finally:
        _stop(workers)


def test_a_chosen_worker_with_no_executor_free_passes_the_run_on(engine: Engine, spawn_worker: Spawn) -> None:
    """Its one executor busy, the run it was chosen for is taken by the other worker within
    seconds (its poll would take a minute)."""
    workers, _ = _fleet_of_two(engine, spawn_worker)
    try:
        with engine.begin() as conn:
            busy = enqueue("test.sleep", {"seconds": 60}, connection=conn)
        wait_until(lambda: fetch_run(engine, busy).status == RunStatus.RUNNING, what="the long run")
        occupied = fetch_run(engine, busy).worker_id
        for _ in range(2):  # one of them is chosen for the busy worker
            run_id = _run_and_wait(engine, timeout=10)
            assert fetch_run(engine, run_id).worker_id != occupied
    finally:
        _stop(workers)
