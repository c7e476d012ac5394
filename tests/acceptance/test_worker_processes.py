"""Real worker processes: exclusive claiming under contention, signals and database trouble."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text

from app import enqueue, enqueue_many
from app.states import RunStatus
from tests.support.paths import ROOT
from tests.support.runs import executions, fetch_run
from tests.support.waiting import wait_until
from tests.support.workers import process_alive, stderr_of

N_RUNS = 5000

Spawn = Callable[..., subprocess.Popen[str]]


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _exit_code(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    return proc.wait(timeout=timeout)


def test_four_workers_execute_each_of_5000_runs_exactly_once(engine: Engine, spawn_worker: Spawn) -> None:
    """Four burst workers racing for 5,000 runs execute every run once and only once."""
    with engine.begin() as conn:
        enqueue_many([("test.record", {"i": i}) for i in range(N_RUNS)], connection=conn)
    workers = [spawn_worker("--burst", "--concurrency", "4") for _ in range(4)]
    assert [_exit_code(w, timeout=300) for w in workers] == [0, 0, 0, 0]
    assert _count(engine, "SELECT count(*) FROM executions") == N_RUNS
    assert _count(engine, "SELECT count(DISTINCT run_id) FROM executions") == N_RUNS
    assert _count(engine, "SELECT count(*) FROM runs WHERE status <> 'succeeded'") == 0
    assert _count(engine, "SELECT count(DISTINCT worker_id) FROM runs") > 1


def test_sigterm_lets_a_run_in_flight_finish_and_claims_nothing_more(
    engine: Engine, spawn_worker: Spawn
) -> None:
    """On SIGTERM the worker stops claiming, lets its run finish within the grace, exits 0."""
    with engine.begin() as conn:
        slow = enqueue("test.cooperative", {"seconds": 1}, connection=conn)
    worker = spawn_worker("--concurrency", "1", env={"SHUTDOWN_GRACE": "30s"})
    wait_until(lambda: executions(engine, "start"), what="the slow run to start")
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE runs DISABLE TRIGGER runs_notify"))
        try:
            worker.send_signal(signal.SIGTERM)
            wait_until(lambda: _count(engine, "SELECT 1") == 1)
            later = enqueue("test.noop", {}, connection=conn)
        finally:
            conn.execute(text("ALTER TABLE runs ENABLE TRIGGER runs_notify"))
    assert _exit_code(worker) == 0
    run = fetch_run(engine, slow)
    assert run.status == RunStatus.SUCCEEDED
    assert run.result in ("finished", "stopped early")
    assert fetch_run(engine, later).status == RunStatus.PENDING
    with engine.connect() as conn:
        stopped = conn.execute(text("SELECT stopped_at FROM workers")).scalar_one()
    assert stopped is not None


def test_runs_past_the_grace_are_released_without_using_an_attempt(
    engine: Engine, spawn_worker: Spawn
) -> None:
    """A run still going when the grace ends is stopped and put back to pending, attempt refunded."""
    with engine.begin() as conn:
        stuck = enqueue("test.sleep", {}, connection=conn)
    worker = spawn_worker("--concurrency", "1", env={"SHUTDOWN_GRACE": "300ms"})
    (start,) = wait_until(lambda: executions(engine, "start"), what="the run to start")
    worker.send_signal(signal.SIGTERM)
    assert _exit_code(worker) == 0
    run = fetch_run(engine, stuck)
    assert (run.status, run.attempt) == (RunStatus.PENDING, 0)
    assert not process_alive(start.pid)


def test_a_second_signal_stops_at_once(engine: Engine, spawn_worker: Spawn) -> None:
    """A second SIGTERM ends the grace early; the run goes back to pending."""
    with engine.begin() as conn:
        stuck = enqueue("test.sleep", {}, connection=conn)
    worker = spawn_worker("--concurrency", "1", env={"SHUTDOWN_GRACE": "10m"})
    wait_until(lambda: executions(engine, "start"), what="the run to start")
    worker.send_signal(signal.SIGTERM)
    # Two signals sent before the worker's handler runs arrive as one (the kernel keeps one
    # pending SIGTERM): the second is sent once the first has been handled.
    wait_until(lambda: "Shutting down" in stderr_of(worker), what="the first signal to be handled")
    worker.send_signal(signal.SIGTERM)
    assert _exit_code(worker, timeout=30) == 0
    assert fetch_run(engine, stuck).status == RunStatus.PENDING


def _terminate_worker_connections(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("""SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                        WHERE application_name = 'orbit' AND pid <> pg_backend_pid()
                          AND datname = current_database()""")
            ).scalar_one()
        )


def test_the_worker_survives_losing_its_database_connections(engine: Engine, spawn_worker: Spawn) -> None:
    """Killed connections are re-opened: runs before and after the cut all finish, none twice."""
    with engine.begin() as conn:
        first = enqueue_many([("test.record", {}) for _ in range(20)], connection=conn)
    worker = spawn_worker("--concurrency", "2")
    wait_until(lambda: _count(engine, "SELECT count(*) FROM runs WHERE status = 'succeeded'") == 20)
    assert _terminate_worker_connections(engine) >= 1
    with engine.begin() as conn:
        second = enqueue_many([("test.record", {}) for _ in range(20)], connection=conn)
    done = "SELECT count(*) FROM runs WHERE status = 'succeeded'"
    wait_until(lambda: _count(engine, done) == 40, what="runs enqueued after the cut")
    assert worker.poll() is None
    assert _count(engine, "SELECT count(*) FROM executions") == len(first) + len(second)
    worker.send_signal(signal.SIGTERM)
    assert _exit_code(worker) == 0


def test_a_signal_to_the_whole_process_group_is_still_a_graceful_stop(
    engine: Engine, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """supervisord's stopasgroup and Ctrl-C signal every process of the group: the run still finishes."""
    with engine.begin() as conn:
        slow = enqueue("test.cooperative", {"seconds": 1}, connection=conn)
    with (tmp_path / "worker.err").open("w") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.worker", "--concurrency", "1"],
            env=worker_env, cwd=ROOT, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: executions(engine, "start"), what="the run to start")
        os.killpg(worker.pid, signal.SIGTERM)
        assert _exit_code(worker) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    run = fetch_run(engine, slow)
    assert run.status == RunStatus.SUCCEEDED
    assert run.result in ("finished", "stopped early")


def test_an_error_with_a_nul_byte_fails_its_run_and_the_worker_goes_on(
    engine: Engine, spawn_worker: Spawn
) -> None:
    """A NUL byte in an error is stored visibly replaced; the worker neither crashes nor hangs."""
    with engine.begin() as conn:
        bad = enqueue("test.unstorable_error", {}, connection=conn)
        later = enqueue("test.noop", {}, connection=conn)
    worker = spawn_worker("--burst", "--concurrency", "1")
    assert _exit_code(worker) == 0
    run = fetch_run(engine, bad)
    assert run.status == RunStatus.FAILED
    assert run.error == "ValueError: a\ufffdb"
    assert run.errors[0]["message"] == "a\ufffdb"
    assert fetch_run(engine, later).status == RunStatus.SUCCEEDED


def _fragile(tmp_path: Path, worker_env: dict[str, str], source: str) -> dict[str, str]:
    """A pipeline module of ``source`` in ``tmp_path``, and the environment that loads it."""
    (tmp_path / "fragile_pipelines.py").write_text(source)
    return {
        "ORBIT_PIPELINES": f"{worker_env['ORBIT_PIPELINES']},fragile_pipelines",
        "PYTHONPATH": f"{worker_env['PYTHONPATH']}{os.pathsep}{tmp_path}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def test_a_module_broken_over_a_running_worker_changes_nothing_until_it_restarts(
    engine: Engine, spawn_worker: Spawn, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    """A pipeline module broken after start, then an executor crash: its replacement is forked
    with the code the worker started with, and runs the next run."""
    env = _fragile(tmp_path, worker_env, "")
    with engine.begin() as conn:
        broken = enqueue(
            "test.break_module", {"path": str(tmp_path / "fragile_pipelines.py")}, connection=conn
        )
    worker = spawn_worker("--concurrency", "1", env=env)
    try:
        wait_until(lambda: fetch_run(engine, broken).status == RunStatus.FAILED, what="the crash")
        with engine.begin() as conn:
            later = enqueue("test.noop", connection=conn)
        wait_until(lambda: fetch_run(engine, later).status == RunStatus.SUCCEEDED, what="the next run")
    finally:
        worker.send_signal(signal.SIGTERM)
    assert _exit_code(worker) == 0


def test_a_fork_server_killed_is_replaced_and_the_worker_goes_on(engine: Engine, spawn_worker: Spawn) -> None:
    """Its executors die with it: the run that killed it fails as a crash, and the worker forks
    the next executors from a new server."""
    with engine.begin() as conn:
        killer = enqueue("test.kill_fork_server", {}, connection=conn)
    worker = spawn_worker("--concurrency", "2")
    try:
        wait_until(lambda: fetch_run(engine, killer).status == RunStatus.FAILED, what="the crash")
        assert fetch_run(engine, killer).errors[0]["kind"] == "crash"
        with engine.begin() as conn:
            later = [enqueue("test.noop", connection=conn) for _ in range(4)]
        wait_until(
            lambda: all(fetch_run(engine, run).status == RunStatus.SUCCEEDED for run in later),
            what="the runs after it",
        )
    finally:
        worker.send_signal(signal.SIGTERM)
    assert _exit_code(worker) == 0


def test_an_executor_that_cannot_start_again_ends_the_worker_with_one_line(
    engine: Engine, spawn_worker: Spawn, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    """A pipeline module each executor imports itself (it opens a socket at import, so the fork
    server does not load it), broken after start: the executor started to replace a crashed one
    fails to import it, and the worker exits 1 at once, saying why in one line."""
    env = _fragile(tmp_path, worker_env, "import socket\n\n_connection = socket.socket()\n")
    with engine.begin() as conn:
        run_id = enqueue(
            "test.break_module", {"path": str(tmp_path / "fragile_pipelines.py")}, connection=conn
        )
    worker = spawn_worker("--concurrency", "1", env=env)
    assert _exit_code(worker) == 1
    assert "orbit: an executor process failed to start" in stderr_of(worker).splitlines()[-1]
    assert fetch_run(engine, run_id).status == RunStatus.FAILED


def _pids(path: Path, count: int) -> list[int]:
    """The pids written to ``path``, once there are ``count`` of them."""
    pids = [int(line) for line in path.read_text().split()] if path.exists() else []
    return pids if len(pids) >= count else []


def test_what_runs_started_dies_with_their_worker_even_on_kill_9(
    engine: Engine, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """kill -9 of a worker: the processes its runs started (a running run's, and one a finished
    run left behind) die too, instead of living on under init while the runs run elsewhere."""
    pidfile = tmp_path / "pids"
    with engine.begin() as conn:
        enqueue("test.sleepers", {"pidfile": str(pidfile), "linger": True}, connection=conn)
        enqueue("test.sleepers", {"pidfile": str(pidfile), "count": 2}, connection=conn)
    worker = spawn_worker("--concurrency", "2")
    pids = wait_until(lambda: _pids(pidfile, 3), what="the runs' sleep processes")
    try:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        wait_until(lambda: not any(map(process_alive, pids)), timeout=10, what="the runs' processes to die")
    finally:
        for pid in filter(process_alive, pids):
            os.kill(pid, signal.SIGKILL)


def test_a_run_can_stop_the_process_it_started_with_sigterm(engine: Engine, spawn_worker: Spawn) -> None:
    """What a run starts has SIGINT and SIGTERM at their defaults, so terminate() stops it."""
    with engine.begin() as conn:
        run_id = enqueue("test.terminate_child", {}, connection=conn)
    worker = spawn_worker("--burst", "--concurrency", "1")
    assert _exit_code(worker) == 0
    run = fetch_run(engine, run_id)
    assert (run.status, run.result) == (RunStatus.SUCCEEDED, {"status": -signal.SIGTERM, "ignored": []})
