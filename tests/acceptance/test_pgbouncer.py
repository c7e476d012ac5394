"""PgBouncer in transaction mode, as hosted deployments commonly run it: ``DATABASE_URL`` through the pooler
with ``?pgbouncer=true`` and ``DIRECT_URL`` to the server. Enqueues, claims, outcomes and the
CLI go through the pooler without a database error; LISTEN (on DIRECT_URL) still wakes workers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app import enqueue, enqueue_many
from app.database import make_engine
from tests.support.fixtures import prepare
from tests.support.paths import ROOT
from tests.support.servers import Scratch, TestServer, pgbouncer_in_front
from tests.support.waiting import wait_until

RUNS = 2_000


@pytest.fixture(scope="module")
def pooled(server: TestServer) -> Iterator[Scratch]:
    """A migrated database of its own, reached through PgBouncer in transaction mode."""
    with pgbouncer_in_front(server) as bouncer, bouncer.scratch_database() as database:
        assert "pgbouncer=true" in database.url
        prepare(database)
        yield database


@pytest.fixture
def through_pooler(pooled: Scratch) -> Iterator[Engine]:
    """An engine on the pooled URL (its ``?pgbouncer=true`` turns prepared statements off)."""
    engine = make_engine(pooled.url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE runs, run_steps, workers RESTART IDENTITY CASCADE"))
    yield engine
    engine.dispose()


def _workers(env: dict[str, str], tmp_path: Path, count: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "app.worker", "--concurrency", "4", "--worker-id", f"pooled-{i}"],
            env={**env, "LOGS_DIR": str(tmp_path / f"w{i}")},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(count)
    ]


def _log_lines(tmp_path: Path) -> list[dict[str, object]]:
    return [
        json.loads(line) for log in tmp_path.glob("w*/worker.log") for line in log.read_text().splitlines()
    ]


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def test_two_workers_drain_through_pgbouncer_without_a_database_error(
    pooled: Scratch,
    through_pooler: Engine,
    worker_env: dict[str, str],
    orbit: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    """2,000 runs enqueued through the pooler (one by one, in a batch, and from the CLI) are all
    run by two workers through it; their logs hold no error; an idle worker polling once a minute
    starts a new run within seconds, woken by LISTEN on DIRECT_URL."""
    env = {**worker_env, **pooled.env(), "POLL_INTERVAL": "60s", "HEARTBEAT_INTERVAL": "1s"}
    workers = _workers(env, tmp_path, 2)
    try:
        wait_until(lambda: _count(through_pooler, "SELECT count(*) FROM workers") == 2, what="workers")
        with through_pooler.connect() as conn:
            for _ in range(RUNS // 2 - 10):  # the same statement many times: psycopg would prepare it
                enqueue("test.noop", {}, connection=conn)
                conn.commit()
        with through_pooler.begin() as conn:
            enqueue_many([("test.noop", {}) for _ in range(RUNS // 2)], connection=conn)
        for _ in range(10):
            assert orbit("enqueue", "test.noop", env=pooled.env()).returncode == 0
        done = "SELECT count(*) FROM runs WHERE status = 'succeeded'"
        wait_until(lambda: _count(through_pooler, done) == RUNS, timeout=120, what="the drain")
        wait_until(lambda: _count(through_pooler, "SELECT count(*) FROM runs WHERE status = 'running'") == 0)
        enqueued = time.monotonic()
        assert orbit("enqueue", "test.noop", env=pooled.env()).returncode == 0
        wait_until(lambda: _count(through_pooler, done) == RUNS + 1, timeout=30, what="a woken worker")
        assert time.monotonic() - enqueued < 15  # far from the 60 s poll
        status = orbit("status", "1", env=pooled.env())
        assert status.returncode == 0, status.stderr
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=60) for worker in workers]
    assert codes == [0, 0]
    lines = _log_lines(tmp_path)
    assert sum(1 for line in lines if line["event"] == "Run succeeded") == RUNS + 1
    troubles = [
        line for line in lines if line["level"] in ("error", "critical") or "Database" in str(line["event"])
    ]
    assert troubles == [], troubles[:3]
