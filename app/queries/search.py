"""Finding runs for people: the filtered list with its cursor, bulk actions by the same filter, the
counts and the hour's chart of the console and the HTTP API, and the changes its live view shows.

These statements may read much of the table (a text search does), so each switches the JIT off
for its transaction: compiling costs more than it saves on queries of a few milliseconds, and a
stock server compiles any plan whose estimated cost passes 100,000.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, text

from app.queries.common import (
    CANCELLED,
    FINAL_OUTCOMES_SQL,
    FINISHED_SQL,
    LIVE_SQL,
    PENDING,
    RUNNING,
    SUCCEEDED,
)

_NO_JIT = text("SELECT set_config('jit', 'off', true)")


@dataclass(frozen=True)
class RunFilter:
    """Which runs: each field None means any. ``like``: a LIKE pattern of the pipeline (see
    app.globs); ``text``: a LIKE pattern matched, case-insensitively, in params and error."""

    status: str | None = None
    like: str | None = None
    text: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def values(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "like": self.like,
            "text": self.text,
            "since": self.since,
            "until": self.until,
        }


_MATCHES = """
    (CAST(:status AS text) IS NULL OR r.status = :status)
    AND (CAST(:like AS text) IS NULL OR r.pipeline LIKE :like)
    AND (CAST(:text AS text) IS NULL OR CAST(r.params AS text) ILIKE :text OR r.error ILIKE :text)
    AND (CAST(:since AS timestamptz) IS NULL OR r.created_at >= :since)
    AND (CAST(:until AS timestamptz) IS NULL OR r.created_at < :until)
"""

_SEARCH = text(f"""
    SELECT r.id, r.pipeline, r.status, r.attempt, r.max_attempts, r.priority, r.worker_id,
           r.created_at, r.run_at, r.started_at, r.finished_at, r.error, r.key
    FROM runs r
    WHERE {_MATCHES} AND (CAST(:before AS bigint) IS NULL OR r.id < :before)
    ORDER BY r.id DESC LIMIT :limit
""")

# Bulk actions read their runs under the same filter, newest first, locked; the caller decides
# what to do with them and whether their number needs a higher role.
_MATCHING_IDS = text(f"""
    SELECT r.id FROM runs r WHERE {_MATCHES} AND r.status IN :statuses
    ORDER BY r.id DESC LIMIT :limit
""").bindparams(bindparam("statuses", expanding=True))

_CANCEL_MANY = text(f"""
    UPDATE runs SET status = {CANCELLED}, finished_at = now(), error = 'cancelled'
    WHERE id = ANY(CAST(:ids AS bigint[])) AND status IN {LIVE_SQL}
    RETURNING id
""")

_CANCEL_PENDING_MATCHING = text(f"""
    UPDATE runs SET status = {CANCELLED}, finished_at = now(), error = 'cancelled'
    WHERE status = {PENDING} AND pipeline LIKE :like
    RETURNING id
""")

# Live states exactly (from the partial indexes); finished ones over a window (finished_at index),
# so the cost follows the live queue and the window, not the history kept.
_COUNTS = text(f"""
    SELECT pipeline,
           CASE WHEN status = {PENDING} AND run_at > now() THEN 'scheduled' ELSE status END AS status,
           count(*) AS runs
    FROM runs
    WHERE status IN {LIVE_SQL}
       OR (status IN {FINISHED_SQL} AND finished_at >= now() - make_interval(secs => :window))
    GROUP BY 1, 2 ORDER BY 1, 2
""")

_OLDEST_DUE = text(f"""
    SELECT id, pipeline, run_at, EXTRACT(EPOCH FROM now() - run_at)::double precision AS waited_s
    FROM runs WHERE status = {PENDING} AND run_at <= now()
    ORDER BY run_at, id LIMIT 1
""")

# Finished runs per minute over the last :minutes, for the console's chart.
_PER_MINUTE = text(f"""
    SELECT date_trunc('minute', finished_at) AS minute,
           count(*) FILTER (WHERE status = {SUCCEEDED}) AS succeeded,
           count(*) FILTER (WHERE status <> {SUCCEEDED}) AS failed
    FROM runs
    WHERE status IN {FINAL_OUTCOMES_SQL} AND finished_at >= date_trunc('minute', now())
          - make_interval(mins => :minutes - 1)
    GROUP BY 1 ORDER BY 1
""")

# What changed since a point in time, for the live view: each kind of change read from an index
# (new runs by id, started ones among the running, finished ones by finished_at).
_CHANGES = text(f"""
    SELECT id, pipeline, status, attempt, worker_id FROM (
        (SELECT id, pipeline, status, attempt, worker_id FROM runs WHERE id > :after_id
         ORDER BY id LIMIT :limit)
        UNION
        (SELECT id, pipeline, status, attempt, worker_id FROM runs
         WHERE status = {RUNNING} AND started_at > :since LIMIT :limit)
        UNION
        (SELECT id, pipeline, status, attempt, worker_id FROM runs
         WHERE finished_at > :since ORDER BY finished_at LIMIT :limit)
    ) AS changed ORDER BY id
""")
_LAST_ID = text("SELECT COALESCE(max(id), 0) FROM runs")
_LAST_FINISHED = text("SELECT max(finished_at) FROM runs WHERE finished_at IS NOT NULL")


def _no_jit(conn: Connection) -> None:
    conn.execute(_NO_JIT)


def search_runs(conn: Connection, where: RunFilter, *, before: int | None, limit: int) -> list[Row[Any]]:
    """Runs matching ``where``, newest first, older than the run ``before`` (the cursor)."""
    _no_jit(conn)
    return list(conn.execute(_SEARCH, {**where.values(), "before": before, "limit": limit}))


def matching_ids(conn: Connection, where: RunFilter, statuses: tuple[str, ...], limit: int) -> list[int]:
    """Ids of the runs matching ``where`` in one of ``statuses``, newest first, at most ``limit``."""
    _no_jit(conn)
    values = {**where.values(), "statuses": statuses, "limit": limit}
    return [int(i) for i in conn.execute(_MATCHING_IDS, values).scalars()]


def cancel_many(conn: Connection, ids: list[int]) -> list[int]:
    """Cancel those of ``ids`` still pending or running; returns the ids cancelled."""
    return sorted(int(i) for i in conn.execute(_CANCEL_MANY, {"ids": ids}).scalars())


def cancel_pending_matching(conn: Connection, like: str) -> int:
    """Cancel every pending run of the pipelines matching ``like`` (a flush); how many."""
    return len(conn.execute(_CANCEL_PENDING_MATCHING, {"like": like}).all())


def counts(conn: Connection, window_s: float) -> list[Row[Any]]:
    """(pipeline, status, runs): live runs now (pending split into due and scheduled), finished
    ones within the window."""
    _no_jit(conn)
    return list(conn.execute(_COUNTS, {"window": window_s}))


def oldest_due(conn: Connection) -> Row[Any] | None:
    """The pending run that has waited longest since it was due."""
    return conn.execute(_OLDEST_DUE).first()


def per_minute(conn: Connection, minutes: int) -> list[Row[Any]]:
    """(minute, succeeded, failed) for each minute of the last ``minutes`` that had any."""
    _no_jit(conn)
    return list(conn.execute(_PER_MINUTE, {"minutes": minutes}))


def changes(conn: Connection, after_id: int, since: datetime, limit: int = 500) -> list[Row[Any]]:
    """Runs enqueued after ``after_id``, or started or finished after ``since``."""
    _no_jit(conn)
    return list(conn.execute(_CHANGES, {"after_id": after_id, "since": since, "limit": limit}))


def last_id(conn: Connection) -> int:
    return int(conn.execute(_LAST_ID).scalar_one())


def last_finished(conn: Connection) -> datetime | None:
    """When a run last finished (the report's lastRunTime)."""
    return conn.execute(_LAST_FINISHED).scalar()
