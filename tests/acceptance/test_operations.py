"""Operations: fleet-wide pause and drain, batch and idempotent enqueue, retention."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app import __version__, enqueue
from app.database import make_engine
from app.settings import Settings
from app.states import FINISHED, RunStatus
from tests.support.paths import ROOT
from tests.support.runs import fetch_run, finished_run
from tests.support.waiting import wait_until
from tests.support.workers import run_burst

Orbit = Callable[..., subprocess.CompletedProcess[str]]
DAY = 86_400.0


def _enqueue(engine: Engine, pipeline: str, params: dict[str, object] | None = None) -> int:
    with engine.begin() as conn:
        return enqueue(pipeline, params or {}, connection=conn)


def _count(engine: Engine, sql: str = "SELECT count(*) FROM runs") -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- pause, unpause, drain -----------------------------------------------------------------------


def test_paused_runs_stay_pending_while_others_run_and_unpause_releases_them(
    engine: Engine, orbit: Orbit, make_settings: Callable[..., Settings]
) -> None:
    """The claim skips paused pipelines; enqueueing still works; unpause lets them run."""
    assert "paused" in _ok(orbit("pause", "test.rec*"))
    held = [int(_ok(orbit("enqueue", "test.record"))), _enqueue(engine, "test.record")]
    other = _enqueue(engine, "test.noop")
    run_burst(make_settings())
    assert fetch_run(engine, other).status == RunStatus.SUCCEEDED
    assert {fetch_run(engine, i).status for i in held} == {RunStatus.PENDING}
    listed = _ok(orbit("pauses"))
    assert "test.rec*" in listed and "2" in listed
    assert "already paused" in _ok(orbit("pause", "test.rec*"))

    assert "unpaused" in _ok(orbit("unpause", "test.rec*"))
    assert "was not paused" in _ok(orbit("unpause", "test.rec*"))
    run_burst(make_settings())
    assert {fetch_run(engine, i).status for i in held} == {RunStatus.SUCCEEDED}
    assert "No pauses" in _ok(orbit("pauses"))


def test_a_pause_reaches_a_running_worker_within_a_poll(
    engine: Engine, orbit: Orbit, spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    """A worker that is already running obeys a pause stored after it started."""
    spawn_worker()
    first = _enqueue(engine, "test.noop")
    wait_until(lambda: fetch_run(engine, first).status == RunStatus.SUCCEEDED, what="first run")
    _ok(orbit("pause", "test.noop"))
    held = _enqueue(engine, "test.noop")
    control = _enqueue(engine, "test.echo")
    wait_until(lambda: fetch_run(engine, control).status == RunStatus.SUCCEEDED, what="control run")
    assert fetch_run(engine, held).status == RunStatus.PENDING
    _ok(orbit("unpause", "test.noop"))
    wait_until(lambda: fetch_run(engine, held).status == RunStatus.SUCCEEDED, what="unpaused run")


def test_drain_waits_for_the_running_run_then_exits_0(
    engine: Engine, orbit: Orbit, spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    spawn_worker("--concurrency", "1")
    run_id = _enqueue(engine, "test.cooperative", {"seconds": 2})
    wait_until(lambda: fetch_run(engine, run_id).status == RunStatus.RUNNING, what="run started")
    queued = _enqueue(engine, "test.cooperative", {"seconds": 0})
    out = _ok(orbit("drain", "test.coop*", "--timeout", "30"))
    assert f"1 run(s) still running: {run_id}" in out
    assert "drained" in out
    assert fetch_run(engine, run_id).status == RunStatus.SUCCEEDED
    assert fetch_run(engine, queued).status == RunStatus.PENDING
    assert "test.coop*" in _ok(orbit("pauses"))


def test_a_pipeline_only_a_registered_worker_knows_can_be_paused(engine: Engine, orbit: Orbit) -> None:
    """The CLI need not load every pipeline: those listed by registered workers count as known."""
    with engine.begin() as conn:
        conn.execute(
            text("""INSERT INTO workers (id, hostname, pid, concurrency, pipeline_filter, pipelines, version)
                    VALUES ('elsewhere:1', 'elsewhere', 1, 1, '*', '{billing.close}', 'x')""")
        )
    assert "paused" in _ok(orbit("pause", "billing.*"))
    assert _count(engine, "SELECT count(*) FROM pauses") == 1


def test_drain_timeout_exits_1_naming_what_still_runs(engine: Engine, orbit: Orbit) -> None:
    with engine.begin() as conn:
        run_id = conn.execute(
            text("""INSERT INTO runs (pipeline, status, worker_id, attempt, started_at, heartbeat_at)
                    VALUES ('test.sleep', 'running', 'w-1', 1, now(), now()) RETURNING id""")
        ).scalar_one()
    result = orbit("drain", "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"still running: {run_id} (test.sleep on w-1)" in result.stderr
    assert "1 run(s) still running" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pause", "test.[ab]"], "orbit: bad glob 'test.[ab]'"),
        (["pause", ""], "orbit: bad glob ''"),
        (["unpause", "x]"], "orbit: bad glob 'x]'"),
        (["pause", "tset.*"], "orbit: no known pipeline matches 'tset.*'"),
        (["drain", "test.nosuch", "--timeout", "1s"], "orbit: no known pipeline matches 'test.nosuch'"),
        (["drain", "--timeout", "soon"], "orbit: --timeout 'soon': expected a duration"),
        (["drain", "--timeout", "0"], "orbit: --timeout '0': must be longer than zero"),
        (["prune", "--older-than", "week"], "orbit: --older-than 'week': expected a duration"),
        (["enqueue", "no.such", "--from-file", "-"], "orbit: unknown pipeline 'no.such'"),
        (["enqueue", "test.echo", "--from-file", "/no/such/file"], "orbit: cannot read /no/such/file"),
        (["enqueue", "test.echo", "--from-file", "-", "--key", "k"], "orbit: --key cannot be combined"),
    ],
)
def test_bad_operations_input_is_one_line_and_exit_2(
    engine: Engine, orbit: Orbit, args: list[str], message: str
) -> None:
    result = orbit(*args, stdin='{"a": 1}\n')
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(message)
    assert _count(engine) == 0
    assert _count(engine, "SELECT count(*) FROM pauses") == 0


# --- batch and idempotent enqueue ----------------------------------------------------------------


def test_enqueue_from_a_file_inserts_every_line(engine: Engine, orbit: Orbit, tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(f'{{"n": {n}}}\n' for n in range(500)) + "\n")
    result = orbit("enqueue", "test.echo", "--from-file", str(path), "--priority", "3")
    assert _ok(result).startswith("500 run(s) of test.echo enqueued")
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT params, priority FROM runs ORDER BY id")).all()
    assert [r.params["n"] for r in rows] == list(range(500))
    assert {r.priority for r in rows} == {3}


def _read_terminal(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other end is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def test_enqueue_from_a_file_shows_progress_on_a_terminal(
    engine: Engine, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """With stderr on a terminal, a bar counts the lines up to 100%."""
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(f'{{"n": {n}}}\n' for n in range(4)))
    terminal, child_end = pty.openpty()
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "enqueue", "test.echo", "--from-file", str(path)],
        env=worker_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=child_end,
        text=True,
        timeout=60,
    )
    os.close(child_end)
    shown = _read_terminal(terminal)
    assert result.returncode == 0, shown
    assert "] 100% 4/4 lines" in shown and "25% 1/4 lines" in shown
    assert _count(engine) == 4


def test_enqueue_from_stdin(engine: Engine, orbit: Orbit) -> None:
    out = _ok(orbit("enqueue", "test.echo", "--from-file", "-", stdin='{"a": 1}\n{"b": 2}\n'))
    assert out.startswith("2 run(s)")
    assert _count(engine) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": 1}\n{bad\n{"c": 3}\n', "orbit: line 2: not valid JSON"),
        ('{"a": 1}\n{"b": 2}\n[3]\n', "orbit: line 3: must be a JSON object, not list"),
        ('{"a": 1}\n{"x": NaN}\n', "orbit: line 2: params are not valid JSON"),
    ],
)
def test_a_bad_line_names_its_number_and_inserts_nothing(
    engine: Engine, orbit: Orbit, content: str, message: str
) -> None:
    result = orbit("enqueue", "test.echo", "--from-file", "-", stdin=content)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(message)
    assert "nothing was enqueued" in result.stderr
    assert _count(engine) == 0


def test_concurrent_enqueues_with_one_key_get_one_run(engine: Engine, database_url: str) -> None:
    """20 threads enqueue the same key at the same moment: one run, one id for all."""
    threads = 20
    wide = make_engine(database_url, pool_size=threads)
    barrier = threading.Barrier(threads)
    ids: list[int] = []

    def enqueue_once() -> None:
        with wide.begin() as conn:
            barrier.wait(timeout=30)
            ids.append(enqueue("test.noop", {}, key="invoice-42", connection=conn))

    workers = [threading.Thread(target=enqueue_once) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    wide.dispose()
    assert len(ids) == threads
    assert len(set(ids)) == 1
    assert _count(engine) == 1


# --- versions ------------------------------------------------------------------------------------


def test_each_run_records_the_version_of_the_deploy_that_ran_it(
    engine: Engine, orbit: Orbit, make_settings: Callable[..., Settings]
) -> None:
    """The package version plus ORBIT_CODE_VERSION, on the run and in `orbit status`."""
    before = _enqueue(engine, "test.noop")
    run_burst(make_settings(ORBIT_CODE_VERSION="7f3c2a1"))
    after = _enqueue(engine, "test.noop")
    run_burst(make_settings(ORBIT_CODE_VERSION="9b81d0e"))
    assert fetch_run(engine, before).code_version == f"{__version__}+7f3c2a1"
    assert fetch_run(engine, after).code_version == f"{__version__}+9b81d0e"
    assert f"code_version:  {__version__}+7f3c2a1" in _ok(orbit("status", str(before)))
    unset = _enqueue(engine, "test.noop")
    run_burst(make_settings())
    assert fetch_run(engine, unset).code_version == __version__


# --- retention -----------------------------------------------------------------------------------


def _old_runs(engine: Engine) -> dict[str, int]:
    """One finished run per status, 10 days old, plus a fresh one and a pending one."""
    runs = {status: finished_run(engine, "test.noop", status, ago=10 * DAY) for status in FINISHED}
    runs["fresh"] = finished_run(engine, "test.noop", "succeeded", ago=60)
    runs["pending"] = _enqueue(engine, "test.noop", {"delay": 1})
    with engine.begin() as conn:
        conn.execute(
            text("""INSERT INTO run_steps (run_id, name, position, status, attempt)
                    VALUES (:id, 'one', 1, 'succeeded', 1)"""),
            {"id": runs["succeeded"]},
        )
    return runs


def _left(engine: Engine, runs: dict[str, int]) -> set[str]:
    return {name for name, run_id in runs.items() if fetch_run(engine, run_id) is not None}


def test_the_leader_prunes_expired_runs_in_batches_with_per_status_retention(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    runs = _old_runs(engine)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE runs SET run_at = now() + interval '1 hour' WHERE id = :id"), {"id": runs["pending"]}
        )
    extra = [finished_run(engine, "test.noop", "succeeded", ago=9 * DAY) for _ in range(5)]
    trigger = _enqueue(engine, "test.noop")
    settings = make_settings(RECOVERY_INTERVAL="10ms", RETENTION_FAILED="30d", RETENTION_BATCH=2)
    run_burst(settings)
    assert _left(engine, runs) == {"failed", "fresh", "pending"}
    assert all(fetch_run(engine, i) is None for i in extra)
    assert fetch_run(engine, trigger).status == RunStatus.SUCCEEDED
    assert _count(engine, "SELECT count(*) FROM run_steps") == 0


def test_retention_zero_keeps_finished_runs(engine: Engine, make_settings: Callable[..., Settings]) -> None:
    runs = _old_runs(engine)
    run_burst(make_settings(RECOVERY_INTERVAL="10ms", RETENTION="0"))
    assert _left(engine, runs) >= FINISHED


def test_orbit_prune_dry_run_counts_and_prune_deletes(engine: Engine, orbit: Orbit) -> None:
    runs = _old_runs(engine)
    dry = _ok(orbit("prune", "--dry-run", env={"RETENTION_CANCELLED": "30d"}))
    assert "would delete 1 succeeded run(s)" in dry
    assert "would delete 0 cancelled run(s)" in dry
    assert "would delete 3 run(s) in all" in dry
    assert len(_left(engine, runs)) == len(runs)
    assert "deleted 0 " in _ok(orbit("prune", "--older-than", "30d"))
    assert "deleted 4 " in _ok(orbit("prune", "--older-than", "5d", env={"RETENTION_BATCH": "1"}))
    assert _left(engine, runs) == {"fresh", "pending"}
