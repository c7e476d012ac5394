"""Enqueueing from Python: validation, the caller's transaction, keys and batches."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app import EnqueueError, enqueue, enqueue_many
from tests.support.runs import fetch_run


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM runs")).scalar_one())


def test_enqueue_in_the_callers_transaction_rolls_back_with_it(engine: Engine) -> None:
    """A run enqueued in a transaction that rolls back does not exist."""
    with engine.connect() as conn:
        trans = conn.begin()
        run_id = enqueue("test.noop", {"a": 1}, connection=conn)
        assert run_id > 0
        trans.rollback()
    assert _count(engine) == 0


def test_enqueue_on_a_connection_begins_its_transaction_as_execute_would(engine: Engine) -> None:
    """A connection with no transaction yet gets one, so the caller's commit() keeps the run."""
    with engine.connect() as conn:
        run_id = enqueue("test.noop", {}, connection=conn)
        assert conn.in_transaction()
        conn.commit()
    assert fetch_run(engine, run_id) is not None


def test_a_database_error_is_raised_as_sqlalchemys(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        with pytest.raises(DBAPIError):
            conn.execute(text("SELECT 1 / 0"))
        with pytest.raises(DBAPIError, match="current transaction is aborted"):
            enqueue("test.noop", {}, connection=conn)


def test_enqueue_in_a_session_commits_with_it(engine: Engine) -> None:
    """With a Session the run is committed with the caller's own work."""
    with Session(engine) as session:
        run_id = enqueue("test.noop", {"a": 1}, priority=5, delay=60, connection=session)
        session.commit()
    run = fetch_run(engine, run_id)
    assert run.priority == 5
    assert run.params == {"a": 1}
    assert run.run_at > run.created_at


def test_a_run_that_asks_for_nothing_is_stored_as_one_asking_for_every_default(engine: Engine) -> None:
    """Such a run goes in by a shorter INSERT that leaves its columns to the table: the row is the
    one the full INSERT writes for the same run (a key taking it the full way, then cleared)."""
    columns = "status, priority, attempt, max_attempts, timeout, run_group, params, run_at = created_at"
    with engine.begin() as conn:
        plain = enqueue("test.noop", {"a": 1}, connection=conn)
        full = enqueue(
            "test.noop", {"a": 1}, key="takes-the-full-insert", priority=0, delay=0, connection=conn
        )
        conn.execute(text("UPDATE runs SET key = NULL WHERE id = :id"), {"id": full})
        rows = conn.execute(text(f"SELECT {columns} FROM runs WHERE id IN (:a, :b)"), {"a": plain, "b": full})
        stored = [tuple(row) for row in rows]
    assert len(stored) == 2 and stored[0] == stored[1]
    assert stored[0] == ("pending", 0, 0, None, None, None, {"a": 1}, True)


BAD_RUNS = [
    ("no.such.pipeline", {}, "unknown pipeline"),
    ("test.noop", [1, 2], "JSON object"),
    ("test.noop", {"x": float("nan")}, "not valid JSON"),
    ("test.noop", {"x": "\u0000"}, "NUL"),
    ("test.noop", {"x": object()}, "not valid JSON"),
]


@pytest.mark.parametrize(("pipeline", "params", "message"), BAD_RUNS)
def test_bad_input_is_rejected_and_nothing_is_inserted(
    engine: Engine, pipeline: str, params: object, message: str
) -> None:
    """Unknown pipelines and params that are not a JSON object raise EnqueueError."""
    with pytest.raises(EnqueueError, match=message), engine.begin() as conn:
        enqueue(pipeline, params, connection=conn)  # type: ignore[arg-type]
    assert _count(engine) == 0


@pytest.mark.parametrize(("pipeline", "params", "message"), BAD_RUNS)
def test_one_bad_run_in_a_batch_rejects_the_batch(
    engine: Engine, pipeline: str, params: object, message: str
) -> None:
    """enqueue_many checks every run, whatever comes before it: one bad run, nothing inserted."""
    good = [("test.noop", {"i": i}) for i in range(3)] + [("test.fail_now", None)]
    with pytest.raises(EnqueueError, match=message), engine.begin() as conn:
        enqueue_many([*good, (pipeline, params), *good], connection=conn)  # type: ignore[list-item]
    assert _count(engine) == 0


@pytest.mark.parametrize("priority", [1.5, True, 2**31, "high"])
def test_enqueue_many_rejects_a_bad_priority(engine: Engine, priority: object) -> None:
    with pytest.raises(EnqueueError, match="priority must be a whole number"), engine.begin() as conn:
        enqueue_many([("test.noop", {})], priority=priority, connection=conn)  # type: ignore[arg-type]
    assert _count(engine) == 0


def test_a_live_key_returns_the_existing_run(engine: Engine) -> None:
    """While a run with the key is pending, enqueueing again returns its id."""
    with engine.begin() as conn:
        first = enqueue("test.noop", {}, key="invoice-42", connection=conn)
        second = enqueue("test.noop", {}, key="invoice-42", connection=conn)
        other = enqueue("test.noop", {}, key="invoice-43", connection=conn)
    assert first == second != other
    assert _count(engine) == 2


def test_enqueue_many_inserts_thousands_in_one_statement(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """enqueue_many reserves 5000 ids in one statement and inserts the runs in one COPY; the ids
    come back one per run, in order."""
    statements: list[str] = []

    def counting(real: Any) -> Any:
        def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            statements.append(str(query).split()[0])
            return real(self, query, *args, **kwargs)

        return counted

    with engine.begin() as conn:
        for method in ("execute", "copy"):
            monkeypatch.setattr(psycopg.Cursor, method, counting(getattr(psycopg.Cursor, method)))
        ids = enqueue_many([("test.noop", {"i": i}) for i in range(5000)], connection=conn)
        monkeypatch.undo()
    assert statements == ["SELECT", "COPY"]
    assert len(ids) == 5000 == _count(engine)
    assert ids == sorted(ids)
    with engine.connect() as conn:
        params = conn.execute(text("SELECT params FROM runs ORDER BY id")).scalars().all()
    assert [p["i"] for p in params] == list(range(5000))
