"""The worker: claiming, ordering, outcomes, retries, time limits and crashes."""

from __future__ import annotations

import multiprocessing
import re
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from app import enqueue, enqueue_many, queries
from app.executor import Outcome
from app.outcomes import release
from app.queries import Transition
from app.settings import Settings
from app.states import RunStatus
from app.worker import build
from tests.support.claim_plan import explain_claim
from tests.support.runs import executions, fetch_run
from tests.support.waiting import wait_until
from tests.support.workers import error_kinds, process_alive, run_burst


def _enqueue(engine: Engine, pipeline: str, params: dict[str, object] | None = None, **kw: object) -> int:
    with engine.begin() as conn:
        return enqueue(pipeline, params or {}, connection=conn, **kw)


def test_burst_worker_runs_a_run_and_stores_its_result(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A succeeded run stores the pipeline's JSON return value and its timings."""
    run_id = _enqueue(engine, "test.echo", {"x": [1, 2]})
    assert run_burst(make_settings()) == 0
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert run.result == {"x": [1, 2]}
    assert run.attempt == 1
    assert run.started_at <= run.finished_at
    assert run.max_attempts == 3
    assert run.code_version


def test_priority_then_run_at_order(engine: Engine, make_settings: Callable[..., Settings]) -> None:
    """With one slot, higher priority runs first, then earlier run_at; future runs wait."""
    low = _enqueue(engine, "test.record", priority=0)
    high = _enqueue(engine, "test.record", priority=10)
    low2 = _enqueue(engine, "test.record", priority=0)
    later = _enqueue(engine, "test.record", priority=100, delay=3600)
    run_burst(make_settings(WORKER_CONCURRENCY=1))
    assert [row.run_id for row in executions(engine)] == [high, low, low2]
    assert fetch_run(engine, later).status == RunStatus.PENDING


def test_pipeline_filter_leaves_other_runs_pending(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A worker only claims the pipelines matching its PIPELINE_FILTER."""
    mine = _enqueue(engine, "test.noop")
    other = _enqueue(engine, "test.echo")
    run_burst(make_settings(PIPELINE_FILTER="test.n*"))
    assert fetch_run(engine, mine).status == RunStatus.SUCCEEDED
    assert fetch_run(engine, other).status == RunStatus.PENDING


def test_failures_retry_with_backoff_and_keep_every_error(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """Each failed attempt is kept; run_at moves by the jittered exponential backoff."""
    run_id = _enqueue(engine, "test.fail")
    settings = make_settings(RETRY_BACKOFF_BASE="400ms", RETRY_BACKOFF_MAX="1s")
    for attempt in (1, 2):
        run_burst(settings)
        run = fetch_run(engine, run_id)
        assert run.status == RunStatus.PENDING
        assert run.attempt == attempt
        waited = (run.run_at - datetime.fromisoformat(run.errors[-1]["at"])).total_seconds()
        expected = min(0.4 * 2 ** (attempt - 1), 1.0)
        assert 0.5 * expected - 0.05 <= waited <= expected + 0.05
        with engine.begin() as conn:
            conn.execute(text("UPDATE runs SET run_at = now() WHERE id = :id"), {"id": run_id})
    run_burst(settings)
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.FAILED
    assert [e["attempt"] for e in run.errors] == [1, 2, 3]
    assert run.errors[-1]["type"] == "ValueError"
    assert "boom on attempt 3" in run.error
    assert "Traceback" in run.errors[0]["traceback"]


def test_a_flaky_run_succeeds_on_a_later_attempt(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A run that fails once and then succeeds ends succeeded with one error recorded."""
    run_id = _enqueue(engine, "test.flaky", {"succeed_on": 2})
    settings = make_settings(RETRY_BACKOFF_BASE="1ms", RETRY_BACKOFF_MAX="1ms")
    # A burst worker may end before the retry is due: another one runs it.
    wait_until(lambda: run_burst(settings) == 0 and fetch_run(engine, run_id).status != RunStatus.PENDING)
    run = fetch_run(engine, run_id)
    assert (run.status, run.attempt, run.result) == (RunStatus.SUCCEEDED, 2, {"attempt": 2})
    assert len(run.errors) == 1


def test_fail_now_skips_the_remaining_attempts(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """FailNow fails the run at once although attempts are left."""
    run_id = _enqueue(engine, "test.fail_now")
    run_burst(make_settings())
    run = fetch_run(engine, run_id)
    assert (run.status, run.attempt, run.max_attempts) == (RunStatus.FAILED, 1, 5)
    assert run.errors[0]["type"] == "FailNow"


def test_snooze_reschedules_without_using_an_attempt(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """Snooze puts the run back for later with its attempt count unchanged."""
    run_id = _enqueue(engine, "test.snooze", {"delay": 30})
    run_burst(make_settings())
    run = fetch_run(engine, run_id)
    assert (run.status, run.attempt) == (RunStatus.PENDING, 0)
    assert 25 <= (run.run_at - run.created_at).total_seconds() <= 40
    assert run.errors == []


def test_a_result_that_is_not_json_fails_the_run(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A non-JSON return value fails the run with a clear reason."""
    run_id = _enqueue(engine, "test.bad_result")
    run_burst(make_settings())
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.FAILED
    assert "not JSON" in run.error


@pytest.mark.parametrize("pipeline", ["test.sleep", "test.busy_c"])
def test_a_stuck_run_is_stopped_at_its_time_limit(
    engine: Engine, make_settings: Callable[..., Settings], pipeline: str
) -> None:
    """time.sleep and a C loop are both stopped at the limit; their code never continues."""
    stuck = _enqueue(engine, pipeline, timeout=0.5)
    after = _enqueue(engine, "test.noop")
    run_burst(make_settings(WORKER_CONCURRENCY=1))
    run = fetch_run(engine, stuck)
    assert run.status == RunStatus.TIMED_OUT
    assert error_kinds(run) == ["timeout"]
    assert "time limit of 0.5s" in run.error
    (start,) = executions(engine, "start")
    assert not process_alive(start.pid)
    assert executions(engine, "after-sleep") == executions(engine, "after-loop") == []
    assert fetch_run(engine, after).status == RunStatus.SUCCEEDED


def test_a_blocking_socket_call_is_stopped_at_its_time_limit(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    stuck = _enqueue(engine, "test.blocking_socket", timeout=0.5)
    run_burst(make_settings(WORKER_CONCURRENCY=1))
    assert fetch_run(engine, stuck).status == RunStatus.TIMED_OUT
    (start,) = executions(engine, "start")
    assert not process_alive(start.pid)
    assert executions(engine, "after-recv") == []


def test_a_time_limit_also_ends_the_runs_child_processes(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The executor runs in its own process group: a grandchild it started dies with it."""
    pidfile = tmp_path / "grandchild.pid"
    stuck = _enqueue(engine, "test.grandchild", {"pidfile": str(pidfile)}, timeout=1)
    after = _enqueue(engine, "test.noop")
    run_burst(make_settings(WORKER_CONCURRENCY=1))
    assert fetch_run(engine, stuck).status == RunStatus.TIMED_OUT
    grandchild = int(pidfile.read_text())
    wait_until(lambda: not process_alive(grandchild), timeout=10, what="the grandchild to be gone")
    assert fetch_run(engine, after).status == RunStatus.SUCCEEDED


def test_max_execution_timeout_applies_without_a_pipeline_timeout(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A run without its own or its pipeline's limit gets MAX_EXECUTION_TIMEOUT."""
    run_id = _enqueue(engine, "test.sleep")
    run_burst(make_settings(MAX_EXECUTION_TIMEOUT="300ms"))
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.TIMED_OUT
    assert run.timeout.total_seconds() == pytest.approx(0.3)


@pytest.mark.parametrize(("how", "reason"), [("exit", "exited with status 3"), ("segv", "SIGSEGV")])
def test_an_executor_crash_fails_only_its_run(
    engine: Engine, make_settings: Callable[..., Settings], how: str, reason: str
) -> None:
    """os._exit or a segfault fails that run with the cause; the worker goes on."""
    crashed = _enqueue(engine, "test.crash", {"how": how})
    later = _enqueue(engine, "test.noop")
    assert run_burst(make_settings(WORKER_CONCURRENCY=1)) == 0
    run = fetch_run(engine, crashed)
    assert run.status == RunStatus.FAILED
    assert error_kinds(run) == ["crash"]
    assert reason in run.error
    assert fetch_run(engine, later).status == RunStatus.SUCCEEDED


def test_completion_is_fenced_on_the_lease(engine: Engine) -> None:
    """A worker that lost its run (re-claimed elsewhere) changes nothing when it finishes late."""
    run_id = _enqueue(engine, "test.noop")
    defaults = {"test.noop": (3, 60.0)}
    with engine.begin() as conn:
        _, (mine,) = queries.exchange(conn, worker_id="a", limit=1, defaults=defaults)
        conn.execute(text("UPDATE runs SET status = 'pending' WHERE id = :id"), {"id": run_id})
        _, (theirs,) = queries.exchange(conn, worker_id="b", limit=1, defaults=defaults)
    assert theirs.attempt == mine.attempt + 1
    with engine.begin() as conn:
        late = queries.Success(mine.id, mine.attempt, '"late"')
        assert queries.exchange(conn, worker_id="a", successes=[late]) == (set(), [])
        assert queries.heartbeat(conn, "a", {mine.id: mine.attempt}) == set()
        on_time = queries.Success(theirs.id, theirs.attempt, '"on time"')
        assert queries.exchange(conn, worker_id="b", successes=[on_time]) == ({run_id}, [])
    assert fetch_run(engine, run_id).result == "on time"


def test_a_turn_writes_outcomes_then_claims_in_one_transaction(engine: Engine) -> None:
    """exchange: outcomes of runs still ours are written (a stale one is not), then the claim sees
    them; a failing statement leaves nothing behind, the claim included."""
    with engine.begin() as conn:
        ids = enqueue_many([("test.noop", {}) for _ in range(3)], connection=conn)
    turn: dict[str, Any] = {"worker_id": "w", "defaults": {"test.noop": (3, 60.0)}, "version": "t"}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        _, (first, second) = queries.exchange(conn, successes=[], transitions=[], limit=2, **turn)
        done = [queries.Success(first.id, first.attempt, '"ok"'), queries.Success(ids[2], 1, '"stale"')]
        owned, claimed = queries.exchange(
            conn, successes=done, transitions=[release(second)], limit=5, **turn
        )
        assert owned == {first.id, second.id}
        assert sorted((run.id, run.attempt) for run in claimed) == [(second.id, 1), (ids[2], 1)]
        driver = conn.connection.driver_connection
        assert driver is not None and driver.info.transaction_status == TransactionStatus.IDLE  # committed
        waiting = _enqueue(engine, "test.noop")
        bad = [queries.Success(second.id, 1, "not json")]
        with pytest.raises(DBAPIError):
            queries.exchange(conn, successes=bad, transitions=[], limit=5, **turn)
    assert fetch_run(engine, first.id).result == "ok"
    assert fetch_run(engine, second.id).status == fetch_run(engine, ids[2]).status == RunStatus.RUNNING
    assert fetch_run(engine, waiting).status == RunStatus.PENDING  # the claim went with the failure


def test_a_claim_takes_no_more_than_its_limit(engine: Engine) -> None:
    """The CTE-fenced claim returns at most `limit` runs and marks only those running."""
    with engine.begin() as conn:
        enqueue_many([("test.noop", {}) for _ in range(50)], connection=conn)
        _, claimed = queries.exchange(conn, worker_id="w", limit=7, defaults={"test.noop": (3, 60.0)})
        running = conn.execute(text("SELECT count(*) FROM runs WHERE status = 'running'")).scalar()
    assert len(claimed) == running == 7


def test_a_claim_returns_its_runs_in_claim_order(engine: Engine) -> None:
    """Runs claimed together come back by priority, then run_at, then id (they start in that order)."""
    low = [_enqueue(engine, "test.noop") for _ in range(3)]
    high = _enqueue(engine, "test.noop", priority=5)
    with engine.begin() as conn:
        _, claimed = queries.exchange(conn, worker_id="w", limit=10, defaults={"test.noop": (3, 60.0)})
    assert [run.id for run in claimed] == [high, *low]


def test_a_claim_reads_nothing_of_other_pipelines(engine: Engine) -> None:
    """5,000 older runs of a paused pipeline and of one this worker does not run: the claim takes
    the worker's runs in claim order, across its pipelines, and reads none of the others."""
    with engine.begin() as conn:
        conn.execute(
            text("""INSERT INTO runs (pipeline, run_at)
                             SELECT p, now() - interval '1 hour' FROM generate_series(1, 2500),
                                    unnest(ARRAY['test.paused', 'other.fleet']) AS p""")
        )
        queries.pause(conn, "test.paused", "test.paused", "test")
    mine = [
        _enqueue(engine, "test.noop"),
        _enqueue(engine, "test.echo", priority=1),
        _enqueue(engine, "test.noop"),
    ]
    defaults = {name: (3, 60.0) for name in ("test.noop", "test.echo", "test.paused", "test.sleep")}
    with engine.begin() as conn:
        plans = [
            "\n".join(explain_claim(conn, limit=10, defaults=defaults, flow_control=flow))
            for flow in (False, True)
        ]
        _, claimed = queries.exchange(conn, worker_id="w", limit=2, defaults=defaults, overrides=False)
        _, more = queries.exchange(conn, worker_id="w", limit=2, defaults=defaults)
    assert [run.id for run in claimed + more] == [mine[1], mine[0], mine[2]]
    for plan in plans:  # with flow control or without, as a worker claims
        assert _runs_read_past(plan) == 0, plan  # one index in claim order for all read past 5,000


def _runs_read_past(plan: str) -> int:
    """Rows that scans of runs read and threw away (EXPLAIN ANALYZE's Rows Removed by Filter)."""
    removed, scanning_runs = 0, False
    for line in plan.splitlines():
        if "->" in line or not line.startswith(" "):
            scanning_runs = " on runs" in line
        found = re.search(r"Rows Removed by Filter: (\d+)", line)
        if found and scanning_runs:
            removed += int(found.group(1))
    return removed


def test_enqueue_many_copies_runs_with_their_delays(engine: Engine) -> None:
    """Batch insert (COPY) keeps the order of the ids, and run_at is the enqueue time plus the delay."""
    runs = [queries.NewRun("test.noop", {"i": i}, delay=60.0 * (i % 2)) for i in range(4)]
    with engine.begin() as conn:
        ids = queries.insert_runs(conn, runs)
        rows = conn.execute(
            text("SELECT id, params, EXTRACT(EPOCH FROM run_at - created_at) AS delay FROM runs ORDER BY id")
        ).all()
    assert ids == [row.id for row in rows]
    assert [row.params["i"] for row in rows] == [0, 1, 2, 3]
    assert [round(float(row.delay)) for row in rows] == [0, 60, 0, 60]


def test_enqueue_many_writes_a_column_only_when_some_run_sets_it(engine: Engine) -> None:
    """Columns left at their defaults are left out of the COPY; set on one run, they are written."""
    runs = [
        queries.NewRun("test.noop", {}),
        queries.NewRun("test.noop", {}, priority=3),
        queries.NewRun("test.noop", {}, max_attempts=5),
    ]
    with engine.begin() as conn:
        ids = queries.insert_runs(conn, runs)
        plain = queries.insert_runs(conn, [queries.NewRun("test.noop", {})])
    rows = [fetch_run(engine, i) for i in [*ids, *plain]]
    assert [(r.priority, r.max_attempts) for r in rows] == [(0, None), (3, None), (0, 5), (0, None)]
    assert all(r.run_at == r.created_at for r in rows)


def test_runs_claimed_by_a_turn_whose_reply_was_lost_are_taken_up(
    engine: Engine, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is cut right after the claim commits: the worker sees an error, yet owns the
    runs. It takes them up on its next turn instead of leaving them to the rescuer."""
    ids = [_enqueue(engine, "test.noop") for _ in range(3)]
    real, cuts = queries.exchange, []

    def cut_after_commit(conn: Any, **turn: Any) -> Any:
        result = real(conn, **turn)
        if result[1] and not cuts:
            cuts.append(result[1])
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return result

    monkeypatch.setattr(queries, "exchange", cut_after_commit)
    assert run_burst(make_settings()) == 0
    assert cuts, "no claim was cut"
    assert [(fetch_run(engine, i).status, fetch_run(engine, i).attempt) for i in ids] == [
        (RunStatus.SUCCEEDED, 1)
    ] * 3


def test_outcomes_written_by_a_turn_whose_reply_was_lost_are_not_called_late(
    engine: Engine, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is cut right after a turn's outcomes commit: written again, the fence
    refuses them; the worker says they were already written, and warns of no late outcome."""
    ids = [_enqueue(engine, "test.noop") for _ in range(3)]
    real, cut = queries.exchange, set()

    def cut_after_commit(conn: Any, **turn: Any) -> Any:
        result = real(conn, **turn)
        if turn["successes"] and not cut:
            cut.update(s.id for s in turn["successes"])
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return result

    monkeypatch.setattr(queries, "exchange", cut_after_commit)
    with structlog.testing.capture_logs() as events:
        assert run_burst(make_settings()) == 0
    assert cut, "no outcome was cut"
    assert {(fetch_run(engine, i).status, fetch_run(engine, i).attempt) for i in ids} == {
        (RunStatus.SUCCEEDED, 1)
    }
    already = {e["run_id"] for e in events if e["event"].startswith("Outcome was already written")}
    assert already == cut
    assert not [e for e in events if e["event"].startswith("Late outcome rejected")]


def test_transitions_written_by_a_turn_whose_reply_was_lost_are_not_called_late(
    engine: Engine, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for successes: a failure and a snooze whose turn committed as its reply was lost are
    said to be written already when the fence refuses them again, not rejected as late."""
    ids = [_enqueue(engine, "test.fail_now"), _enqueue(engine, "test.snooze", {"delay": 30})]
    real, cut = queries.exchange, set()

    def cut_after_commit(conn: Any, **turn: Any) -> Any:
        result = real(conn, **turn)
        if turn["transitions"] and not cut:
            cut.update(t.id for t in turn["transitions"])
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return result

    monkeypatch.setattr(queries, "exchange", cut_after_commit)
    with structlog.testing.capture_logs() as events:
        assert run_burst(make_settings(WORKER_CONCURRENCY=2)) == 0
    assert cut, "no outcome was cut"
    assert [(fetch_run(engine, i).status, fetch_run(engine, i).attempt) for i in ids] == [
        (RunStatus.FAILED, 1),
        (RunStatus.PENDING, 0),
    ]
    already = {e["run_id"] for e in events if e["event"].startswith("Outcome was already written")}
    assert already == cut
    assert not [e for e in events if e["event"].startswith("Late outcome rejected")]


def test_a_late_outcome_is_logged_with_its_run_pipeline_and_attempt(
    engine: Engine, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cancelled while it ran: its outcome is refused, and the warning names the run."""
    run_id = _enqueue(engine, "test.noop")
    real = queries.exchange

    def cancel_first(conn: Any, **turn: Any) -> Any:
        if turn["successes"]:
            with engine.begin() as other:
                queries.cancel(other, run_id)
        return real(conn, **turn)

    monkeypatch.setattr(queries, "exchange", cancel_first)
    with structlog.testing.capture_logs() as events:
        assert run_burst(make_settings()) == 0
    late = [e for e in events if e["event"].startswith("Late outcome rejected")]
    assert [(e["run_id"], e["pipeline"], e["attempt"]) for e in late] == [(run_id, "test.noop", 1)]
    assert fetch_run(engine, run_id).status == RunStatus.CANCELLED


def test_a_stopping_worker_gives_back_runs_claimed_by_a_turn_whose_reply_was_lost(
    engine: Engine, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [_enqueue(engine, "test.noop") for _ in range(2)]
    real = queries.exchange

    def cut_after_commit(conn: Any, **turn: Any) -> Any:
        real(conn, **turn)
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(queries, "exchange", cut_after_commit)
    worker = build(make_settings())
    assert worker.producer.claim(time.monotonic(), 2) is None
    assert {fetch_run(engine, i).status for i in ids} == {RunStatus.RUNNING}
    worker.request_stop()
    worker.session.retry_at = 0.0
    monkeypatch.setattr(queries, "exchange", real)
    assert worker.step(time.monotonic()) is True
    worker.after_wait(time.monotonic())
    assert [(fetch_run(engine, i).status, fetch_run(engine, i).attempt) for i in ids] == [
        (RunStatus.PENDING, 0)
    ] * 2
    worker.engine.dispose()


def test_a_run_whose_outcome_waits_for_the_database_keeps_its_heartbeat(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """The database is back, the worker has not written a run's outcome yet (its backoff) but has
    beaten: the run is still its own, not recovered as interrupted, and the outcome is written."""
    run_id = _enqueue(engine, "test.noop")
    settings = make_settings()
    worker = build(settings)
    try:
        with engine.begin() as conn:
            (run,) = worker.exchange(conn, [], [], limit=1)[1]
        worker.completer.record(Outcome(run, 0.0, '"done"'))
        worker.session.retry_at = time.monotonic() + 3600  # a write failed: the next one waits
        with engine.begin() as conn:  # silent since the outage began
            conn.execute(text("UPDATE runs SET heartbeat_at = now() - interval '1 hour'"))
        worker.heartbeat.run_once()
        with engine.begin() as conn:
            assert queries.recover(conn, settings.stale_after) == []
        worker.session.retry_at = 0.0
        worker.completer.flush()
    finally:
        worker.engine.dispose()
    run = fetch_run(engine, run_id)
    assert (run.status, run.result) == (RunStatus.SUCCEEDED, "done")


def test_runs_claimed_ahead_are_given_back_untouched_at_shutdown(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A stopping worker returns the runs it claimed but never started: pending, attempt not used."""
    ids = [_enqueue(engine, "test.noop") for _ in range(3)]
    worker = build(make_settings())
    with engine.begin() as conn:
        worker.producer.claimed.extend(worker.exchange(conn, [], [], limit=3)[1])
    assert {fetch_run(engine, i).status for i in ids} == {RunStatus.RUNNING}
    worker.request_stop()
    assert worker.step(time.monotonic()) is True
    worker.after_wait(time.monotonic())
    for run_id in ids:
        run = fetch_run(engine, run_id)
        assert (run.status, run.attempt) == (RunStatus.PENDING, 0)
    worker.engine.dispose()


def test_an_outcome_sent_before_the_grace_ended_is_kept_not_released(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A run that ended just before the grace ran out, its outcome not yet read (the loop was
    waiting on the database): its result is recorded, not thrown away by releasing the run."""
    run_id = _enqueue(engine, "test.echo", {"a": 1})
    worker = build(make_settings(SHUTDOWN_GRACE="0s"))
    worker.pool.start()
    try:
        # Every executor ready: the next message can only be the run's outcome.
        wait_until(
            lambda: (
                [worker.pool.collect(wait(worker.pool.connections(), 0.1))]
                and worker.pool.free == worker.pool.size
            )
        )
        with engine.begin() as conn:
            (run,) = worker.exchange(conn, [], [], limit=1)[1]
        assert worker.pool.hand_over(deque([run])) == [run]
        wait_until(lambda: wait(worker.pool.connections(), 0.1), what="the outcome to be sent")
        worker.request_stop()  # the grace (0 s) is over before the loop reads the outcome
        assert worker.step(time.monotonic()) is True
        worker.after_wait(time.monotonic())
    finally:
        worker.pool.close()
        worker.engine.dispose()
    run = fetch_run(engine, run_id)
    assert (run.status, run.result, run.attempt) == (RunStatus.SUCCEEDED, {"a": 1}, 1)


@pytest.mark.parametrize(
    ("how", "error"),
    [("nul", "ValueError: a\ufffdb"), ("surrogate", "FileNotFoundError: cannot open report-\ufffd.csv")],
)
def test_an_error_postgres_cannot_store_is_stored_visibly_replaced(
    engine: Engine, make_settings: Callable[..., Settings], how: str, error: str
) -> None:
    """A NUL or an undecodable file name in an error fails its run with U+FFFD in their place."""
    bad = _enqueue(engine, "test.unstorable_error", {"how": how})
    later = _enqueue(engine, "test.noop")
    assert run_burst(make_settings(WORKER_CONCURRENCY=1)) == 0
    run = fetch_run(engine, bad)
    assert (run.status, run.error) == (RunStatus.FAILED, error)
    assert error.split(": ", 1)[1] in run.errors[0]["traceback"]
    assert fetch_run(engine, later).status == RunStatus.SUCCEEDED


def test_a_result_postgres_cannot_store_is_stored_visibly_replaced(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A NUL and a lone surrogate in a result, key and value, are stored as U+FFFD."""
    run_id = _enqueue(engine, "test.unstorable_result")
    run_burst(make_settings())
    run = fetch_run(engine, run_id)
    assert (run.status, run.result) == (RunStatus.SUCCEEDED, {"a\ufffdb": "report-\ufffd.csv"})


@pytest.mark.parametrize("how", ["cyclic", "deep"])
def test_a_result_that_contains_itself_or_is_too_deep_fails_at_once(
    engine: Engine, make_settings: Callable[..., Settings], how: str
) -> None:
    """Such a result fails its run on the first attempt with the reason, not as a crash retried."""
    run_id = _enqueue(engine, "test.cyclic_result", {"how": how})
    run_burst(make_settings())
    run = fetch_run(engine, run_id)
    assert (run.status, run.attempt, error_kinds(run)) == (RunStatus.FAILED, 1, ["invalid"])
    assert "not JSON: it contains itself or is nested too deeply" in run.error


def test_an_error_the_loop_does_not_handle_ends_the_worker_and_its_executors(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """An outcome that cannot be written ends the worker: executors gone, no transaction left open."""
    run_id = _enqueue(engine, "test.noop")
    worker = build(make_settings(), burst=True)
    worker.completer.transitions.append(Transition(run_id, 1, RunStatus.FAILED, entry={"at": object()}))
    with pytest.raises(TypeError):
        worker.run()
    assert multiprocessing.active_children() == []
    with engine.connect() as conn:
        open_transactions = conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'")
        ).scalar_one()
    assert open_transactions == 0
