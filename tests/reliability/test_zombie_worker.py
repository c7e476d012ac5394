"""Scenario 4: a frozen worker (SIGSTOP) whose run was taken over cannot write when it wakes up."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app import enqueue
from app.states import RunStatus
from tests.support.runs import fetch_run
from tests.support.waiting import wait_until
from tests.support.workers import process_alive, stderr_of

Spawn = Callable[..., subprocess.Popen[str]]


def _notes(log: Path) -> list[tuple[str, int, int]]:
    if not log.exists():
        return []
    return [
        (what, int(attempt), int(pid))
        for what, _, attempt, pid in map(str.split, log.read_text().splitlines())
    ]


@pytest.mark.parametrize(
    ("first_seconds", "rejection"),
    [
        (3600, "Run stopped: cancelled or taken over elsewhere"),
        (0.5, "no longer owned"),
    ],
    ids=["executor-still-running", "executor-finished-while-frozen"],
)
def test_a_zombie_worker_is_fenced_out_and_stops_its_executor(
    engine: Engine, spawn_worker: Spawn, tmp_path: Path, figures: Callable[..., None],
    first_seconds: float, rejection: str,
) -> None:  # fmt: skip
    log = tmp_path / "owner.log"
    with engine.begin() as conn:
        run_id = enqueue("test.owner", {"log": str(log), "first_seconds": first_seconds}, connection=conn)
    zombie = spawn_worker("--concurrency", "1", env={"RECOVERY_INTERVAL": "0"})
    ((_, _, first_pid),) = wait_until(lambda: _notes(log), what="the first attempt to start")
    zombie.send_signal(signal.SIGSTOP)
    try:
        rescuer = spawn_worker("--concurrency", "1", env={"RECOVERY_INTERVAL": "200ms"})
        run = wait_until(
            lambda: (r := fetch_run(engine, run_id)).status == RunStatus.SUCCEEDED and r,
            what="the run to be rescued and finished by the other worker",
        )
        assert run.result["attempt"] == 2
    finally:
        zombie.send_signal(signal.SIGCONT)
    wait_until(lambda: rejection in stderr_of(zombie), what="the zombie to notice")
    if first_seconds > 60:
        wait_until(lambda: not process_alive(first_pid), what="the zombie's executor to stop")
    run = fetch_run(engine, run_id)
    assert (run.status, run.result["attempt"], run.attempt) == (RunStatus.SUCCEEDED, 2, 2)
    assert zombie.poll() is None, "the zombie worker should carry on serving"
    for worker in (zombie, rescuer):
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finished_first = any(what == "end" and attempt == 1 for what, attempt, _ in _notes(log))
    figures(first_attempt_finished=finished_first, kept_result_attempt=run.result["attempt"])
