"""Logs of a real worker: run fields on every run line, no password of DATABASE_URL, the report."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from app import enqueue
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
    assert all(
        re.fullmatch(r"\S+ MB \(worker .*, fork server .*, executors .*\)", r["memory"]) for r in reports
    )
    (final,) = [line for line in lines if line["event"] == "Worker stopped"]
    assert (final["totalRuns"], final["succeeded"], final["failed"]) == (5, 3, 2)
    assert (final["errorRate"], final["successRate"]) == ("40.00%", "60.00%")
