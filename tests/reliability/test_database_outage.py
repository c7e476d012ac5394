"""Scenario 5: the database goes away while runs flow; workers reconnect on their own, lose nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from app import enqueue, enqueue_many
from tests.reliability.conftest import PrivateServer
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

POLL_INTERVAL = 1.0


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


def _restart(server: PrivateServer, engine: Engine) -> None:
    engine.dispose()
    server.restart()
    # Through PgBouncer, clients are refused for a moment after the server is back (its
    # server_login_retry): the test's own enqueue waits for that, the workers ride it out.
    wait_until(lambda: _answers(engine), what="the database to answer through its URL")


def _answers(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError:
        return False
    return True


def _terminate_connections(server: PrivateServer, engine: Engine) -> None:
    with engine.connect() as conn:
        killed = conn.execute(
            text("""SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()""")
        ).scalar_one()
    engine.dispose()
    assert killed >= 2, "the workers had no connection to cut"


@pytest.mark.parametrize("outage", [_restart, _terminate_connections], ids=["restart", "terminate-backends"])
def test_an_outage_loses_no_run_and_runs_none_twice(
    private_server: PrivateServer,
    private_env: dict[str, str],
    tmp_path: Path,
    figures: Callable[..., None],
    outage: Callable[[PrivateServer, Engine], None],
) -> None:
    log = tmp_path / "ticks"
    engine = private_server.engine()
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE runs, run_steps, workers RESTART IDENTITY"))
    before = _enqueue(engine, 100, log)
    env = {**private_env, "POLL_INTERVAL": f"{POLL_INTERVAL}s"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "app.worker", "--concurrency", "4"],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / f"w{i}.err").open("w"),
        )
        for i in range(2)
    ]  # fmt: skip
    try:
        wait_until(lambda: len(_lines(log)) >= 20, what="runs to flow before the outage")
        outage(private_server, engine)
        back = time.monotonic()
        after = _enqueue(engine, 50, log)
        wait_until(
            lambda: _statuses(engine) == Counter(succeeded=150), timeout=90, what="every run to succeed"
        )
        recovered_in = time.monotonic() - back
        # Once everything drained, a new run is picked up within a poll interval (or at once, by NOTIFY).
        with engine.begin() as conn:
            probe = enqueue("test.tick", {"seconds": 0, "log": str(log)}, connection=conn)
        wait_until(
            lambda: probe in dict(_lines(log)), timeout=POLL_INTERVAL + 5, what="a new run after the outage"
        )
        assert all(worker.poll() is None for worker in workers), "a worker died with the database"
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=60) for worker in workers]
        engine.dispose()
    assert codes == [0, 0]
    executed = Counter(run for run, _ in _lines(log))
    twice = {run: n for run, n in executed.items() if n > 1}
    lost = (set(before) | set(after) | {probe}) - set(executed)
    figures(runs=151, lost=len(lost), executed_twice=len(twice), drained_after_s=round(recovered_in, 2))
    assert not lost
    assert twice == {}, f"executed more than once: {twice}"
