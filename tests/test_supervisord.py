"""supervisord.conf: a real supervisord runs two workers; one is stopped mid-run, nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app import enqueue
from app.states import RunStatus
from tests.conftest import ROOT, executions, fetch_run
from tests.support.waiting import wait_until

BIN = ROOT / ".venv" / "bin"


@pytest.fixture
def fleet_env(worker_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    logs = tmp_path / "sv"
    logs.mkdir()
    # A short grace keeps the test fast; stopwaitsecs (40s) stays above it as in production.
    return {**worker_env, "ORBIT_WORKERS": "2", "LOGS_DIR": str(logs), "SHUTDOWN_GRACE": "10s"}


@pytest.fixture
def supervisord(fleet_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    if not (BIN / "supervisord").exists():
        pytest.skip("supervisor is not installed (pip install -e '.[dev]')")
    proc = subprocess.Popen(
        [str(BIN / "supervisord"), "-c", "supervisord.conf"],
        env=fleet_env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ctl(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "supervisorctl"), "-c", "supervisord.conf", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


def _process_of(env: dict[str, str], worker_id: str) -> str:
    """The supervisord process name of the worker whose id ends with its pid."""
    pid = worker_id.rsplit(":", 1)[-1]
    for n in range(2):
        name = f"orbit-worker:orbit-worker-{n}"
        if _ctl(env, "pid", name).strip() == pid:
            return name
    raise AssertionError(f"no supervisord process has pid {pid}")


def _running_status(env: dict[str, str]) -> str:
    out = _ctl(env, "status")
    return out if "RUNNING" in out else ""


def _live(engine: Engine) -> int:
    with engine.connect() as conn:
        sql = "SELECT count(*) FROM runs WHERE status IN ('pending', 'running')"
        return int(conn.execute(text(sql)).scalar_one())


def test_supervisord_fleet_drains_a_queue_and_a_graceful_stop_loses_nothing(
    engine: Engine, fleet_env: dict[str, str], supervisord: subprocess.Popen[bytes]
) -> None:
    with engine.begin() as conn:
        long_run = enqueue("test.cooperative", {"seconds": 60}, connection=conn)
        records = [enqueue("test.record", {}, connection=conn) for _ in range(40)]
    running = wait_until(
        lambda: (run := fetch_run(engine, long_run)).status == RunStatus.RUNNING and run,
        what="the long run to start",
    )
    name = _process_of(fleet_env, running.worker_id)
    assert "stopped" in _ctl(fleet_env, "stop", name)

    wait_until(lambda: _live(engine) == 0, what="every run to finish")
    long = fetch_run(engine, long_run)
    assert (long.status, long.result) == (RunStatus.SUCCEEDED, "stopped early")
    assert all(fetch_run(engine, i).status == RunStatus.SUCCEEDED for i in records)
    ran = [row.run_id for row in executions(engine)]
    assert sorted(ran) == sorted([long_run, *records])  # each exactly once
    # The other worker is untouched: it reaches RUNNING once it has been up for startsecs.
    status = wait_until(lambda: _running_status(fleet_env), 15, "the other worker to be RUNNING")
    assert "STOPPED" in status, status
    with engine.connect() as conn:
        stopped = conn.execute(text("SELECT count(*) FROM workers WHERE stopped_at IS NOT NULL"))
        assert stopped.scalar_one() == 1

    supervisord.send_signal(signal.SIGTERM)
    assert supervisord.wait(timeout=60) == 0
    with engine.connect() as conn:
        live = conn.execute(text("SELECT count(*) FROM workers WHERE stopped_at IS NULL"))
        assert live.scalar_one() == 0
    assert not os.path.exists(Path(fleet_env["LOGS_DIR"]) / "supervisord.pid")
    for process in (0, 1):  # each process rotates files of its own
        assert (Path(fleet_env["LOGS_DIR"]) / f"worker-{process}.log").stat().st_size > 0
