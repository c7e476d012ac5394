"""The executor pool on its own, outside a worker (its runs never connect to the database): runs
queued behind a running one, their time limits, and what happens to them when their executor is
killed, crashes or is told to stop."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest

from app.database import Database
from app.executor import ChildConfig, ExecutorPool, Outcome
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


def _hand(pool: ExecutorPool, *runs: ClaimedRun) -> None:
    """Hand ``runs`` to the pool's one executor, queued in order behind the first."""
    todo = deque(runs)
    quick = {run.pipeline for run in [*runs, *pool.busy]}  # queued behind each other as if quick
    assert pool.hand_over(todo, depth=len(runs) + len(pool.busy), quick=quick) == list(runs)


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
    _hand(pool, run)
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
    _hand(pool, first, second)
    assert pool.free == 0 and pool.room(2) == 0 and pool.busy == [first, second]
    outcomes = _drive(pool, lambda o: len(o) == 2)
    assert [(o.run, o.failure) for o in outcomes] == [(first, None), (second, None)]
    assert 0.35 < outcomes[1].duration < 0.7


def test_a_queued_run_past_its_own_limit_is_killed(pool: ExecutorPool, tmp_path: Path) -> None:
    first = _run("test.nap", seconds=0.1)
    second = _run("test.nap", 0.3, seconds=30, path=str(tmp_path / "second"))
    _hand(pool, first, second)
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
    _hand(pool, head, queued)
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
    _hand(pool, head, queued)
    _drive(pool, lambda o: (tmp_path / "head").exists())
    pool.ask_to_stop()
    (outcome,) = _drive(pool, lambda o: len(o) == 1 and pool.returned == [queued])
    assert outcome.run == head and outcome.failure is None
    assert pool.busy == [] and not (tmp_path / "queued").exists()


def test_a_queued_run_stopped_while_it_waits_never_starts(pool: ExecutorPool, tmp_path: Path) -> None:
    """No longer this worker's: it never starts, yields no outcome, and the run ahead of it is not
    disturbed."""
    head = _run("test.nap", seconds=0.3)
    queued = _run("test.nap", seconds=30, path=str(tmp_path / "queued"))
    _hand(pool, head, queued)
    assert pool.stop(queued.id) == queued
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert outcome.run == head and outcome.failure is None
    _drive(pool, lambda o: pool.free == 1)
    assert pool.busy == [] and pool.returned == []
    assert not (tmp_path / "queued").exists()


@pytest.mark.parametrize(("how", "status"), [("exit", 3), ("raise", 1), ("return", 0)])
def test_a_process_the_run_forks_never_speaks_for_it(pool: ExecutorPool, how: str, status: int) -> None:
    """A helper the run forks that calls sys.exit, raises or returns ends there with the status a
    program would have; the run gets its own result, and the next run its own."""
    run = _run("test.fork_helper", how=how)
    _hand(pool, run)
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert (outcome.run, outcome.failure) == (run, None)
    assert json.loads(outcome.result_json or "null") == {"from": "the run", "helper_status": status}
    after = _run("test.echo", n=1)
    _hand(pool, after)
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert (outcome.run, outcome.failure) == (after, None)
    assert json.loads(outcome.result_json or "null") == {"n": 1}


def test_an_outcome_naming_another_run_or_attempt_is_ignored(pool: ExecutorPool) -> None:
    """Outcomes name their run and attempt: one for another run, or for another attempt of the
    running one, never ends the running run."""
    run = _run("test.forge_outcomes")
    _hand(pool, run)
    (outcome,) = _drive(pool, lambda o: len(o) == 1)
    assert (outcome.run, outcome.failure, outcome.result_json) == (run, None, '"its own"')
    _drive(pool, lambda o: pool.free == 1)
    assert pool.busy == [] and pool.returned == []


def _pool(**config: Any) -> ExecutorPool:
    pool = ExecutorPool(
        config.pop("size", 1), ChildConfig("test", UNUSED_DATABASE, (TEST_PIPELINES,), "info", **config)
    )
    pool.start()
    _drive(pool, lambda outcomes: pool.free == pool.size)
    return pool


def test_a_run_past_its_memory_limit_fails_and_its_neighbour_runs_on() -> None:
    """Its executor's group is killed, the failure says the limit and the size reached; the run
    in the other executor finishes, in the same process."""
    pool = _pool(size=2)
    try:
        hog, nap = _run("test.hog"), _run("test.pid", 30.0)
        neighbour = _run("test.nap", seconds=1.0)
        todo = deque([hog, neighbour])
        pool.hand_over(todo, depth=1)
        outcomes = _drive(pool, lambda o: len(o) == 2)
        by_run = {o.run: o for o in outcomes}
        failure = by_run[hog].failure
        assert failure is not None and failure.kind == ErrorKind.MEMORY
        assert failure.type == "MemoryLimit"
        match = re.fullmatch(r"exceeded its memory limit of 160 MB \(reached (\d+) MB\)", failure.message)
        assert match and 160 <= int(match.group(1)) < 600, failure.message
        assert by_run[neighbour].failure is None
        _drive(pool, lambda o: pool.free == 2)
        _hand(pool, nap)
        (after,) = _drive(pool, lambda o: len(o) == 1)
        assert after.failure is None
    finally:
        pool.close()


def test_the_workers_memory_limit_applies_to_pipelines_without_their_own() -> None:
    pool = _pool(max_memory=120 * 2**20)
    try:
        big, small = _run("test.grow", mb=400), _run("test.grow", mb=8)
        _hand(pool, big)
        (outcome,) = _drive(pool, lambda o: len(o) == 1)
        assert outcome.failure is not None and outcome.failure.kind == ErrorKind.MEMORY
        assert "memory limit of 120 MB" in outcome.failure.message
        _drive(pool, lambda o: pool.free == 1)  # its replacement
        _hand(pool, small)
        (outcome,) = _drive(pool, lambda o: len(o) == 1)
        assert outcome.failure is None
    finally:
        pool.close()


def test_an_executor_is_replaced_after_its_share_of_runs_and_gives_back_the_rest() -> None:
    """EXECUTOR_RECYCLE_AFTER=2: the third run queued behind two comes back unstarted, and runs
    in a new executor."""
    pool = _pool(recycle_after=2)
    try:
        runs = [_run("test.pid") for _ in range(3)]
        _hand(pool, *runs)
        outcomes = _drive(pool, lambda o: len(o) == 2 and pool.returned == [runs[2]])
        first = {json.loads(o.result_json or "0") for o in outcomes}
        pool.returned.clear()
        _drive(pool, lambda o: pool.free == 1)
        _hand(pool, runs[2])
        (last,) = _drive(pool, lambda o: len(o) == 1)
        assert len(first) == 1 and json.loads(last.result_json or "0") not in first
    finally:
        pool.close()


def test_an_executor_that_grew_past_the_high_water_mark_is_replaced_between_runs() -> None:
    pool = _pool(recycle_memory=150 * 2**20)
    try:
        grew, small = _run("test.grow", mb=200), _run("test.pid")
        _hand(pool, grew)
        (outcome,) = _drive(pool, lambda o: len(o) == 1)
        assert outcome.failure is None
        grown = json.loads(outcome.result_json or "0")
        _drive(pool, lambda o: pool.pids[0] != grown and pool.free == 1)  # replaced, not only idle
        _hand(pool, small)
        (after,) = _drive(pool, lambda o: len(o) == 1)
        assert json.loads(after.result_json or "0") not in (grown, 0)
    finally:
        pool.close()


def test_executors_share_no_thread_connection_or_lock_with_their_worker() -> None:
    """Started while this process holds a thread and an open connection, the fork server and its
    executors have one thread each and none of this process's sockets."""
    listener = socket.create_server(("127.0.0.1", 0))
    connection = socket.create_connection(listener.getsockname())
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    pool = _pool(size=2)
    try:
        ours = {_inode(sock) for sock in (listener, connection)}
        for pid in pool.pids:
            assert len(os.listdir(f"/proc/{pid}/task")) == 1, pid
            theirs = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            assert not ours & theirs, pid
    finally:
        pool.close()
        stop.set()
        connection.close()
        listener.close()


def _inode(sock: socket.socket) -> str:
    return f"socket:[{os.fstat(sock.fileno()).st_ino}]"


def test_nothing_is_queued_behind_a_run_that_may_be_long() -> None:
    """A run of a pipeline not known to be quick starts in a free executor and nothing waits
    behind it; runs of a quick one queue behind each other."""
    pool = _pool(size=2)
    try:
        long, quick = _run("test.nap", seconds=0.3), [_run("test.echo", n=i) for i in range(4)]
        todo = deque([long, *quick])
        assert pool.hand_over(todo, depth=3, quick={"test.echo"}) == [long, *quick[:3]]
        assert pool.busy == [long, *quick[:3]]  # executor 0: the long run alone; 1: three quick
        assert pool.hand_over(todo, depth=3, quick={"test.echo"}) == [] and list(todo) == [quick[3]]
        outcomes = _drive(pool, lambda o: len(o) == 4)
        assert [o.run for o in outcomes][-1] == long  # the quick runs did not wait for it
    finally:
        pool.close()


def _wait_for(path: Path) -> None:
    """Until ``path`` exists: a run that touches it has started (its outcome not read yet)."""
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def test_stopping_a_run_that_already_ended_loses_nothing_that_ran_after_it(tmp_path: Path) -> None:
    """The executor ran the whole batch before the worker read any of it: stopping the second
    run (no longer this worker's) drops its outcome only; the runs after it are not given back
    to run again."""
    pool = _pool()
    try:
        quick = {"test.echo", "test.nap"}
        first, lost, third = _run("test.echo", n=1), _run("test.echo", n=2), _run("test.echo", n=3)
        last = _run("test.nap", path=str(tmp_path / "last"))
        pool.hand_over(deque([first, lost, third, last]), depth=4, quick=quick)
        _wait_for(tmp_path / "last")
        assert pool.stop(lost.id) is None  # nothing to stop: it ended
        outcomes = _drive(pool, lambda o: len(o) == 3)
        assert [o.run for o in outcomes] == [first, third, last]
        assert pool.returned == [] and pool.busy == []
    finally:
        pool.close()


def test_stopping_the_running_run_first_reads_what_ended_after_it(tmp_path: Path) -> None:
    """The worker still thinks the first run is running, but it ended and the next one too:
    nothing is killed, the first run's outcome is dropped, and the next one's is kept, not
    given back to run again."""
    pool = _pool()
    try:
        first, second = _run("test.echo", n=1), _run("test.nap", path=str(tmp_path / "second"))
        pool.hand_over(deque([first, second]), depth=2, quick={"test.echo", "test.nap"})
        _wait_for(tmp_path / "second")
        assert pool.stop(first.id) is None
        (outcome,) = _drive(pool, lambda o: len(o) == 1)
        assert (outcome.run, outcome.failure) == (second, None)
        assert pool.returned == [] and pool.free == 1
    finally:
        pool.close()
