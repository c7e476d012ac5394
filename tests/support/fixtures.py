"""The database fixtures: one real PostgreSQL per test session, a migrated database, a clean slate
per test; workers and the CLI as subprocesses against it.

Loaded once for the whole session by tests/conftest.py (``pytest_plugins``), so the session's server
is started once, and only when a selected test asks for it: tests/unit never does. Each database
tier's conftest.py makes ``side_url`` apply to all its tests.

The server is chosen by ORBIT_TEST_SERVER (see tests/support/servers.py). ``database_url`` is what
Orbit is given; ``direct_url`` reaches the same database without a pooler. They differ only under
``pgbouncer``, where ``database_url`` goes through PgBouncer in transaction mode.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.database import libpq_url, make_engine, migrate
from app.settings import Settings, load_settings
from tests.support import servers
from tests.support.paths import ROOT, TEST_PIPELINES
from tests.support.pipelines import SIDE_TABLE
from tests.support.servers import Scratch, TestServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A server that cannot be started here stops the session before any test runs, saying what to
    install; only when a selected test needs one."""
    if not any("server" in getattr(item, "fixturenames", ()) for item in items):
        return
    try:
        servers.check(servers.chosen_kind())
    except servers.Unavailable as error:
        raise pytest.UsageError(str(error)) from None


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    """The session's server: ``.kind``, ``.admin_url`` (direct), ``.jit``, ``.pooled``, ``.restart()``,
    ``.scratch_database()`` for a database of a test's own."""
    with servers.started(servers.chosen_kind(), tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture(scope="session")
def test_database(server: TestServer) -> Iterator[Scratch]:
    """The session's database, migrated: its URL for Orbit and its direct URL."""
    with server.scratch_database() as database:
        prepare(database)
        yield database


def prepare(database: Scratch) -> None:
    """Migrate a scratch database and add the test pipelines' side table, on its direct URL."""
    migrate(database.direct_url)
    engine = make_engine(database.direct_url)
    with engine.begin() as conn:
        conn.execute(text(SIDE_TABLE))
    engine.dispose()


@pytest.fixture(scope="session")
def database_url(test_database: Scratch) -> str:
    """The URL Orbit is given: through PgBouncer (``?pgbouncer=true``) under ``pgbouncer``."""
    return test_database.url


@pytest.fixture(scope="session")
def direct_url(test_database: Scratch) -> str:
    """The same database without a pooler: for migrations, LISTEN, and the tests' own plumbing."""
    return test_database.direct_url


@pytest.fixture(scope="session")
def session_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(session_engine: Engine) -> Engine:
    """The test database, emptied before the test."""
    with session_engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE runs, run_steps, workers, pauses, limits, run_starts, schedules, executions,"
                " api_tokens, console_sessions RESTART IDENTITY CASCADE"
            )
        )
    return session_engine


@pytest.fixture
def make_settings(database_url: str, direct_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for an in-process worker: fast polling, the test pipelines, logs in tmp_path."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "DATABASE_URL": database_url,
            "ORBIT_PIPELINES": TEST_PIPELINES,
            "LOGS_DIR": tmp_path / "logs",
            "POLL_INTERVAL": "50ms",
            "HEARTBEAT_INTERVAL": "200ms",
            "RECOVERY_INTERVAL": "0",
            "METRICS_INTERVAL": "1h",
            "RETRY_BACKOFF_BASE": "10ms",
            "RETRY_BACKOFF_MAX": "20ms",
            "SHUTDOWN_GRACE": "5s",
            "WORKER_ID": f"test-worker-{os.getpid()}",
        }
        if direct_url != database_url:
            values["DIRECT_URL"] = direct_url
        values.update(overrides)
        return load_settings(**values)

    return build


@pytest.fixture
def worker_env(database_url: str, direct_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for worker and CLI subprocesses (DIRECT_URL set when it is not DATABASE_URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORBIT_", "DATABASE_URL", "DIRECT_URL"))}
    if direct_url != database_url:
        env["DIRECT_URL"] = direct_url
    env.update(
        DATABASE_URL=database_url,
        ORBIT_PIPELINES=TEST_PIPELINES,
        ORBIT_TEST_SIDE_URL=libpq_url(direct_url),
        LOGS_DIR=str(tmp_path / "logs"),
        LOG_FORMAT="json",
        POLL_INTERVAL="50ms",
        HEARTBEAT_INTERVAL="200ms",
        RETRY_BACKOFF_BASE="10ms",
        RETRY_BACKOFF_MAX="20ms",
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture
def side_url(direct_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORBIT_TEST_SIDE_URL set in this process: the database tiers use it on every test.

    In-process workers spawn executors that inherit this environment. The test pipelines' side
    table is the tests' plumbing: it is written to directly, not through a pooler."""
    monkeypatch.setenv("ORBIT_TEST_SIDE_URL", libpq_url(direct_url))


@pytest.fixture
def orbit(worker_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the ``orbit`` CLI in a subprocess against the test database."""

    def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env={**worker_env, **(env or {})},
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
def spawn_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -m app.worker`` subprocesses; any still running are killed at the end.

    Each worker's stderr goes to a file (``proc.stderr_path``): an unread pipe would fill up
    and block a busy worker in the middle of a log line.
    """
    started: list[subprocess.Popen[str]] = []

    def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        path = tmp_path / f"worker-{len(started)}.stderr"
        with path.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.worker", *args],
                env={**worker_env, **(env or {})},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                text=True,
            )
        proc.stderr_path = path  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Shown by pytest only when the test failed: what the worker said is the first clue.
        lines = proc.stderr_path.read_text(errors="replace").splitlines()  # type: ignore[attr-defined]
        print(f"--- worker {proc.pid} (exit {proc.returncode}), its last lines:", *lines[-40:], sep="\n")
