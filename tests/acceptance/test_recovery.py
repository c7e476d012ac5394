"""Workers that die: interrupted runs are found, resumed from their last step, once, and bounded."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app import enqueue, queries, recovery
from app.settings import Settings
from app.states import RunStatus
from tests.support.runs import executions, fetch_run, running_run, worker_row
from tests.support.waiting import wait_until
from tests.support.workers import process_alive, run_burst

Spawn = Callable[..., subprocess.Popen[str]]
Orbit = Callable[..., subprocess.CompletedProcess[str]]


def _notes(engine: Engine, run_id: int) -> list[str]:
    return [row.note for row in executions(engine) if row.run_id == run_id]


def _kill_during_step_two(engine: Engine, spawn_worker: Spawn, block_file: Path) -> int:
    """Start a three-step run, SIGKILL its worker while step two is blocked; returns the run id."""
    with engine.begin() as conn:
        run_id = enqueue("test.steps", {"block_file": str(block_file)}, connection=conn)
    worker = spawn_worker("--concurrency", "1")
    wait_until(lambda: "two" in _notes(engine, run_id), what="step two to start")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    return run_id


def _assert_resumed_after_step_one(engine: Engine, run_id: int) -> None:
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert run.result == {"result": 20}
    notes = _notes(engine, run_id)
    assert notes.count("one") == 1
    assert notes.count("two") == 2
    assert notes.count("three") == 1
    assert [e["kind"] for e in run.errors] == ["interrupted"]


def test_a_killed_worker_is_detected_and_recover_resumes_after_the_last_step(
    engine: Engine, spawn_worker: Spawn, orbit: Orbit, tmp_path: Path
) -> None:
    """SIGKILL during step two: check-interrupted reports it, recover resumes it, step one runs once."""
    block = tmp_path / "go"
    run_id = _kill_during_step_two(engine, spawn_worker, block)

    check = wait_until(
        lambda: (proc := orbit("check-interrupted")).returncode == 1 and proc,
        what="the run to be reported as interrupted",
    )
    assert str(run_id) in check.stdout and "one" in check.stdout

    dry = orbit("recover")
    assert dry.returncode == 0 and f"would resume: run {run_id}" in dry.stdout
    assert fetch_run(engine, run_id).status == RunStatus.RUNNING

    done = orbit("recover", "--auto-resume")
    assert done.returncode == 0, done.stderr
    assert "Recovered 1 run(s)." in done.stdout
    assert fetch_run(engine, run_id).status == RunStatus.PENDING
    assert orbit("check-interrupted").returncode == 0

    block.touch()
    assert spawn_worker("--burst").wait(timeout=60) == 0
    _assert_resumed_after_step_one(engine, run_id)


def test_workers_rescue_interrupted_runs_on_their_own(
    engine: Engine, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """With no operator, another worker's rescuer resumes the run and finishes it."""
    block = tmp_path / "go"
    run_id = _kill_during_step_two(engine, spawn_worker, block)
    block.touch()
    rescuer = spawn_worker("--concurrency", "1", env={"RECOVERY_INTERVAL": "200ms"})
    wait_until(
        lambda: fetch_run(engine, run_id).status == RunStatus.SUCCEEDED,
        what="the rescued run to finish",
    )
    _assert_resumed_after_step_one(engine, run_id)
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(timeout=30) == 0


def _stale_running_run(engine: Engine, pipeline: str = "test.noop") -> int:
    """A run claimed by a worker that then vanished (its heartbeat is an hour old)."""
    with engine.begin() as conn:
        run_id = enqueue(pipeline, {}, connection=conn)
        queries.exchange(conn, worker_id="gone", limit=1, defaults={pipeline: (3, 60.0)})
        conn.execute(text("UPDATE runs SET heartbeat_at = now() - interval '1 hour'"))
    return run_id


def test_racing_recoveries_resume_a_run_once(engine: Engine, make_settings: Callable[..., Settings]) -> None:
    """Eight recoveries started together: exactly one resumes the run, the rest find nothing."""
    run_id = _stale_running_run(engine)
    stale_after = make_settings().stale_after
    barrier = threading.Barrier(8)
    recovered: list[int] = []

    def recover() -> None:
        with engine.begin() as conn:
            barrier.wait(timeout=30)
            recovered.extend(row.id for row in recovery.recover_interrupted(conn, stale_after))

    threads = [threading.Thread(target=recover) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert recovered == [run_id]
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.PENDING
    assert [e["kind"] for e in run.errors] == ["interrupted"]


def test_the_rescuer_runs_on_one_worker_at_a_time(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """While one worker holds the rescuer lock, another's pass does nothing."""
    _stale_running_run(engine)
    rescuer = recovery.Rescuer(make_settings().stale_after, make_settings().WORKER_RETENTION)
    with engine.begin() as first, engine.begin() as second:
        assert len(rescuer.run_once(first) or []) == 1
        assert rescuer.run_once(second) is None


def test_a_run_that_kills_its_worker_every_time_ends_failed(
    engine: Engine, spawn_worker: Spawn, orbit: Orbit
) -> None:
    """Interrupted attempts count: after max_attempts (2) the run is failed, not resumed forever."""
    with engine.begin() as conn:
        run_id = enqueue("test.kill_worker", {}, connection=conn)
    for _ in range(2):
        worker = spawn_worker("--concurrency", "1")
        assert worker.wait(timeout=60) == -signal.SIGKILL
        wait_until(lambda: orbit("check-interrupted").returncode == 1, what="the run to go stale")
        assert orbit("recover", "--auto-resume").returncode == 0
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.FAILED
    assert run.attempt == 2
    assert [e["kind"] for e in run.errors] == ["interrupted", "interrupted"]
    assert len(executions(engine)) == 2


def test_resume_requeues_a_failed_run_after_its_last_completed_step(
    engine: Engine, make_settings: Callable[..., Settings], orbit: Orbit
) -> None:
    """`orbit resume` on a failed run: pending again, one more attempt, finished steps kept."""
    run_id = _stale_running_run(engine, "test.steps")
    with engine.begin() as conn:
        assert queries.save_step(conn, **_step_one(run_id))
        conn.execute(
            text("UPDATE runs SET status = 'failed', finished_at = now(), max_attempts = 1 WHERE id = :id"),
            {"id": run_id},
        )
    resumed = orbit("resume", str(run_id))
    assert resumed.returncode == 0, resumed.stderr
    run = fetch_run(engine, run_id)
    assert (run.status, run.max_attempts) == (RunStatus.PENDING, 2)
    again = orbit("resume", str(run_id))
    assert again.returncode == 1
    assert (
        again.stderr.strip()
        == f"orbit: run {run_id} is pending: only interrupted, failed, timed_out runs resume"
    )
    assert run_burst(make_settings()) == 0
    assert fetch_run(engine, run_id).result == {"result": 20}
    assert _notes(engine, run_id) == ["two", "three"]


def _step_one(run_id: int) -> dict[str, Any]:
    return dict(
        run_id=run_id, name="one", position=0, status="succeeded", output=1, error=None,
        attempt=1, elapsed=0.0, worker_id="gone",
    )  # fmt: skip


def test_cancel_a_pending_run_at_once(engine: Engine, orbit: Orbit, spawn_worker: Spawn) -> None:
    with engine.begin() as conn:
        run_id = enqueue("test.record", {}, connection=conn)
    result = orbit("cancel", str(run_id))
    assert result.returncode == 0 and "at once" in result.stdout
    assert spawn_worker("--burst").wait(timeout=60) == 0
    assert fetch_run(engine, run_id).status == RunStatus.CANCELLED
    assert executions(engine) == []


def test_cancel_a_running_run_stops_its_executor(engine: Engine, orbit: Orbit, spawn_worker: Spawn) -> None:
    """The worker notices at its next heartbeat, kills the executor, and keeps serving."""
    with engine.begin() as conn:
        run_id = enqueue("test.sleep", {}, connection=conn)
    worker = spawn_worker("--concurrency", "1")
    (start,) = wait_until(lambda: executions(engine, "start"), what="the run to start")
    assert orbit("cancel", str(run_id)).returncode == 0
    wait_until(lambda: not process_alive(start.pid), what="the executor to be stopped")
    run = fetch_run(engine, run_id)
    assert run.status == RunStatus.CANCELLED
    with engine.begin() as conn:
        after = enqueue("test.record", {}, connection=conn)
    wait_until(lambda: fetch_run(engine, after).status == RunStatus.SUCCEEDED, what="the next run")
    assert worker.poll() is None
    assert executions(engine, "after-sleep") == []


def test_a_late_checkpoint_from_a_lost_attempt_is_rejected(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """An executor that outlived its worker cannot write a step once the run was recovered."""
    run_id = _stale_running_run(engine, "test.steps")
    with engine.begin() as conn:
        assert recovery.recover_interrupted(conn, make_settings().stale_after)
        assert queries.save_step(conn, **_step_one(run_id)) is False
        late = queries.Success(run_id, 1, "1")
        assert queries.exchange(conn, worker_id="gone", successes=[late]) == (set(), [])
    with engine.connect() as conn:
        assert queries.run_steps(conn, run_id) == []


@pytest.mark.parametrize(("stale_after", "kept"), [("1h", set()), ("30d", {"dead-with-a-run"})])
def test_the_rescuer_prunes_long_gone_workers_only(
    engine: Engine, make_settings: Callable[..., Settings], stale_after: str, kept: set[str]
) -> None:
    """Stopped or silent past WORKER_RETENTION: deleted, unless a run is still theirs."""
    day = 24 * 3600
    worker_row(engine, "alive")
    worker_row(engine, "stopped-recently", heartbeat_ago=60, stopped=True)
    worker_row(engine, "stopped-long-ago", heartbeat_ago=2 * day, stopped=True)
    worker_row(engine, "silent-long-ago", heartbeat_ago=2 * day)
    worker_row(engine, "dead-with-a-run", heartbeat_ago=2 * day)
    run_id = running_run(engine, "test.noop", "dead-with-a-run", heartbeat_ago=2 * day)
    settings = make_settings(WORKER_RETENTION="1d", STALE_AFTER=stale_after)
    rescuer = recovery.Rescuer(settings.stale_after, settings.WORKER_RETENTION)
    with engine.begin() as conn:
        rescuer.run_once(conn)
    with engine.connect() as conn:
        left = set(conn.execute(text("SELECT id FROM workers")).scalars())
    assert left == {"alive", "stopped-recently"} | kept
    expected = RunStatus.RUNNING if kept else RunStatus.PENDING
    assert fetch_run(engine, run_id).status == expected
