"""The ``orbit`` command line: what users type, and one clear line when they type it wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text

from app import enqueue
from app.states import RunStatus
from tests.support.paths import ROOT
from tests.support.runs import fetch_run

Orbit = Callable[..., subprocess.CompletedProcess[str]]
UNREACHABLE = "postgresql://orbit:s3cret@127.0.0.1:1/orbit"
# The same secret in each place libpq takes a password from, PGPASSWORD included.
SECRET_FORMS = [
    {"DATABASE_URL": UNREACHABLE},
    {"DATABASE_URL": "postgresql://orbit@127.0.0.1:1/orbit?password=s3cret"},
    {"DATABASE_URL": "postgresql://orbit@127.0.0.1:1/orbit?sslmode=disable&password=s3cret&x=1"},
    {"DATABASE_URL": "postgresql://orbit@127.0.0.1:1/orbit", "PGPASSWORD": "s3cret"},
]


def _runs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM runs")).scalar_one())


def test_enqueue_prints_the_id_and_status_shows_the_run(engine: Engine, orbit: Orbit) -> None:
    made = orbit("enqueue", "test.echo", "--params", '{"x": 1}', "--priority", "5", "--delay", "1h")
    assert made.returncode == 0, made.stderr
    run_id = int(made.stdout.strip())
    run = fetch_run(engine, run_id)
    assert (run.pipeline, run.params, run.priority, run.status) == ("test.echo", {"x": 1}, 5, "pending")
    shown = orbit("status", str(run_id), "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["id"] == run_id
    listed = orbit("runs", "--status", "pending", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [run_id]


def test_enqueue_with_a_key_returns_the_live_run(engine: Engine, orbit: Orbit) -> None:
    first = orbit("enqueue", "test.noop", "--key", "invoice-42").stdout
    second = orbit("enqueue", "test.noop", "--key", "invoice-42").stdout
    assert first == second
    assert _runs(engine) == 1


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["enqueue", "no.such.pipeline"], 2, "orbit: unknown pipeline 'no.such.pipeline'"),
        (["enqueue", "test.echo", "--params", "{bad"], 2, "orbit: --params is not valid JSON"),
        (["enqueue", "test.echo", "--params", "[1, 2]"], 2, "orbit: --params must be a JSON object"),
        (["enqueue", "test.echo", "--delay", "soon"], 2, "orbit: "),
        (["status", "987654"], 1, "orbit: run 987654 does not exist"),
        (["cancel", "987654"], 1, "orbit: run 987654 does not exist"),
        (["resume", "987654"], 1, "orbit: run 987654 does not exist"),
        (["cancel", "12x"], 2, "orbit cancel: argument run_id: a run id is a whole number"),
        (["runs", "--status", "lost"], 2, "orbit runs: argument --status: invalid choice"),
        (["launch"], 2, "orbit: argument COMMAND: invalid choice"),
    ],
)
def test_bad_input_gets_one_line_and_a_nonzero_status(
    engine: Engine, orbit: Orbit, args: list[str], status: int, message: str
) -> None:
    result = orbit(*args)
    assert result.returncode == status
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(message)
    assert _runs(engine) == 0


@pytest.mark.parametrize(
    "args", [["enqueue", "test.noop"], ["runs"], ["check-interrupted"], ["recover", "--auto-resume"]]
)
def test_an_unreachable_database_is_one_line_without_the_password(orbit: Orbit, args: list[str]) -> None:
    result = orbit(*args, env={"DATABASE_URL": UNREACHABLE})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("orbit: cannot reach the database")
    assert "s3cret" not in result.stderr and "***" in result.stderr


@pytest.mark.parametrize("env", SECRET_FORMS, ids=["userinfo", "query", "query-among-others", "pgpassword"])
def test_no_form_of_password_is_printed_when_the_database_is_unreachable(
    orbit: Orbit, env: dict[str, str]
) -> None:
    """The CLI's "cannot reach" line masks a password wherever the URL carries it."""
    result = orbit("runs", env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("orbit: cannot reach the database")
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(
    "url", ["mysql://orbit:s3cret@db/orbit?password=s3cret", "postgresql://a:s3cret@b@c:x/orbit"]
)
def test_an_invalid_database_url_is_refused_without_its_password(orbit: Orbit, url: str) -> None:
    """A DATABASE_URL that is not one is one line, exit 2, with its password masked."""
    result = orbit("runs", env={"DATABASE_URL": url})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("orbit: invalid setting DATABASE_URL=")
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("env", SECRET_FORMS, ids=["userinfo", "query", "query-among-others", "pgpassword"])
def test_the_worker_refuses_an_unreachable_database_with_status_1(
    worker_env: dict[str, str], env: dict[str, str]
) -> None:
    """Exit 1, and neither its "Using database" line nor its error shows the password."""
    result = subprocess.run(
        [sys.executable, "-m", "app.worker"],
        env={**worker_env, **env, "LOG_FORMAT": "json"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("orbit: cannot reach the database")
    assert "s3cret" not in result.stderr


def test_cancel_twice_says_why_the_second_did_nothing(engine: Engine, orbit: Orbit) -> None:
    with engine.begin() as conn:
        run_id = enqueue("test.noop", {}, connection=conn)
    assert orbit("cancel", str(run_id)).returncode == 0
    again = orbit("cancel", str(run_id))
    assert again.returncode == 1
    assert again.stderr.strip() == f"orbit: run {run_id} is cancelled: only pending or running runs cancel"
    assert fetch_run(engine, run_id).status == RunStatus.CANCELLED
