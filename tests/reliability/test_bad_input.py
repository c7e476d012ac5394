"""Scenario 8: bad input through the Python API, the CLI and raw SQL is refused or contained.

Each bad value is rejected at enqueue with a clear error, or, when it reaches the table some other
way, ends ``failed`` with the reason or waits harmlessly: it never blocks the queue, never
crash-loops a worker, and the schema stays intact. Params are JSON only, never unpickled or evaluated.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from app import EnqueueError, enqueue
from app.settings import Settings
from app.states import RunStatus
from tests.conftest import ROOT, fetch_run
from tests.support.workers import run_burst

Orbit = Callable[..., subprocess.CompletedProcess[str]]
INJECTION = "'; DROP TABLE runs;--"


def _deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("pipeline", "params", "options", "message"),
    [
        ("test.echo", [1, 2], {}, "params must be a JSON object"),
        ("test.echo", "text", {}, "params must be a JSON object"),
        ("test.echo", {"blob": "x" * 10_000_000}, {}, "params are larger than"),
        ("test.echo", {"nul": "a\u0000b"}, {}, "NUL character"),
        ("test.echo", {"half": "\ud800"}, {}, "not valid"),
        ("test.echo", {"nan": math.nan}, {}, "not valid JSON"),
        ("test.echo", {"obj": object()}, {}, "not valid JSON"),
        (INJECTION, {}, {}, "unknown pipeline"),
        ("test.echo", _deep(1000), {}, "nested too deeply"),
        ("test.echo", {}, {"timeout": math.nan}, "timeout must be"),
        ("test.echo", {}, {"timeout": -1}, "timeout must be"),
        ("test.echo", {}, {"priority": math.nan}, "priority must be a whole number"),
        ("test.echo", {}, {"max_attempts": 0}, "max_attempts must be at least 1"),
    ],
    ids=[
        "list", "string", "10MB", "nul", "lone-surrogate", "nan", "object", "injection", "nested-1000",
        "nan-timeout", "negative-timeout", "nan-priority", "zero-attempts",
    ],
)  # fmt: skip
def test_the_python_api_rejects_bad_input_and_inserts_nothing(
    engine: Engine, pipeline: str, params: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(EnqueueError, match=message), engine.begin() as conn:
        enqueue(pipeline, params, connection=conn, **options)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


def test_moderate_nesting_is_accepted_and_runs(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    with engine.begin() as conn:
        run_id = enqueue("test.echo", _deep(200), connection=conn)
    assert run_burst(make_settings()) == 0
    assert fetch_run(engine, run_id).status == RunStatus.SUCCEEDED


@pytest.mark.parametrize(
    "args",
    [
        ["enqueue", "test.echo", "--params", '{"nul": "a\\u0000b"}'],
        ["enqueue", "test.echo", "--params", '{"half": "\\ud800"}'],
        ["enqueue", "test.echo", "--params", '"a string"'],
        ["enqueue", "test.echo", "--params", '{"n": NaN}'],
        ["enqueue", INJECTION],
        ["enqueue", "test.echo", "--timeout", "nan"],
        ["enqueue", "test.echo", "--timeout", "-5"],
        ["enqueue", "test.echo", "--priority", "nan"],
    ],
    ids=[
        "nul",
        "lone-surrogate",
        "string",
        "nan",
        "injection",
        "nan-timeout",
        "negative-timeout",
        "nan-priority",
    ],
)
def test_the_cli_rejects_bad_input_with_one_line(engine: Engine, orbit: Orbit, args: list[str]) -> None:
    result = orbit(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


def test_the_cli_rejects_invalid_utf8(engine: Engine, worker_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"app.cli", b"enqueue", b"test.echo", b"--params", b'{"a":"\xff"}'],
        env=worker_env, cwd=ROOT, capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count(b"\n") == 1, result.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


@pytest.mark.parametrize(
    "values",
    [
        "('test.echo', '[1]')",
        "('test.echo', '{\"nul\": \"\\u0000\"}')",
        "('test.echo', convert_from('\\xff'::bytea, 'UTF8')::jsonb)",
        "('', '{}')",
    ],
    ids=["list", "nul", "invalid-utf8", "empty-name"],
)
def test_the_schema_rejects_bad_rows_from_sql(engine: Engine, values: str) -> None:
    with pytest.raises(DBAPIError), engine.begin() as conn:
        conn.execute(text(f"INSERT INTO runs (pipeline, params) VALUES {values}"))


def test_bad_rows_in_the_table_never_block_the_queue(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """Rows written around the API: the worker contains each one and serves the good runs."""
    with engine.begin() as conn:
        conn.execute(
            text("""
            INSERT INTO runs (pipeline, params, priority, attempt, max_attempts, timeout, status, worker_id)
            VALUES (:injection, '{}', 100, 0, NULL, NULL, 'pending', NULL),
                   ('test.fail', '{}', 100, 41, 3, NULL, 'pending', NULL),
                   ('test.echo', CAST(:blob AS jsonb), 100, 0, NULL, NULL, 'pending', NULL),
                   ('test.noop', CAST(:deep AS jsonb), 100, 0, NULL, NULL, 'pending', NULL),
                   ('test.sleep', '{}', 100, 0, 1, interval '1 millisecond', 'pending', NULL),
                   ('test.record', '{}', 100, 1, 3, NULL, 'running', 'ghost')
            """),
            {
                "injection": INJECTION,  # no worker has it: it waits, visible, and blocks nothing
                "blob": '{"blob": "' + "x" * 10_000_000 + '"}',  # 10 MB: valid, so it runs
                "deep": '{"a":' * 3000 + "{}" + "}" * 3000,  # too deep for Python's decoder
            },
        )
        good = [enqueue("test.noop", {}, connection=conn) for _ in range(5)]
    settings = make_settings(RECOVERY_INTERVAL="100ms", STALE_AFTER="1h")
    assert run_burst(settings) == 0
    with engine.connect() as conn:
        bad = conn.execute(text("SELECT pipeline, status, errors FROM runs WHERE id < :g"), {"g": good[0]})
        rows = {r.pipeline: r for r in bad}
    assert rows[INJECTION].status == RunStatus.PENDING
    assert rows["test.fail"].status == RunStatus.FAILED
    assert rows["test.echo"].status == RunStatus.SUCCEEDED
    assert (rows["test.noop"].status, rows["test.noop"].errors[-1]["type"]) == (RunStatus.FAILED, "BadParams")
    assert rows["test.sleep"].status == RunStatus.TIMED_OUT
    assert rows["test.record"].status == RunStatus.SUCCEEDED  # a ghost's run, never heartbeaten: rescued
    assert [fetch_run(engine, g).status for g in good] == [RunStatus.SUCCEEDED] * 5
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('runs') IS NOT NULL")).scalar_one()


def test_a_snooze_past_the_bound_fails_its_run_and_nothing_else(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """Snooze(1e13) fails its own run with the reason; the runs of its batch are unharmed."""
    with engine.begin() as conn:
        absurd = enqueue("test.snooze", {"delay": 1e13}, connection=conn)
        good = [enqueue("test.noop", {}, connection=conn) for _ in range(3)]
    assert run_burst(make_settings(WORKER_CONCURRENCY=4)) == 0
    run = fetch_run(engine, absurd)
    assert run.status == RunStatus.FAILED
    assert [e["type"] for e in run.errors] == ["ValueError"]
    assert "Snooze delay 10000000000000.0: expected a duration of at most 100 years" in run.error
    assert [fetch_run(engine, g).status for g in good] == [RunStatus.SUCCEEDED] * 3
