"""The database goes away while runs flow: workers reconnect on their own and lose nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine, text

from app import enqueue_many
from tests.conftest import ROOT
from tests.reliability.conftest import PrivateServer
from tests.support.waiting import wait_until


def _lines(log: Path) -> list[tuple[int, int]]:
    if not log.exists():
        return []
    return [
        (int(run), int(attempt))
        for run, attempt, _ in (line.split() for line in log.read_text().splitlines())
    ]


def _statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(text("SELECT status, count(*) FROM runs GROUP BY status")).all()))


def _enqueue(engine: Engine, count: int, log: Path) -> list[int]:
    with engine.begin() as conn:
        return enqueue_many(
            [("test.tick", {"seconds": 0.05, "log": str(log)}) for _ in range(count)], connection=conn
        )


def test_a_database_restart_loses_no_run_and_runs_none_twice(
    private_server: PrivateServer, private_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "ticks"
    engine = private_server.engine()
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE runs, run_steps, workers RESTART IDENTITY"))
    before = _enqueue(engine, 100, log)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "app.worker", "--concurrency", "4"],
            env=private_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / f"w{i}.err").open("w"),
        )
        for i in range(2)
    ]  # fmt: skip
    try:
        wait_until(lambda: len(_lines(log)) >= 20, what="runs to flow before the restart")
        engine.dispose()
        private_server.restart()
        after = _enqueue(engine, 50, log)
        wait_until(
            lambda: _statuses(engine) == Counter(succeeded=150), timeout=90, what="every run to succeed"
        )
        assert all(worker.poll() is None for worker in workers), "a worker died with the database"
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=60) for worker in workers]
        engine.dispose()
    assert codes == [0, 0]
    worker_logs = " ".join(path.read_text() for path in tmp_path.glob("w*.err"))
    assert "Database error; will retry" in worker_logs, "the restart never reached the workers"
    executed = Counter(run for run, _ in _lines(log))
    assert set(executed) == set(before) | set(after)
    twice = {run: n for run, n in executed.items() if n > 1}
    assert twice == {}, f"executed more than once: {twice}"
