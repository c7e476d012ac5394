"""The executor pool on its own, outside a worker (its runs never connect to the database): a run
queued behind a running one, its time limit, and what happens to it when its executor is killed,
crashes or is told to stop."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest

from app.database import Database
from app.executor import ChildConfig, ExecutorPool, Outcome
from app.outcomes import Failure
from app.queries import ClaimedRun
from app.states import ErrorKind
from tests.support.paths import TEST_PIPELINES
from tests.support.waiting import wait_until
from tests.support.workers import process_alive

_ids = iter(range(1, 1_000_000))
UNUSED_DATABASE = Database("postgresql+psycopg://unused/x", "postgresql+psycopg://unused/x", False)


def _run(pipeline: str, timeout: float = 30.0, **params: Any) -> ClaimedRun:
    return ClaimedRun(next(_ids), pipeline, json.dumps(params), 1, 1, timeout)


@pytest.fixture
def pool() -> Iterator[ExecutorPool]:
    pool = ExecutorPool(1, ChildConfig("test", UNUSED_DATABASE, (TEST_PIPELINES,), "info"))
    pool.start()
    _drive(pool, lambda outcomes: pool.free == 1)
    yield pool
    pool.close()


def _drive(pool: ExecutorPool, done: Callable[[list[Outcome]], bool], timeout: float = 30.0) -> list[Outcome]:
    """Collect outcomes and enforce time limits, as the worker's loop does, until ``done``."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + timeout
    while not done(outcomes):
        assert time.monotonic() < deadline, f"pool did not get there; outcomes so far: {outcomes}"
        outcomes.extend(pool.collect(wait(pool.connections(), 0.02)))
        outcomes.extend(pool.expire())
    return outcomes


def test_a_run_is_stopped_at_its_limit_while_the_owner_is_busy_elsewhere(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """The worker's loop may be blocked (on a database that stopped answering): the run and what
    it started are killed at its limit anyway, and the owner learns it was a timeout later."""
    pidfile = tmp_path / "grandchild"
    run = _run("test.grandchild", 0.5, pidfile=str(pidfile))
    started = time.monotonic()
    pool.submit(run)
    wait_until(pidfile.exists, what="the run's own child to start")
    grandchild = int(pidfile.read_text())
    wait_until(lambda: not process_alive(grandchild), timeout=10, what="the run's process group to be killed")
    killed_after = time.monotonic() - started
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert outcome.run == run and outcome.failure is not None
    assert outcome.failure.kind == ErrorKind.TIMEOUT
    assert 0.5 <= killed_after < 5


def test_a_queued_run_starts_when_the_first_ends_and_its_limit_counts_from_then(pool: ExecutorPool) -> None:
    """Each run sleeps 0.4 s under a 0.7 s limit: counted from the hand-over, the second would fail."""
    first, second = _run("test.nap", 0.7, seconds=0.4), _run("test.nap", 0.7, seconds=0.4)
    pool.submit(first)
    pool.submit(second, queue=True)
    assert pool.free == 0 and pool.queueable == 0 and pool.busy == [first, second]
    outcomes = _drive(pool, lambda o: len(o) == 2)
    assert [(o.run, o.failure) for o in outcomes] == [(first, None), (second, None)]
    assert 0.35 < outcomes[1].duration < 0.7


def test_a_queued_run_past_its_own_limit_is_killed(pool: ExecutorPool, tmp_path: Path) -> None:
    first = _run("test.nap", seconds=0.1)
    second = _run("test.nap", 0.3, seconds=30, path=str(tmp_path / "second"))
    pool.submit(first)
    pool.submit(second, queue=True)
    outcomes = _drive(pool, lambda o: len(o) == 2)
    assert outcomes[0].failure is None
    failure = outcomes[1].failure
    assert failure is not None and failure.kind == ErrorKind.TIMEOUT
    assert (tmp_path / "second").exists()
    assert 0.25 < outcomes[1].duration < 5


@pytest.mark.parametrize("first", ["timeout", "crash"])
def test_when_the_running_run_dies_the_queued_one_comes_back_unstarted(
    pool: ExecutorPool, tmp_path: Path, first: str
) -> None:
    head = _run("test.nap", 0.3, seconds=30) if first == "timeout" else _run("test.crash")
    queued = _run("test.nap", path=str(tmp_path / "queued"))
    pool.submit(head)
    pool.submit(queued, queue=True)
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert outcome.run == head and outcome.failure is not None
    assert outcome.failure.kind == (ErrorKind.TIMEOUT if first == "timeout" else ErrorKind.CRASH)
    assert pool.returned == [queued] and pool.busy == []
    assert not (tmp_path / "queued").exists()


def test_told_to_stop_a_child_returns_its_queued_run_without_starting_it(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    head = _run("test.nap", seconds=0.5, path=str(tmp_path / "head"))
    queued = _run("test.nap", path=str(tmp_path / "queued"))
    pool.submit(head)
    pool.submit(queued, queue=True)
    _drive(pool, lambda o: (tmp_path / "head").exists())
    pool.ask_to_stop()
    (outcome,) = _drive(pool, lambda o: len(o) == 1 and pool.returned == [queued])
    assert outcome.run == head and outcome.failure is None
    assert pool.busy == [] and not (tmp_path / "queued").exists()


def test_a_queued_run_stopped_while_it_waits_is_killed_as_it_starts(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """No longer this worker's: it yields no outcome, and the run ahead of it is not disturbed."""
    head = _run("test.nap", seconds=0.3)
    queued = _run("test.nap", seconds=30, path=str(tmp_path / "queued"))
    pool.submit(head)
    pool.submit(queued, queue=True)
    gone = Failure(ErrorKind.INTERRUPTED, "LeaseLost", "run is no longer owned")
    assert pool.stop(queued.id, gone) == queued
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert outcome.run == head and outcome.failure is None
    _drive(pool, lambda o: pool.free == 1)
    assert pool.busy == [] and pool.returned == []


@pytest.mark.parametrize(("how", "status"), [("exit", 3), ("raise", 1), ("return", 0)])
def test_a_process_the_run_forks_never_speaks_for_it(pool: ExecutorPool, how: str, status: int) -> None:
    """A helper the run forks that calls sys.exit, raises or returns ends there with the status a
    program would have; the run gets its own result, and the next run its own."""
    run = _run("test.fork_helper", how=how)
    pool.submit(run)
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert (outcome.run, outcome.failure) == (run, None)
    assert json.loads(outcome.result_json or "null") == {"from": "the run", "helper_status": status}
    after = _run("test.echo", n=1)
    pool.submit(after)
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert (outcome.run, outcome.failure) == (after, None)
    assert json.loads(outcome.result_json or "null") == {"n": 1}


def test_an_outcome_naming_another_run_or_attempt_is_ignored(pool: ExecutorPool) -> None:
    """Outcomes name their run and attempt: one for another run, or for another attempt of the
    running one, never ends the running run."""
    run = _run("test.forge_outcomes")
    pool.submit(run)
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert (outcome.run, outcome.failure, outcome.result_json) == (run, None, '"its own"')
    _drive(pool, lambda o: pool.free == 1)
    assert pool.busy == [] and pool.returned == []
