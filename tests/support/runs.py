"""Factories for rows in a given state: finished, stuck or waiting runs, live or silent workers;
and the rows read back (``fetch_run``, ``executions``).

Times are given as seconds before the database's ``now()``, so tests never compare two clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text

from app import queries

_ADD_RUN = text("""
    INSERT INTO runs (pipeline, status, attempt, max_attempts, run_at, started_at, finished_at,
                      heartbeat_at, worker_id, timeout, error)
    VALUES (:pipeline, :status, :attempt, 3, :run_at, :started_at, :finished_at,
            :heartbeat_at, :worker_id, make_interval(secs => :timeout), :error)
    RETURNING id
""")

_ADD_WORKER = text("""
    INSERT INTO workers (id, hostname, pid, heartbeat_at, stopped_at, concurrency, pipeline_filter, version,
                         pipelines)
    VALUES (:id, 'test-host', 1, :heartbeat_at, :stopped_at, 1, '*', 'test', :pipelines)
""")


def _ago(now: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else now - timedelta(seconds=seconds)


def _now(conn: Connection) -> datetime:
    return conn.execute(text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def finished_run(
    engine: Engine, pipeline: str, status: str, *, duration: float = 1.0, ago: float = 10.0, **kw: Any
) -> int:
    """A run that ended ``ago`` seconds ago after running ``duration`` seconds."""
    error = None if status == "succeeded" else kw.get("error", f"{status} in a test")
    return _add(engine, pipeline, status, started=ago + duration, finished=ago, error=error)


def pending_run(engine: Engine, pipeline: str, *, due_ago: float = 0.0) -> int:
    """A pending run that became due ``due_ago`` seconds ago (negative: in the future)."""
    return _add(engine, pipeline, "pending", due=due_ago, attempt=0)


def running_run(
    engine: Engine, pipeline: str, worker_id: str, *, heartbeat_ago: float = 0.0, started_ago: float = 1.0
) -> int:
    """A running run held by ``worker_id``, whose last heartbeat was ``heartbeat_ago`` seconds ago."""
    return _add(
        engine, pipeline, "running", started=started_ago, heartbeat=heartbeat_ago, worker_id=worker_id
    )


def _add(
    engine: Engine,
    pipeline: str,
    status: str,
    *,
    due: float | None = None,
    started: float | None = None,
    finished: float | None = None,
    heartbeat: float | None = None,
    worker_id: str | None = None,
    attempt: int = 1,
    error: str | None = None,
) -> int:
    with engine.begin() as conn:
        now = _now(conn)
        values = {
            "pipeline": pipeline,
            "status": status,
            "attempt": attempt,
            "run_at": _ago(now, due if due is not None else started or 0.0),
            "started_at": _ago(now, started),
            "finished_at": _ago(now, finished),
            "heartbeat_at": _ago(now, heartbeat),
            "worker_id": worker_id,
            "timeout": 600.0,
            "error": error,
        }
        return int(conn.execute(_ADD_RUN, values).scalar_one())


def worker_row(
    engine: Engine,
    worker_id: str,
    *,
    heartbeat_ago: float = 0.0,
    stopped: bool = False,
    pipelines: Sequence[str] = ("test.noop",),
) -> None:
    """A registered worker running ``pipelines``, whose last heartbeat was ``heartbeat_ago`` seconds ago."""
    with engine.begin() as conn:
        now = _now(conn)
        beat = _ago(now, heartbeat_ago)
        values = {"id": worker_id, "heartbeat_at": beat, "stopped_at": beat if stopped else None}
        conn.execute(_ADD_WORKER, {**values, "pipelines": list(pipelines)})


# --- reading back ----------------------------------------------------------------------------------


def fetch_run(engine: Engine, run_id: int) -> Any:
    with engine.connect() as conn:
        return queries.get_run(conn, run_id)


def executions(engine: Engine, note: str | None = None) -> list[Any]:
    """The test pipelines' side table: one row per execution, oldest first (``note`` filters)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM executions WHERE note = COALESCE(:note, note) ORDER BY at"),
            {"note": note},
        )
        return list(rows)
