"""Logs in this process: the two files and their rotation, secrets masked, values JSON cannot hold,
the console's lines, the report's numbers. (A real worker's logs: tests/acceptance/test_logs.py.)"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from app import logs
from app.stats import WorkerStats

SECRET_URL = "postgresql://orbit:hunter2@db.example:5432/orbit"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


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
