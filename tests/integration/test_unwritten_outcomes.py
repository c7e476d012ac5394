"""A worker stopped while the database is away: its outcomes are saved on disk, it exits 1, and they
are applied later (next worker start, or `orbit outcomes apply`), fenced as every write is."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import structlog.testing
from sqlalchemy import Engine

from app import enqueue, queries, spool
from app.queries import ClaimedRun, Success
from app.settings import Settings
from app.states import RunStatus
from app.worker import build
from tests.support.proxy import FreezableProxy, proxy_for, url_through
from tests.support.runs import executions, fetch_run
from tests.support.waiting import wait_until
from tests.support.workers import run_burst


@pytest.fixture
def proxy(direct_url: str) -> Iterator[FreezableProxy]:
    with proxy_for(direct_url) as proxy:
        yield proxy


def _claim(engine: Engine, worker_id: str, pipeline: str = "test.cooperative") -> ClaimedRun:
    """A run of ``pipeline`` running under ``worker_id``, as if that worker had claimed it."""
    with engine.begin() as conn:
        enqueue(pipeline, {}, connection=conn)
        _, (run,) = queries.exchange(
            conn, worker_id=worker_id, successes=[], transitions=[], limit=1, defaults={pipeline: (1, 60.0)}
        )
    return run


def _stop_when_started(run_id: int, engine: Engine, proxy: FreezableProxy) -> threading.Thread:
    """Once the run has started: cut the worker off from the database, then SIGTERM it."""

    def stop() -> None:
        wait_until(lambda: executions(engine, "start"), what="the run to start")
        proxy.freeze()
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the worker's loop, in the main thread

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread


def test_a_worker_stopped_in_an_outage_saves_its_outcomes_exits_1_and_the_next_applies_them(
    engine: Engine,
    make_settings: Callable[..., Settings],
    proxy: FreezableProxy,
    database_url: str,
    direct_url: str,
    tmp_path: Path,
) -> None:
    """A run succeeds while the database is unreachable and the worker is stopped: the worker
    keeps trying for SHUTDOWN_WRITE_TIMEOUT, then exits 1 with the outcome in its log and in
    DATA_DIR; the next worker started there writes it, and the run is succeeded."""
    data = tmp_path / "data"
    through = {"DATABASE_URL": url_through(proxy, database_url), "DIRECT_URL": url_through(proxy, direct_url)}
    settings = make_settings(
        **through,
        DATA_DIR=data,
        STATEMENT_TIMEOUT="1s",
        SHUTDOWN_GRACE="5s",  # the run returns within it, though each call waits 2 s to be cut
        SHUTDOWN_WRITE_TIMEOUT="1s",
        WORKER_ID="stopped-in-outage",
    )
    with engine.begin() as conn:
        run_id = enqueue("test.cooperative", {"seconds": 60}, connection=conn)
    worker = build(settings)
    stopper = _stop_when_started(run_id, engine, proxy)
    with structlog.testing.capture_logs() as events:
        status = worker.run()
    stopper.join()

    assert status == 1
    assert fetch_run(engine, run_id).status == RunStatus.RUNNING  # nothing could be written
    saved = [e for e in events if e["event"] == "Outcome could not be written: saved for later"]
    assert [(e["run_id"], e["attempt"], e["outcome"], e["pipeline"]) for e in saved] == [
        (run_id, 1, "succeeded", "test.cooperative")
    ]
    (path,) = spool.files(data)
    line = json.loads(path.read_text())
    assert (line["run_id"], line["attempt"], line["outcome"]) == (run_id, 1, "succeeded")
    assert json.loads(line["result_json"]) == "stopped early"

    proxy.thaw()
    assert run_burst(make_settings(DATA_DIR=data)) == 0
    run = fetch_run(engine, run_id)
    assert (run.status, run.result, run.attempt) == (RunStatus.SUCCEEDED, "stopped early", 1)
    assert not spool.files(data)


@pytest.mark.parametrize("meanwhile", ["nothing", "recovered"])
def test_orbit_outcomes_apply_writes_a_saved_outcome_unless_its_run_was_recovered(
    meanwhile: str,
    engine: Engine,
    orbit: Callable[..., CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    """A saved success is written while its run is still its worker's (exit 0); once the run has
    been recovered the write is refused, reported, and the run left as recovery set it (exit 1)."""
    run = _claim(engine, "gone-worker")
    path = spool.path_for(tmp_path, "gone-worker")
    spool.save(path, [spool.Unwritten("gone-worker", run.pipeline, Success(run.id, run.attempt, '"done"'))])
    if meanwhile == "recovered":
        with engine.begin() as conn:
            queries.recover(conn, stale_after=timedelta(0))
        assert fetch_run(engine, run.id).status == RunStatus.FAILED

    done = orbit("outcomes", "apply", str(path))

    line = f"run {run.id} (test.cooperative) attempt 1: succeeded"
    after = fetch_run(engine, run.id)
    if meanwhile == "nothing":
        assert (done.returncode, done.stdout) == (0, f"{line}: written\n"), done.stderr
        assert (after.status, after.result) == (RunStatus.SUCCEEDED, "done")
    else:
        assert done.returncode == 1, done.stderr
        assert done.stdout.startswith(f"{line}: refused, the run is now failed, attempt 1"), done.stdout
        assert (after.status, after.result) == (RunStatus.FAILED, None)
    assert not path.exists()


def test_orbit_outcomes_apply_refuses_bad_input_with_one_line_and_writes_nothing(
    engine: Engine, orbit: Callable[..., CompletedProcess[str]], tmp_path: Path
) -> None:
    """A missing file, or one with a line that is not an outcome: one line, exit 2, nothing written."""
    missing = orbit("outcomes", "apply", str(tmp_path / "nope.jsonl"))
    assert (missing.returncode, missing.stderr) == (2, f"orbit: {tmp_path / 'nope.jsonl'}: no such file\n")

    run = _claim(engine, "gone-worker")
    path = tmp_path / "outcomes.jsonl"
    good = spool.Unwritten("gone-worker", run.pipeline, Success(run.id, run.attempt, "null")).line()
    for garbage in ["not json", '{"run_id": 1}', json.dumps({**json.loads(good), "attempt": "one"})]:
        path.write_text(good + "\n" + garbage + "\n")
        done = orbit("outcomes", "apply", str(path))
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"orbit: {path} line 2: not an unwritten outcome ("), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert fetch_run(engine, run.id).status == RunStatus.RUNNING
        assert path.exists()


def test_the_stop_is_bounded_by_the_grace_and_the_write_timeout(
    make_settings: Callable[..., Settings],
) -> None:
    """Each call of a stopping worker ends by its last try at writing: never later than that, and
    never given less than a second."""
    worker = build(make_settings(SHUTDOWN_GRACE="1s", SHUTDOWN_WRITE_TIMEOUT="2s"))
    try:
        assert worker.session.deadline() == worker.database.deadline
        worker.request_stop()
        assert 1.0 <= worker.session.deadline() <= 3.0
        worker.request_stop()  # a second signal: stop now, one last try
        assert worker.session.deadline() == 1.0
    finally:
        worker.engine.dispose()
