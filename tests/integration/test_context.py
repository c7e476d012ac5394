"""What a pipeline gets as ``ctx``: durable steps, heartbeats and its run's identity."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import Engine, text

from app import enqueue, queries, recovery
from app.settings import Settings
from app.states import RunStatus
from tests.support.runs import executions, fetch_run, running_run, worker_row
from tests.support.waiting import wait_until
from tests.support.workers import error_kinds, run_burst


def _steps(engine: Engine, run_id: int) -> dict[str, tuple[str, int, str | None]]:
    with engine.connect() as conn:
        return {s.name: (s.status, s.attempt, s.error) for s in queries.run_steps(conn, run_id)}


def test_a_failed_step_is_recorded_and_a_resumed_run_skips_completed_steps(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    with engine.begin() as conn:
        run_id = enqueue("test.step_fails", {}, connection=conn)
    run_burst(make_settings())
    assert fetch_run(engine, run_id).status == RunStatus.FAILED
    assert _steps(engine, run_id) == {
        "one": ("succeeded", 1, None),
        "two": ("failed", 1, "ConnectionError: upstream unavailable"),
    }
    with engine.begin() as conn:
        recovery.resume(conn, run_id, make_settings().stale_after)
    run_burst(make_settings())
    run = fetch_run(engine, run_id)
    assert (run.status, run.result, run.attempt) == (RunStatus.SUCCEEDED, {"value": "ab"}, 2)
    assert _steps(engine, run_id)["two"] == ("succeeded", 2, None)
    assert [e.note for e in executions(engine)] == ["one", "two", "two"]


def test_a_step_name_used_twice_fails_the_run_clearly(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    with engine.begin() as conn:
        run_id = enqueue("test.same_step_twice", {}, max_attempts=1, connection=conn)
    run_burst(make_settings())
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.FAILED
    assert "step 'a' is used twice" in run.error
    assert error_kinds(run) == ["error"]


def test_ctx_heartbeat_records_that_the_run_is_alive(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """With the worker's own heartbeat far away, only the pipeline's call moves heartbeat_at."""
    with engine.begin() as conn:
        run_id = enqueue("test.heartbeat", {}, connection=conn)
    run_burst(make_settings(HEARTBEAT_INTERVAL="1h"))
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert (run.heartbeat_at - run.started_at).total_seconds() >= 0.3


def test_a_runs_heartbeat_never_waits_for_the_workers_row(engine: Engine) -> None:
    """The worker's heartbeat holds its run's row, then wants its own row; a run's heartbeat
    meanwhile (ctx.heartbeat, in its executor) must not hold the worker's row and wait for the
    run's: that cycle was a deadlock (a second of waits, then one of them failed)."""
    worker_row(engine, "w")
    run_id = running_run(engine, "test.noop", "w")
    beating: list[object] = []
    with engine.connect() as worker:
        worker.execute(text("UPDATE runs SET heartbeat_at = now() WHERE id = :id"), {"id": run_id})
        holder = worker.execute(text("SELECT pg_backend_pid()")).scalar_one()

        def executor_beats() -> None:
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '10s'"))
                beating.append(queries.heartbeat(conn, "w", {run_id: 1}))

        executor = threading.Thread(target=executor_beats)
        executor.start()
        wait_until(lambda: _waits_for(engine, holder), 10, "the run's heartbeat to wait for the run")
        worker.execute(text("SET LOCAL lock_timeout = '5s'"))
        worker.execute(text("UPDATE workers SET heartbeat_at = now() WHERE id = 'w'"))
        worker.commit()
    executor.join(timeout=15)
    assert beating == [{run_id}]


def _waits_for(engine: Engine, holder: int) -> bool:
    """Whether a session waits for a lock that the session of pid ``holder`` holds."""
    with engine.connect() as conn:
        waiting = """SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND :holder = ANY(pg_blocking_pids(pid))"""
        return bool(conn.execute(text(waiting), {"holder": holder}).scalar_one())


def test_a_step_returns_the_same_value_on_every_attempt(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A step's value is its JSON round trip on the first attempt as on a retry: keys text, tuples lists."""
    with engine.begin() as conn:
        run_id = enqueue("test.step_value", {}, connection=conn)
    settings = make_settings(RETRY_BACKOFF_BASE="1ms", RETRY_BACKOFF_MAX="1ms")
    # A burst worker may end before the retry is due: another one runs it.
    wait_until(lambda: run_burst(settings) == 0 and fetch_run(engine, run_id).status == RunStatus.SUCCEEDED)
    run = fetch_run(engine, run_id)
    assert (run.status, run.attempt) == (RunStatus.SUCCEEDED, 2)
    seen = {"1": "one", "pair": [1, 2]}
    assert [e.note for e in executions(engine)] == [repr(seen), repr(seen)]
    assert run.result == seen


def test_a_step_error_or_output_postgres_cannot_store_is_stored_visibly_replaced(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A NUL in a step's error or output is stored, and returned, as U+FFFD."""
    with engine.begin() as conn:
        failing = enqueue("test.unstorable_step", {}, connection=conn)
        output = enqueue("test.unstorable_step", {"how": "output"}, connection=conn)
    run_burst(make_settings())
    run = fetch_run(engine, failing)
    assert (run.status, run.error) == (RunStatus.FAILED, "ValueError: a\ufffdb")
    assert _steps(engine, failing) == {"make": ("failed", 1, "ValueError: a\ufffdb")}
    run = fetch_run(engine, output)
    assert (run.status, run.result) == (RunStatus.SUCCEEDED, "a\ufffdb")
    assert _steps(engine, output) == {"make": ("succeeded", 1, None)}
