"""Fleet operations kept in tables: pauses and drains, retention, schedules."""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, text

from app.queries.common import (
    FINISHED_SQL,
    PENDING,
    RUNNING,
)

_PAUSE = text("""
    INSERT INTO pauses (pattern, like_pattern, paused_by) VALUES (:pattern, :like_pattern, :paused_by)
    ON CONFLICT (pattern) DO NOTHING
    RETURNING pattern
""")
_UNPAUSE = text("DELETE FROM pauses WHERE pattern = :pattern RETURNING pattern")
_LIST_PAUSES = text(f"""
    SELECT p.pattern, p.paused_at, p.paused_by,
           (SELECT count(*) FROM runs r WHERE r.status = {PENDING} AND r.pipeline LIKE p.like_pattern)
           AS pending
    FROM pauses p ORDER BY p.paused_at, p.pattern
""")
# Every pipeline some registered worker runs (stopped ones included: they may come back).
_WORKER_PIPELINES = text("SELECT DISTINCT unnest(pipelines) AS pipeline FROM workers")
_RUNNING_MATCHING = text(f"""
    SELECT id, pipeline, worker_id, started_at FROM runs
    WHERE status = {RUNNING} AND pipeline LIKE :like_pattern
    ORDER BY id
""")


# An override names only what it changes; setting a glob again changes the fields given.
_SET_LIMIT = text("""
    INSERT INTO limits AS l (pattern, like_pattern, concurrency, rate_count, rate_seconds, group_concurrency, set_by)
    VALUES (:pattern, :like_pattern, :concurrency, :rate_count, :rate_seconds, :group_concurrency, :set_by)
    ON CONFLICT (pattern) DO UPDATE SET
        concurrency = COALESCE(EXCLUDED.concurrency, l.concurrency),
        rate_count = COALESCE(EXCLUDED.rate_count, l.rate_count),
        rate_seconds = COALESCE(EXCLUDED.rate_seconds, l.rate_seconds),
        group_concurrency = COALESCE(EXCLUDED.group_concurrency, l.group_concurrency),
        set_at = now(), set_by = EXCLUDED.set_by
""")
_CLEAR_LIMIT = text("DELETE FROM limits WHERE pattern = :pattern RETURNING pattern")
_LIST_LIMITS = text("""
    SELECT pattern, concurrency, rate_count, rate_seconds, group_concurrency, set_at, set_by
    FROM limits ORDER BY set_at, pattern
""")
# A day: no rate's window is longer (app.limits.MAX_WINDOW).
_PRUNE_STARTS = text("DELETE FROM run_starts WHERE started_at < now() - interval '1 day'")


def set_limit(conn: Connection, pattern: str, like_pattern: str, values: dict[str, Any], set_by: str) -> None:
    """Override the limits of the pipelines matching ``pattern``: the fields of ``values`` that are
    not None (concurrency, rate_count and rate_seconds, group_concurrency)."""
    conn.execute(_SET_LIMIT, {"pattern": pattern, "like_pattern": like_pattern, "set_by": set_by, **values})


def clear_limit(conn: Connection, pattern: str) -> bool:
    """Remove the override ``pattern``; False when there was none."""
    return conn.execute(_CLEAR_LIMIT, {"pattern": pattern}).first() is not None


def list_limits(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(_LIST_LIMITS))


def prune_starts(conn: Connection) -> int:
    """Forget the starts of rate-limited runs older than any window."""
    return conn.execute(_PRUNE_STARTS).rowcount


def pause(conn: Connection, pattern: str, like_pattern: str, paused_by: str) -> bool:
    """Pause the pipelines matching ``pattern``; False when it was paused already."""
    values = {"pattern": pattern, "like_pattern": like_pattern, "paused_by": paused_by}
    return conn.execute(_PAUSE, values).first() is not None


def unpause(conn: Connection, pattern: str) -> bool:
    """Lift the pause ``pattern``; False when there was none."""
    return conn.execute(_UNPAUSE, {"pattern": pattern}).first() is not None


def list_pauses(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(_LIST_PAUSES))


def worker_pipelines(conn: Connection) -> set[str]:
    return {str(name) for name in conn.execute(_WORKER_PIPELINES).scalars()}


def running_matching(conn: Connection, like_pattern: str) -> list[Row[Any]]:
    return list(conn.execute(_RUNNING_MATCHING, {"like_pattern": like_pattern}))


# Finished runs past their status's retention; each call deletes at most :batch rows, and SKIP
# LOCKED leaves rows another pruner or reader holds, so no statement holds many locks for long.
# ON DELETE CASCADE removes the steps of each run with it.
_EXPIRED_WHERE = f"""
    status IN {FINISHED_SQL} AND finished_at IS NOT NULL
    AND finished_at < now() - make_interval(secs => CAST(CAST(:retention AS jsonb) ->> status AS double precision))
"""

_PRUNE_BATCH = text(f"""
    DELETE FROM runs WHERE id IN (
        SELECT id FROM runs WHERE {_EXPIRED_WHERE}
        ORDER BY finished_at LIMIT :batch FOR UPDATE SKIP LOCKED
    )
""")

_COUNT_EXPIRED = text(f"SELECT status, count(*) AS runs FROM runs WHERE {_EXPIRED_WHERE} GROUP BY status")


def prune_runs(conn: Connection, retention: dict[str, timedelta], batch: int) -> int:
    """Delete up to ``batch`` finished runs older than the retention of their status."""
    values = {"retention": _retention_json(retention), "batch": batch}
    return conn.execute(_PRUNE_BATCH, values).rowcount


def count_expired(conn: Connection, retention: dict[str, timedelta]) -> dict[str, int]:
    """How many finished runs of each status are past their retention (what a prune would delete)."""
    rows = conn.execute(_COUNT_EXPIRED, {"retention": _retention_json(retention)})
    return {str(row.status): int(row.runs) for row in rows}


def _retention_json(retention: dict[str, timedelta]) -> str:
    return json.dumps({status: age.total_seconds() for status, age in retention.items()})


_SCHEDULE_STATES = text("""
    SELECT pipeline, last_slot, next_slot FROM schedules WHERE pipeline = ANY(:pipelines)
    ORDER BY pipeline FOR UPDATE
""")

_SAVE_SCHEDULE = text("""
    INSERT INTO schedules (pipeline, last_slot, next_slot) VALUES (:pipeline, :last_slot, :next_slot)
    ON CONFLICT (pipeline) DO UPDATE SET last_slot = EXCLUDED.last_slot, next_slot = EXCLUDED.next_slot
""")

_LIST_SCHEDULES = text("SELECT pipeline, last_slot, next_slot FROM schedules ORDER BY pipeline")


def db_now(conn: Connection) -> datetime:
    return conn.execute(text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def schedule_states(conn: Connection, pipelines: Sequence[str]) -> dict[str, Row[Any]]:
    """The stored state of each schedule, locked until the caller's transaction ends."""
    rows = conn.execute(_SCHEDULE_STATES, {"pipelines": list(pipelines)})
    return {row.pipeline: row for row in rows}


def save_schedule(conn: Connection, pipeline: str, last_slot: datetime, next_slot: datetime) -> None:
    values = {"pipeline": pipeline, "last_slot": last_slot, "next_slot": next_slot}
    conn.execute(_SAVE_SCHEDULE, values)


def list_schedules(conn: Connection) -> dict[str, Row[Any]]:
    return {row.pipeline: row for row in conn.execute(_LIST_SCHEDULES)}


# One leader at a time across the fleet (rescue, retention, schedules): a transaction-level
# advisory lock, released when the pass commits (and right through PgBouncer's transaction mode).
_LEAD = text("SELECT pg_try_advisory_xact_lock(7270186)")


def lead(conn: Connection) -> bool:
    """Take the fleet's leader lock for the caller's transaction; False when another worker holds it."""
    return bool(conn.execute(_LEAD).scalar())
