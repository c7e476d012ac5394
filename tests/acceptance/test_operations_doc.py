"""docs/operations.md: every command on the page runs, verbatim, and does what the page says."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from app import spool
from app.database import make_engine, migrate
from app.queries import Success
from app.states import RunStatus
from tests.support import runbook
from tests.support.runbook import Command
from tests.support.runs import fetch_run, finished_run, running_run, worker_row
from tests.support.servers import Scratch, TestServer

DAY = 86_400.0

# Where each (section, program) of the page is run verbatim. The fleet's commands need a real
# supervisord, so tests/test_supervisord.py runs them.
RUN_BY = {
    ("The fleet under supervisord", "make"): "tests/test_supervisord.py",
    ("The fleet under supervisord", "supervisorctl"): "tests/test_supervisord.py",
    ("Deploy", "supervisorctl"): "tests/test_supervisord.py",
    ("Roll back", "supervisorctl"): "tests/test_supervisord.py",
    ("Pause and drain", "orbit"): __name__,
    ("Flow control", "orbit"): __name__,
    ("Deploy", "orbit"): __name__,
    ("Roll back", "orbit"): __name__,
    ("Roll back", "alembic"): __name__,
    ("Enqueue: idempotent and in batches", "orbit"): __name__,
    ("Retention", "orbit"): __name__,
    ("Schedules", "orbit"): __name__,
    ("After an outage", "orbit"): __name__,
    ("Outcomes saved during an outage", "orbit"): __name__,
}


def test_every_command_on_the_page_is_run_by_a_test() -> None:
    """A command added to the runbook without a test that runs it fails here."""
    documented = {(c.section, c.program) for c in runbook.commands()}
    assert documented == set(RUN_BY)


def _section(name: str, program: str = "orbit") -> list[Command]:
    found = runbook.commands(name, program)
    assert found, f"no {program} command in section {name!r}"
    return found


def _ok(command: Command, env: dict[str, str], cwd: Path = runbook.ROOT) -> str:
    result = runbook.run(command, env, cwd)
    assert result.returncode == 0, f"{command.line}: {result.stderr}"
    return result.stdout


def _rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


def test_flow_control(engine: Engine, worker_env: dict[str, str]) -> None:
    """limit (a rate, a concurrency), limits, and --clear: each exits 0 and does what it says."""
    rate, concurrency, listing, clear = _section("Flow control")
    assert "rate 20/m" in _ok(rate, worker_env)
    assert "concurrency 1" in _ok(concurrency, worker_env)
    shown = _ok(listing, worker_env)
    assert "20/m (override crm.*)" in shown and "1 (override warehouse.load)" in shown
    assert "override removed" in _ok(clear, worker_env)
    assert _rows(engine, "SELECT pattern FROM limits") == [("warehouse.load",)]


def test_pause_and_drain(engine: Engine, worker_env: dict[str, str]) -> None:
    """pause, pauses, unpause, drain GLOB and drain: each exits 0; the drains leave their pauses."""
    pause, pauses, unpause, drain_glob, drain_all = _section("Pause and drain")
    _ok(pause, worker_env)
    assert _rows(engine, "SELECT pattern FROM pauses") == [("reports.*",)]
    assert "reports.*" in _ok(pauses, worker_env)
    _ok(unpause, worker_env)
    assert _rows(engine, "SELECT pattern FROM pauses") == []
    assert "drained" in _ok(drain_glob, worker_env)
    assert "drained" in _ok(drain_all, worker_env)
    assert sorted(_rows(engine, "SELECT pattern FROM pauses")) == [("*",), ("reports.*",)]


def test_enqueue_with_a_key_and_from_a_file(
    engine: Engine, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """The same key twice gives one run; a file and stdin enqueue one run a line."""
    first, again, from_file, from_stdin = _section("Enqueue: idempotent and in batches")
    (tmp_path / "runs.jsonl").write_text('{"invoice": 1}\n{"invoice": 2}\n{"invoice": 3}\n')
    run_id = _ok(first, worker_env, tmp_path)
    assert _ok(again, worker_env, tmp_path) == run_id
    assert _ok(from_file, worker_env, tmp_path).startswith("3 run(s) of invoices.send enqueued")
    assert _ok(from_stdin, worker_env, tmp_path).startswith("2 run(s) of invoices.send enqueued")
    invoices = _rows(engine, "SELECT params->>'invoice' FROM runs ORDER BY id")
    assert [i for (i,) in invoices] == ["42", "1", "2", "3", "7", "8"]


def test_retention_dry_run_then_prune(engine: Engine, worker_env: dict[str, str]) -> None:
    """The dry run deletes nothing; prune applies RETENTION; --older-than one age for all."""
    dry_run, prune, older_than = _section("Retention")
    week_old = finished_run(engine, "invoices.send", "failed", ago=10 * DAY)
    month_old = finished_run(engine, "invoices.send", "succeeded", ago=40 * DAY)
    kept = finished_run(engine, "invoices.send", "failed", ago=10 * DAY)
    env = {**worker_env, "RETENTION_FAILED": "20d"}
    assert "would delete 1 run(s) in all" in _ok(dry_run, env)
    assert fetch_run(engine, month_old) is not None
    _ok(prune, env)
    assert fetch_run(engine, month_old) is None
    assert fetch_run(engine, week_old) is not None
    _ok(older_than, worker_env)
    assert fetch_run(engine, kept) is not None


def test_schedules_lists_the_documented_pipeline(engine: Engine, worker_env: dict[str, str]) -> None:
    """The page's example pipeline is listed with its cron, time zone and next fire time."""
    (listing,) = _section("Schedules")
    example = re.search(r"```python\n(@pipeline\(.*?\))\n", runbook.DOC.read_text())
    assert example is not None
    assert example.group(1) in (runbook.ROOT / "tests" / "support" / "pipelines.py").read_text()
    line = next(li for li in _ok(listing, worker_env).splitlines() if li.startswith("reports.daily "))
    assert "0 6 * * *" in line and "Europe/Paris" in line


def test_after_an_outage(engine: Engine, worker_env: dict[str, str]) -> None:
    """check-interrupted exits 1 on a dead worker's run; recover shows, --auto-resume does it."""
    check, show, auto_resume, resume, health = _section("After an outage")
    worker_row(engine, "dead-host:1", heartbeat_ago=3600, stopped=False)
    lost = running_run(engine, "invoices.send", "dead-host:1", heartbeat_ago=3600)
    failed = finished_run(engine, "invoices.send", "failed")
    with engine.begin() as conn:
        conn.execute(text("UPDATE runs SET id = 42 WHERE id = :id"), {"id": failed})

    checked = runbook.run(check, worker_env)
    assert checked.returncode == 1 and f"{lost}" in checked.stdout
    assert f"would resume: run {lost}" in _ok(show, worker_env)
    assert fetch_run(engine, lost).status == RunStatus.RUNNING
    assert "Recovered 1 run(s)" in _ok(auto_resume, worker_env)
    assert fetch_run(engine, lost).status == RunStatus.PENDING
    assert "run 42 (invoices.send) is pending" in _ok(resume, worker_env)
    assert runbook.run(health, worker_env).returncode in (0, 1, 2)
    assert runbook.run(check, worker_env).returncode == 0


def test_outcomes_saved_during_an_outage(engine: Engine, worker_env: dict[str, str], tmp_path: Path) -> None:
    """outcomes apply writes the saved outcomes of DATA_DIR, then those of one file, and removes each."""
    every, one = _section("Outcomes saved during an outage")
    in_data_dir = running_run(engine, "invoices.send", "host:1")
    in_a_copy = running_run(engine, "invoices.send", "host:1234")
    saved = spool.path_for(tmp_path / ".orbit", "host:1")
    spool.save(saved, [spool.Unwritten("host:1", "invoices.send", Success(in_data_dir, 1, '"sent"'))])
    copy = tmp_path / "unwritten-outcomes-host_1234.jsonl"
    spool.save(copy, [spool.Unwritten("host:1234", "invoices.send", Success(in_a_copy, 1, '"sent"'))])

    written = "(invoices.send) attempt 1: succeeded: written"
    assert f"run {in_data_dir} {written}" in _ok(every, worker_env, tmp_path)
    assert not saved.exists() and copy.exists()
    assert f"run {in_a_copy} {written}" in _ok(one, worker_env, tmp_path)
    assert not copy.exists()
    assert {fetch_run(engine, i).status for i in (in_data_dir, in_a_copy)} == {RunStatus.SUCCEEDED}


@pytest.fixture
def release_db(server: TestServer) -> Iterator[Scratch]:
    """A database of its own: the rollback downgrades its schema."""
    with server.scratch_database() as database:
        yield database


def test_schema_deploy_then_roll_back(release_db: Scratch, worker_env: dict[str, str]) -> None:
    """drain, migrate, unpause; then drain and alembic downgrade -1 undoes the latest migration (0011)."""
    env = {**worker_env, **release_db.env()}
    migrate(release_db.direct_url)
    drain, upgrade, unpause = _section("Deploy")
    engine = make_engine(release_db.url)
    try:
        assert "drained" in _ok(drain, env)
        assert "at the latest schema" in _ok(upgrade, env)
        _ok(unpause, env)
        assert _rows(engine, "SELECT count(*) FROM pauses") == [(0,)]

        drain_again, *_ = _section("Roll back")
        (downgrade,) = _section("Roll back", "alembic")
        _ok(drain_again, env)
        _ok(downgrade, env)
        tables = set(inspect(engine).get_table_names())
        assert {"runs", "run_steps", "workers", "pauses", "schedules"} <= tables
        assert _rows(engine, "SELECT version_num FROM alembic_version") == [("0010_wake_one",)]
        starts = {column["name"] for column in inspect(engine).get_columns("run_starts")}
        assert starts == {"pipeline", "started_at"}  # a row per start again
        trigger = "SELECT prosrc FROM pg_proc WHERE proname = 'orbit_notify_runs'"
        assert "inserted" in _rows(engine, trigger)[0][0]  # 0010 kept: new runs named
    finally:
        engine.dispose()
