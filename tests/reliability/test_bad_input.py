"""Scenario 8: bad input through the Python API, the CLI and raw SQL is refused or contained.

Each bad value is rejected at enqueue with a clear error, or, when it reaches the table some other
way, ends ``failed`` with the reason or waits harmlessly: it never blocks the queue, never
crash-loops a worker, and the schema stays intact. Params are JSON only, never unpickled or evaluated.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import structlog
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from app import EnqueueError, cli, enqueue
from app.durations import parse_duration
from app.jsontext import MAX_DEPTH
from app.settings import Settings
from app.states import RunStatus
from tests.support.paths import ROOT
from tests.support.runs import fetch_run
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
        ("test.echo", _deep(MAX_DEPTH), {}, "nested too deeply"),
        ("test.echo", {}, {"timeout": math.nan}, "timeout must be"),
        ("test.echo", {}, {"timeout": -1}, "timeout must be"),
        ("test.echo", {}, {"priority": math.nan}, "priority must be a whole number"),
        ("test.echo", {}, {"max_attempts": 0}, "max_attempts must be 1 to 1000"),
        ("test.echo", {}, {"max_attempts": "3"}, "max_attempts must be a whole number"),
        ("test.echo", {}, {"max_attempts": 2**40}, "max_attempts must be 1 to 1000"),
        ("test.echo", {}, {"key": "a\x00b"}, "key cannot hold a NUL"),
        ("test.echo", {}, {"key": "\ud800"}, "key is not valid text"),
        ("test.echo", {}, {"key": "k" * 501}, "key must be text of at most 500"),
        ("test.echo", {}, {"delay": 1e300}, "delay must be seconds or a duration of at most 100 years"),
        ("test.echo", {}, {"timeout": 10**400}, "timeout must be seconds or a duration of at most 100"),
    ],
    ids=[
        "list", "string", "10MB", "nul", "lone-surrogate", "nan", "object", "injection", "nested-1000",
        "nested-201", "nan-timeout", "negative-timeout", "nan-priority", "zero-attempts", "text-attempts",
        "huge-attempts", "nul-key", "surrogate-key", "long-key", "huge-delay", "huge-timeout",
    ],
)  # fmt: skip
def test_the_python_api_rejects_bad_input_and_inserts_nothing(
    engine: Engine, pipeline: str, params: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(EnqueueError, match=message), engine.begin() as conn:
        enqueue(pipeline, params, connection=conn, **options)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


def test_nesting_up_to_the_limit_is_accepted_and_runs(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    with engine.begin() as conn:
        run_id = enqueue("test.echo", _deep(MAX_DEPTH - 1), connection=conn)  # MAX_DEPTH levels
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
        ["enqueue", "test.echo", "--delay", "99999999999999d"],
        ["enqueue", "test.echo", "--timeout", "99999999999999"],
        ["enqueue", "test.echo", "--delay", "10000000000000"],
        ["enqueue", "test.echo", "--timeout", "10000000000000"],
        ["enqueue", "test.echo", "--max-attempts", "99999999999"],
        ["enqueue", "test.echo", "--priority", "99999999999"],
        ["runs", "--limit", "99999999999999999999"],
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
        "overflowing-delay",
        "overflowing-timeout",
        "delay-past-timestamps",
        "timeout-past-intervals",
        "huge-attempts",
        "huge-priority",
        "huge-limit",
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


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("1 / 0\n", "ZeroDivisionError: division by zero"),
        ("def broken(:\n", "SyntaxError: invalid syntax"),
        ("from app import pipeline\npipeline('x', max_attempts=0)\n", "max_attempts must be 1 to 1000"),
    ],
    ids=["zero-division", "syntax-error", "bad-pipeline"],
)
def test_a_pipeline_module_that_fails_to_import_is_one_line(
    engine: Engine, orbit: Orbit, worker_env: dict[str, str], tmp_path: Path, source: str, message: str
) -> None:
    """Whatever a pipeline module raises on import, the CLI names the module and the error, exit 2."""
    (tmp_path / "broken_pipelines.py").write_text(source)
    env = {
        "PYTHONPATH": f"{ROOT}:{tmp_path}",
        "ORBIT_PIPELINES": f"{worker_env['ORBIT_PIPELINES']},broken_pipelines",
    }
    result = orbit("enqueue", "test.echo", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("orbit: cannot import pipeline module 'broken_pipelines': ")
    assert message in result.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


def test_the_runs_filter_is_a_glob_whatever_characters_it_holds(engine: Engine, orbit: Orbit) -> None:
    """\\, % and _ are matched as themselves (before, a\\ was a LIKE error and _ a wildcard)."""
    with engine.begin() as conn:
        run_id = enqueue("test.echo", {}, connection=conn)
    for glob in ["a\\", "test_echo", "test%", "%"]:
        result = orbit("runs", "--pipeline", glob, "--json")
        assert (result.returncode, result.stderr, json.loads(result.stdout)) == (0, "", []), glob
    for glob in ["test.echo", "test.*", "test.ech?", "*"]:
        result = orbit("runs", "--pipeline", glob, "--json")
        assert [r["id"] for r in json.loads(result.stdout)] == [run_id], glob
    refused = orbit("runs", "--pipeline", "test.[ab]")
    assert (refused.returncode, refused.stderr.count("\n")) == (2, 1), refused.stderr


def test_resuming_a_run_whose_key_a_live_run_holds_is_refused(
    engine: Engine, orbit: Orbit, make_settings: Callable[..., Settings]
) -> None:
    """A failed run whose key was taken since cannot resume: one line, exit 2, nothing changed."""
    with engine.begin() as conn:
        failed = enqueue("test.fail_now", {}, key="invoice-7", connection=conn)
    assert run_burst(make_settings()) == 0
    with engine.begin() as conn:
        live = enqueue("test.noop", {}, key="invoice-7", connection=conn)
    result = orbit("resume", str(failed))
    assert result.returncode == 2
    assert result.stderr == (
        f"orbit: run {failed} cannot resume: a pending or running run holds its key 'invoice-7'\n"
    )
    assert fetch_run(engine, failed).status == RunStatus.FAILED
    assert fetch_run(engine, live).status == RunStatus.PENDING


# --- any input: stored as given, or refused with one line and nothing written ---------------------

# Each option is left out or plausible about half the time, so that both outcomes are common.
_DURATION_TEXT = st.from_regex(r"\A ?[0-9]{1,16}(\.[0-9]{1,7})? ?(ms|s|m|h|d|D|MS)? ?\Z")
_DURATIONS = st.one_of(
    st.none(), st.none(), st.floats(0, 4e9), _DURATION_TEXT,
    st.integers(), st.floats(), st.text(max_size=8), st.timedeltas(),
)  # fmt: skip
_ATTEMPTS = st.one_of(
    st.none(), st.integers(1, 1000), st.integers(-2, 1002), st.integers(), st.booleans(), st.text(max_size=4)
)
_PRIORITIES = st.one_of(st.integers(-5, 5), st.integers(-(2**31) - 2, 2**31 + 1), st.integers(), st.floats())
_ANY_CHARACTER = st.characters(blacklist_categories=())  # NUL and lone surrogates included
_KEYS = st.one_of(
    st.none(), st.text(max_size=12), st.text(_ANY_CHARACTER, max_size=12), st.text(min_size=498, max_size=502)
)
_OPTIONS = st.fixed_dictionaries(
    {
        "priority": _PRIORITIES,
        "delay": _DURATIONS,
        "timeout": _DURATIONS,
        "max_attempts": _ATTEMPTS,
        "key": _KEYS,
    }
)


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``orbit ARGS`` in this process (a subprocess per example would take minutes): status, out, err."""
    capsys.readouterr()
    try:
        with _logging_left_as_it_was():
            status = cli.main(args)
    except SystemExit as exit:  # argparse's own refusals
        status = int(exit.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@contextlib.contextmanager
def _logging_left_as_it_was() -> Iterator[None]:
    """The CLI configures structlog with cached loggers; in this process that would pin every
    module's logger to the CLI's configuration, and later tests' structlog.testing.capture_logs()
    would see nothing. Here loggers are not cached, and the configuration is put back after."""
    saved = structlog.get_config()
    configure = structlog.configure

    def uncached(**settings: Any) -> None:
        configure(**{**settings, "cache_logger_on_first_use": False})

    try:
        with mock.patch("structlog.configure", uncached):
            yield
    finally:
        configure(**saved)


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM runs")).scalar_one())


def _stored(engine: Engine, run_id: int) -> Any:
    with engine.connect() as conn:
        query = text("SELECT *, run_at - created_at AS delay FROM runs WHERE id = :id")
        return conn.execute(query, {"id": run_id}).one()


def _seconds(value: Any) -> float | None:
    return None if value is None else parse_duration(value, bare_unit="s").total_seconds()


def _same_seconds(stored: Any, given: Any) -> bool:
    """A duration stored as the one given (microseconds apart at most: both round to them)."""
    expected = _seconds(given)
    if stored is None or expected is None:
        return stored is None and expected is None
    return abs(stored.total_seconds() - expected) < 1e-5


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(options=_OPTIONS, through=st.sampled_from(["enqueue", "cli"]))
def test_any_run_options_are_stored_as_given_or_refused_with_nothing_written(
    engine: Engine,
    worker_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: dict[str, Any],
    through: str,
) -> None:
    """enqueue() and `orbit enqueue`: a run stored with exactly the options given, or one line
    (EnqueueError, a ValueError; exit status 2) and no run at all."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM runs"))
    if through == "cli":
        for name in ("DATABASE_URL", "DIRECT_URL", "ORBIT_PIPELINES", "LOGS_DIR"):
            if name in worker_env:
                monkeypatch.setenv(name, worker_env[name])
        # What a shell can pass: text without NUL (the key as --key=..., so a leading - is a value).
        given = {k: str(v).replace("\x00", "") for k, v in options.items() if v is not None}
        args = [f"--{name.replace('_', '-')}={value}" for name, value in given.items()]
        status, out, stderr = _cli(["enqueue", "test.noop", *args], capsys)
        assert status in (0, 2), stderr
        event(f"cli: exit {status}")
        if status == 2:
            assert stderr.count("\n") == 1 and stderr.startswith("orbit"), stderr
            assert _count(engine) == 0
            return
        run = _stored(engine, int(out))
        expected = {
            "priority": int(given["priority"]),
            "max_attempts": int(given["max_attempts"]) if "max_attempts" in given else None,
            "key": given.get("key"),
        }
    else:
        try:
            with engine.begin() as conn:
                run_id = enqueue("test.noop", {}, connection=conn, **options)
        except EnqueueError as exc:
            event("enqueue: refused")
            assert isinstance(exc, ValueError)
            assert "\n" not in str(exc)
            assert _count(engine) == 0
            return
        event("enqueue: accepted")
        run = _stored(engine, run_id)
        given = options
        expected = {k: options[k] for k in ("priority", "max_attempts", "key")}
    assert {k: getattr(run, k) for k in expected} == expected
    assert _same_seconds(run.delay, given.get("delay") or 0)
    assert _same_seconds(run.timeout, given.get("timeout"))
