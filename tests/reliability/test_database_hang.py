"""Scenario: the database stops answering (a partition: connections open, no reply) while a run
is past its time limit. The limit holds anyway, and the run ends ``timed_out`` once the database
is back; the worker carries on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from subprocess import Popen
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app import enqueue
from app.states import RunStatus
from tests.support.proxy import FreezableProxy, proxy_for, url_through
from tests.support.runs import fetch_run
from tests.support.waiting import wait_until
from tests.support.workers import error_kinds, process_alive, stderr_of

LIMIT = 2.0
HEARTBEAT = 1.0


@pytest.fixture
def proxy(direct_url: str) -> Iterator[FreezableProxy]:
    with proxy_for(direct_url) as proxy:
        yield proxy


def _start(engine: Engine, run_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("""SELECT pid, EXTRACT(EPOCH FROM at) AS at FROM executions
                    WHERE run_id = :id AND note = 'start'"""),
            {"id": run_id},
        ).first()


@pytest.mark.parametrize("hang", ["short", "past the statement deadline"])
def test_a_time_limit_holds_while_the_database_hangs(
    hang: str,
    engine: Engine,
    database_url: str,
    direct_url: str,
    proxy: FreezableProxy,
    spawn_worker: Callable[..., Popen[str]],
    figures: Callable[..., None],
) -> None:
    """A run with a 2 s limit is killed within its limit plus one heartbeat although every
    connection of its worker is frozen, and is recorded timed_out once the database answers. A
    hang longer than the statement deadline is cut: the worker's loop goes on, and retries."""
    env = {
        "DATABASE_URL": url_through(proxy, database_url),
        "DIRECT_URL": url_through(proxy, direct_url),
        "HEARTBEAT_INTERVAL": f"{HEARTBEAT}s",
        "POLL_INTERVAL": "100ms",
        "STATEMENT_TIMEOUT": "1s",  # the client cuts a call after 2 s
    }
    worker = spawn_worker("--concurrency", "1", env=env)
    wait_until(lambda: _count(engine, "SELECT count(*) FROM workers") == 1, what="the worker to register")
    with engine.begin() as conn:
        run_id = enqueue("test.sleep", {"seconds": 3600}, timeout=LIMIT, connection=conn)
    start = wait_until(lambda: _start(engine, run_id), what="the run to start")
    proxy.freeze()  # from here the worker's next heartbeat waits on a database that never answers
    wait_until(lambda: not process_alive(start.pid), timeout=3 * LIMIT, what="the run to be killed")
    killed_after = time.time() - float(start.at)
    assert killed_after < LIMIT + HEARTBEAT, killed_after
    assert fetch_run(engine, run_id).status == RunStatus.RUNNING  # nothing could be written yet
    assert worker.poll() is None
    if hang != "short":
        wait_until(lambda: "did not answer within" in stderr_of(worker), what="the loop to cut its call")
    proxy.thaw()
    run = wait_until(
        lambda: (r := fetch_run(engine, run_id)).status != RunStatus.RUNNING and r, what="the outcome"
    )
    assert run.status == RunStatus.TIMED_OUT and error_kinds(run) == ["timeout"], stderr_of(worker)
    assert worker.poll() is None
    figures(killed_after_s=round(killed_after, 2), limit_s=LIMIT, heartbeat_s=HEARTBEAT)


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())
