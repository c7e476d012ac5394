"""Logs: the two files and their rotation, run fields on every run line, secrets masked, the report."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import Engine

from app import enqueue, logs
from app.stats import WorkerStats
from tests.support.workers import stderr_of

SECRET_URL = "postgresql://orbit:hunter2@db.example:5432/orbit"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _enqueue(engine: Engine, pipeline: str, params: dict[str, Any] | None = None) -> int:
    with engine.begin() as conn:
        return enqueue(pipeline, params or {}, connection=conn)


def _burst(spawn_worker: Callable[..., subprocess.Popen[str]], **env: str) -> str:
    proc = spawn_worker("--burst", env=env)
    assert proc.wait(timeout=120) == 0
    return stderr_of(proc)


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[Path]:
    """Logging of this process sent to files under tmp_path (restored to console afterwards)."""
    logs.configure("debug", "json", tmp_path, max_bytes=2000, backups=2)
    yield tmp_path
    logs.configure("info", "console")


def test_every_level_goes_to_worker_log_and_errors_also_to_the_error_log(configured: Path) -> None:
    """worker.log has every line, worker-error.log only errors; both are JSON lines."""
    log = structlog.get_logger("test")
    log.info("all is well", n=1)
    log.error("something broke", n=2)
    logging.getLogger("some.library").warning("a library line")
    events = [line["event"] for line in _lines(configured / "worker.log")]
    assert events == ["all is well", "something broke", "a library line"]
    errors = _lines(configured / "worker-error.log")
    assert [(e["event"], e["level"]) for e in errors] == [("something broke", "error")]


def test_files_rotate_by_size_keeping_the_configured_backups(configured: Path) -> None:
    """Past LOG_MAX_BYTES the file rolls over; LOG_BACKUPS old files are kept, no more."""
    log = structlog.get_logger("test")
    for i in range(200):
        log.info("filler line to make the file grow", i=i)
    names = sorted(p.name for p in configured.iterdir() if p.name.startswith("worker.log"))
    assert names == ["worker.log", "worker.log.1", "worker.log.2"]
    assert all((configured / name).stat().st_size <= 2000 for name in names)
    assert _lines(configured / "worker.log")[-1]["i"] == 199


def test_secrets_are_masked_in_values_nested_values_and_tracebacks(configured: Path) -> None:
    """A password in a URL, a secret-looking key or an exception message never reaches the files."""
    log = structlog.get_logger("test")
    log.info("connecting", url=SECRET_URL, password="hunter2", options={"dsn": [SECRET_URL]})
    try:
        raise ConnectionError(f"cannot connect to {SECRET_URL}")
    except ConnectionError:
        log.exception("connection failed")
        logging.getLogger("lib").exception("library saw it too")
    text = (configured / "worker.log").read_text() + (configured / "worker-error.log").read_text()
    assert "hunter2" not in text
    assert "postgresql://orbit:***@db.example:5432/orbit" in text
    assert text.count("ConnectionError") >= 2


def test_run_lines_carry_the_run_and_pipeline_lines_go_to_the_same_file(
    engine: Engine, spawn_worker: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """Run lines of the worker and ctx.log lines carry run_id, pipeline, attempt and worker_id."""
    ok = _enqueue(engine, "test.log", {"note": "first"})
    bad = _enqueue(engine, "test.log", {"fail": SECRET_URL})
    _burst(spawn_worker, WORKER_ID="logs-worker")
    lines = _lines(tmp_path / "logs" / "worker.log")
    about_runs = [line for line in lines if "run_id" in line]
    assert {line["event"] for line in about_runs} >= {"Run started", "Run succeeded", "Run failed"}
    assert {line["event"] for line in about_runs} >= {"Pipeline says hello"}
    for line in about_runs:
        assert line["run_id"] in (ok, bad)
        assert (line["pipeline"], line["attempt"], line["worker_id"]) == ("test.log", 1, "logs-worker")
    (failed,) = [line for line in _lines(tmp_path / "logs" / "worker-error.log") if line.get("run_id")]
    assert (failed["event"], failed["run_id"]) == ("Run failed", bad)
    assert "hunter2" not in (tmp_path / "logs" / "worker.log").read_text()


def test_a_password_in_database_url_never_reaches_any_log(
    spawn_worker: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """An unreachable database with a password in its URL: the error is logged, the password is not."""
    proc = spawn_worker("--burst", env={"DATABASE_URL": "postgresql://orbit:hunter2@127.0.0.1:1/orbit"})
    assert proc.wait(timeout=60) == 1
    stderr = stderr_of(proc)
    files = "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert "cannot reach the database" in files
    assert "orbit:***@127.0.0.1" in stderr
    assert "hunter2" not in stderr + files


def test_the_worker_logs_the_report_with_the_guide_fields(
    engine: Engine, spawn_worker: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """Every METRICS_INTERVAL a Worker Metrics Report; the last one counts 3 successes and 2 failures."""
    for _ in range(3):
        _enqueue(engine, "test.noop")
    for _ in range(2):
        _enqueue(engine, "test.fail_now")
    _burst(spawn_worker, METRICS_INTERVAL="20ms")
    lines = _lines(tmp_path / "logs" / "worker.log")
    reports = [line for line in lines if line["event"] == "Worker Metrics Report"]
    assert reports, "no periodic report was logged"
    fields = ["uptime", "totalRuns", "succeeded", "failed", "errorRate", "successRate", "runsPerHour"]
    fields += ["avgDuration", "minDuration", "maxDuration"]
    assert all(set(fields) <= set(report) for report in reports)
    (final,) = [line for line in lines if line["event"] == "Worker stopped"]
    assert (final["totalRuns"], final["succeeded"], final["failed"]) == (5, 3, 2)
    assert (final["errorRate"], final["successRate"]) == ("40.00%", "60.00%")


def test_report_numbers_from_known_durations() -> None:
    """Three successes and a failure lasting 0.1-0.4 s over one hour of uptime."""
    stats = WorkerStats(started=1000.0)
    for duration in (0.1, 0.2, 0.3):
        stats.record(success=True, duration=duration)
    stats.record(success=False, duration=0.4)
    assert stats.report(now=1000.0 + 3600) == {
        "uptime": "1h",
        "totalRuns": 4,
        "succeeded": 3,
        "failed": 1,
        "errorRate": "25.00%",
        "successRate": "75.00%",
        "runsPerHour": "4.00",
        "avgDuration": "250ms",
        "minDuration": "100ms",
        "maxDuration": "400ms",
    }


def test_a_value_json_cannot_hold_still_makes_a_line(configured: Path) -> None:
    """A cyclic value or a key that is not text: the line is written with reprs, nothing raises."""
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    log = structlog.get_logger("test")
    log.info("odd values", cyclic=cyclic)
    log.info("odd keys", **{"n": 1}, mapping={(1, 2): "tuple key"})
    first, second = _lines(configured / "worker.log")
    assert (first["event"], first["cyclic"]) == ("odd values", {"name": "loop", "self": "..."})
    assert (second["event"], second["n"]) == ("odd keys", 1)
    assert second["mapping"] == "{(1, 2): 'tuple key'}"


def test_the_console_gets_the_same_lines_as_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Console and worker.log carry one rendering of each line, libraries' lines included."""
    console = io.StringIO()
    monkeypatch.setattr(sys, "stderr", console)
    logs.configure("info", "json", tmp_path)
    try:
        structlog.get_logger("test").warning("from orbit", n=1)
        logging.getLogger("some.library").warning("from a library")
    finally:
        monkeypatch.undo()
        logs.configure("info", "console")
    lines = [json.loads(line) for line in console.getvalue().splitlines()]
    assert lines == _lines(tmp_path / "worker.log")
    assert [line["event"] for line in lines] == ["from orbit", "from a library"]
