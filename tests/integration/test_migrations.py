"""The schema: made by Alembic only, reversible, and in step with the code's state machine."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from app.access import Role
from app.database import DatabaseError, check_schema, downgrade, make_engine, migrate
from app.states import RunStatus, StepStatus
from tests.support.paths import ROOT
from tests.support.servers import Scratch, TestServer

TABLES = {"runs", "run_steps", "workers", "pauses", "schedules", "api_tokens", "console_sessions"}


@pytest.fixture
def blank(server: TestServer) -> Iterator[Scratch]:
    """An empty database: migrated on its direct URL, used by Orbit on its own (maybe pooled) one."""
    with server.scratch_database() as database:
        yield database


def test_upgrade_creates_the_tables_and_downgrade_removes_them(blank: Scratch) -> None:
    """`upgrade head` creates every table; `downgrade base` removes them."""
    migrate(blank.direct_url)
    engine = make_engine(blank.url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    check_schema(engine)
    downgrade(blank.direct_url, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    migrate(blank.direct_url)
    check_schema(engine)
    engine.dispose()


def test_downgrade_to_0001_drops_only_the_operations_tables(blank: Scratch) -> None:
    """Rolling back one release keeps the queue and its runs."""
    migrate(blank.direct_url)
    engine = make_engine(blank.url)
    downgrade(blank.direct_url, "0001")
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "run_steps", "workers"} <= tables
    assert not {"pauses", "schedules"} & tables
    migrate(blank.direct_url)
    check_schema(engine)
    engine.dispose()


GRANTEE = "orbit_test_starts_writer"  # a role of this test's own (roles belong to the whole server)


def _grants_stayed(engine: Engine) -> bool:
    with engine.connect() as conn:
        allowed = conn.execute(
            text(f"""SELECT has_table_privilege('{GRANTEE}', 'run_starts', 'INSERT')
                            AND has_table_privilege('{GRANTEE}', 'run_starts', 'DELETE')""")
        ).scalar_one()
    return bool(allowed)


def test_the_starts_of_rated_pipelines_survive_their_conversion_both_ways(blank: Scratch) -> None:
    """0011 turns a row per start into a row per claim time with running totals, and back, in the
    table itself: what deploy/roles.sql granted on it stays."""
    migrate(blank.direct_url, "0010_wake_one")
    engine = make_engine(blank.direct_url)
    with engine.begin() as conn:
        conn.execute(
            text(f"DO $$ BEGIN CREATE ROLE {GRANTEE}; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        )
    try:
        _convert_both_ways(blank, engine)
    finally:
        with engine.begin() as conn:  # the role is the server's: gone with its grants here, unless
            conn.execute(text(f"DROP OWNED BY {GRANTEE}"))  # another database still grants it some
            dropped = f"DROP ROLE {GRANTEE}; EXCEPTION WHEN dependent_objects_still_exist THEN NULL"
            conn.execute(text(f"DO $$ BEGIN {dropped}; END $$"))
        engine.dispose()


def _convert_both_ways(blank: Scratch, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"GRANT INSERT, DELETE ON run_starts TO {GRANTEE}"))
        conn.execute(
            text("""INSERT INTO run_starts (pipeline, started_at) VALUES
                    ('a', '2026-01-01 10:00+00'), ('a', '2026-01-01 10:00+00'), ('b', '2026-01-01 10:00+00'),
                    ('a', '2026-01-01 10:05+00')""")
        )
    migrate(blank.direct_url)
    listed = "SELECT pipeline, EXTRACT(MINUTE FROM started_at)::int, {} FROM run_starts ORDER BY 1, 2"
    with engine.connect() as conn:
        rows = conn.execute(text(listed.format("starts, total"))).all()
    assert [tuple(row) for row in rows] == [("a", 0, 2, 2), ("a", 5, 1, 3), ("b", 0, 1, 1)]
    assert _grants_stayed(engine)
    downgrade(blank.direct_url, "0010_wake_one")
    with engine.connect() as conn:
        rows = conn.execute(text(listed.format("1"))).all()
    assert [tuple(row) for row in rows] == [("a", 0, 1), ("a", 0, 1), ("a", 5, 1), ("b", 0, 1)]
    assert _grants_stayed(engine)


def test_a_schema_behind_the_code_is_refused_with_a_hint(blank: Scratch) -> None:
    """check_schema names `orbit migrate` when the database is not migrated."""
    engine = make_engine(blank.url)
    with pytest.raises(DatabaseError, match="orbit migrate"):
        check_schema(engine)
    engine.dispose()


def _check_values(engine: Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        definitions = conn.execute(
            text("""
                SELECT pg_get_constraintdef(oid) FROM pg_constraint
                WHERE conrelid = CAST(:table AS regclass) AND contype = 'c'
                  AND pg_get_constraintdef(oid) LIKE '%status%ANY%'
            """),
            {"table": table},
        ).scalars()
        return {v for d in definitions for v in re.findall(r"'(\w+)'::text", d)}


def test_status_check_constraints_match_the_enums(engine: Engine) -> None:
    """The database's CHECK constraints list exactly the states of RunStatus and StepStatus."""
    assert _check_values(engine, "runs") == {str(s) for s in RunStatus}
    assert _check_values(engine, "run_steps") == {str(s) for s in StepStatus}


def test_token_role_check_matches_the_roles(engine: Engine) -> None:
    """api_tokens.role accepts exactly the names of app.access.Role."""
    with engine.connect() as conn:
        definition = conn.execute(
            text("""SELECT pg_get_constraintdef(oid) FROM pg_constraint
                    WHERE conrelid = CAST('api_tokens' AS regclass) AND contype = 'c'
                      AND pg_get_constraintdef(oid) LIKE '%role%'""")
        ).scalar_one()
    assert set(re.findall(r"'(\w+)'::text", definition)) == {str(role) for role in Role}


def test_a_plain_sql_insert_gets_sensible_defaults(engine: Engine) -> None:
    """INSERT INTO runs (pipeline, params) is enough: the rest has defaults."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO runs (pipeline, params) VALUES ('test.noop', '{}')"))
        row = conn.execute(text("SELECT * FROM runs")).one()
    assert row.status == "pending"
    assert row.attempt == 0
    assert row.errors == []


def test_the_claim_uses_the_partial_index(engine: Engine) -> None:
    """A pipeline's pending runs in claim order come from runs_pending_idx, not a sequential scan."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = conn.execute(
            text("""EXPLAIN SELECT id FROM runs
                    WHERE status = 'pending' AND run_at <= now() AND pipeline = 'test.noop'
                    ORDER BY priority DESC, run_at, id LIMIT 10 FOR UPDATE SKIP LOCKED""")
        ).scalars()
        assert "runs_pending_idx" in "\n".join(plan)


def test_plain_alembic_upgrade_head_works_too(blank: Scratch, worker_env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
        env={**worker_env, **blank.env()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    engine = make_engine(blank.url)
    check_schema(engine)
    engine.dispose()
