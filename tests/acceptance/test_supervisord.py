"""supervisord.conf: a real supervisord, started by `make supervise`, runs two workers; stopping and
restarting them as the runbook does loses nothing and runs nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app import enqueue
from app.states import RunStatus
from tests.support import http, runbook
from tests.support.paths import ROOT
from tests.support.runbook import Command
from tests.support.runs import executions, fetch_run
from tests.support.waiting import wait_until

BIN = ROOT / ".venv" / "bin"


@pytest.fixture
def fleet_env(worker_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    logs = tmp_path / "sv"
    logs.mkdir()
    # A short grace keeps the test fast; stopwaitsecs (60s) stays above it as in production.
    fleet = {"ORBIT_WORKERS": "2", "LOGS_DIR": str(logs), "SHUTDOWN_GRACE": "10s"}
    return {**worker_env, **fleet, "ORBIT_SERVE": "true", "SERVE_PORT": str(http.free_port())}


@pytest.fixture
def supervisord(fleet_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """The fleet started as the runbook starts it: `make supervise`, in the foreground."""
    if not (BIN / "supervisord").exists():
        pytest.skip("supervisor is not installed (pip install -e '.[dev]')")
    make = runbook.commands("The fleet under supervisord", "make")[0]
    assert make.line == "make supervise"
    proc = runbook.start(make, fleet_env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            _stop_supervisord(fleet_env)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Shown by pytest only when the test failed: what each worker said is the first clue.
        for log in sorted(Path(fleet_env["LOGS_DIR"]).glob("worker-*.log")):
            print(f"--- {log.name}, its last lines:", *log.read_text().splitlines()[-40:], sep="\n")


def _stop_supervisord(env: dict[str, str]) -> None:
    """TERM to supervisord itself (not make), as a service manager stops it."""
    pidfile = Path(env["LOGS_DIR"]) / "supervisord.pid"
    wait_until(pidfile.exists, 30, "supervisord's pid file")
    os.kill(int(pidfile.read_text()), signal.SIGTERM)


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


def _answer(port: int, path: str) -> Any:
    reply = http.answers(port, path)
    return json.loads(reply.body) if reply is not None and reply.status == 200 else None


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
    # orbit serve runs beside the workers and answers from the same database.
    port = int(fleet_env["SERVE_PORT"])
    stats = wait_until(lambda: _answer(port, "/queue/stats"), 30, "orbit serve to answer")
    assert stats["byStatus"]["succeeded"] == 41
    long = fetch_run(engine, long_run)
    assert (long.status, long.result, long.error) == (RunStatus.SUCCEEDED, "stopped early", None)
    assert all(fetch_run(engine, i).status == RunStatus.SUCCEEDED for i in records)
    ran = [row.run_id for row in executions(engine)]
    assert sorted(ran) == sorted([long_run, *records])  # each exactly once
    # The other worker is untouched: it reaches RUNNING once it has been up for startsecs.
    status = wait_until(lambda: _running_status(fleet_env), 15, "the other worker to be RUNNING")
    assert "STOPPED" in status, status
    with engine.connect() as conn:
        stopped = conn.execute(text("SELECT count(*) FROM workers WHERE stopped_at IS NOT NULL"))
        assert stopped.scalar_one() == 1

    _stop_supervisord(fleet_env)
    assert supervisord.wait(timeout=60) == 0
    with engine.connect() as conn:
        live = conn.execute(text("SELECT count(*) FROM workers WHERE stopped_at IS NULL"))
        assert live.scalar_one() == 0
    assert not os.path.exists(Path(fleet_env["LOGS_DIR"]) / "supervisord.pid")
    for process in (0, 1):  # each process rotates files of its own
        assert (Path(fleet_env["LOGS_DIR"]) / f"worker-{process}.log").stat().st_size > 0


def _both_running(env: dict[str, str]) -> str:
    out = _ctl(env, "status")
    workers = [line for line in out.splitlines() if line.startswith("orbit-worker")]
    return out if sum("RUNNING" in line for line in workers) == 2 else ""


class _Feeder(threading.Thread):
    """Enqueues a run every few milliseconds until stopped: the traffic a deploy must not drop."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.ids: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            with self.engine.begin() as conn:
                self.ids.append(enqueue("test.record", {}, connection=conn))


def test_the_runbooks_supervisorctl_commands_and_a_rolling_restart_lose_nothing(
    engine: Engine, fleet_env: dict[str, str], supervisord: subprocess.Popen[bytes]
) -> None:
    """Every supervisorctl line of docs/operations.md, while runs keep coming: each runs once."""
    documented = [
        *runbook.commands("The fleet under supervisord", "supervisorctl"),
        *runbook.commands("Deploy", "supervisorctl"),
        *runbook.commands("Roll back", "supervisorctl"),
    ]
    distinct = list({c.line: c for c in documented}.values())
    wait_until(lambda: _both_running(fleet_env), 30, "both workers to be RUNNING")
    feeder = _Feeder(engine)
    feeder.start()
    try:
        for command in distinct:
            result = runbook.run(command, fleet_env)
            assert result.returncode == 0, f"{command.line}: {result.stdout}{result.stderr}"
            _check_output(command, result.stdout)
    finally:
        feeder.done.set()
        feeder.join(timeout=30)

    assert len(feeder.ids) > 10
    wait_until(lambda: _live(engine) == 0, what="every run to finish")
    assert {fetch_run(engine, i).status for i in feeder.ids} == {RunStatus.SUCCEEDED}
    assert sorted(row.run_id for row in executions(engine)) == sorted(feeder.ids)  # each once
    assert _both_running(fleet_env)


def _check_output(command: Command, out: str) -> None:
    verb = command.line.split()[3]
    expected = {"status": ["RUNNING"], "stop": ["stopped"], "start": ["started"]}
    for word in expected.get(verb, ["stopped", "started"]):
        assert word in out, f"{command.line}: {out}"


def test_make_supervise_takes_the_number_of_workers_and_the_logs_directory(
    fleet_env: dict[str, str],
) -> None:
    """The scaled-up form of the runbook hands its variables to supervisord (checked with make -n)."""
    (scaled,) = [c for c in runbook.commands("The fleet under supervisord", "make") if "=" in c.line]
    dry = Command(scaled.section, scaled.line.replace("make ", "make -n ", 1))
    recipe = " ".join(runbook.run(dry, fleet_env).stdout.replace("\\\n", " ").split())
    assert "ORBIT_WORKERS=8 ORBIT_SERVE=true LOGS_DIR=/var/log/orbit" in recipe
    assert "supervisord -n -c supervisord.conf" in recipe
