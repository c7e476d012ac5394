"""What the fleet looks like: queue depth, the fleet report and the health snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row, text

from app.queries.common import (
    FINAL_OUTCOMES_SQL,
    PENDING,
    RUNNING,
    SUCCEEDED,
)
from app.queries.fleet import INTERRUPTED_WHERE
from app.queries.limits import LIMITS_IN_FORCE, latest_start, running_of, starts_within

# Only live rows are read (both partial indexes cover them), so the cost does not grow with
# history; pending counts runs that are due, not those scheduled for later.
_QUEUE_DEPTH = text(f"""
    SELECT pipeline, status, count(*) AS runs,
           COALESCE(EXTRACT(EPOCH FROM now() - min(run_at)), 0)::double precision AS oldest_s
    FROM runs
    WHERE (status = {PENDING} AND run_at <= now()) OR status = {RUNNING}
    GROUP BY pipeline, status
""")

_FINISHED_SINCE = f"""
    status IN {FINAL_OUTCOMES_SQL}
    AND finished_at >= now() - make_interval(secs => :window)
"""

_FLEET_REPORT = text(f"""
    SELECT count(*) FILTER (WHERE status = {SUCCEEDED}) AS succeeded,
           count(*) FILTER (WHERE status <> {SUCCEEDED}) AS failed,
           avg(EXTRACT(EPOCH FROM finished_at - started_at))::double precision AS avg_s,
           min(EXTRACT(EPOCH FROM finished_at - started_at))::double precision AS min_s,
           max(EXTRACT(EPOCH FROM finished_at - started_at))::double precision AS max_s
    FROM runs
    WHERE {_FINISHED_SINCE}
""")

# A run is stuck when it is interrupted (see INTERRUPTED_WHERE) or still running well past its
# time limit, which means no worker is enforcing it.
_STUCK_WHERE = f"""
    ({INTERRUPTED_WHERE}
     OR (r.status = {RUNNING}
         AND r.started_at + r.timeout + make_interval(secs => :stale) < now()))
"""

# A worker that is alive: not stopped, and heard from within STALE_AFTER.
_LIVE_WORKER = "stopped_at IS NULL AND heartbeat_at >= now() - make_interval(secs => :stale)"
# A pending run that has been due for longer than HEALTH_BACKLOG_FOR.
_WAITED_TOO_LONG = f"status = {PENDING} AND run_at <= now() - make_interval(secs => :backlog_for)"

# Runs that have waited too long because a limit holds them (app.limits), by pipeline and group:
# the pipeline is at its concurrency or its rate, or the run's group is full. The code's limits
# are those a live worker registered; overrides win, as in the claim.
_HELD_BY_LIMITS = f"""
    SELECT a.runs FROM (
        SELECT pipeline AS name, run_group, count(*) AS runs FROM runs WHERE {_WAITED_TOO_LONG}
        GROUP BY pipeline, run_group
    ) AS a
    CROSS JOIN LATERAL (
        SELECT (SELECT w.limits -> a.name FROM workers w WHERE {_LIVE_WORKER} AND w.limits -> a.name IS NOT NULL
                ORDER BY w.heartbeat_at DESC LIMIT 1) AS v
    ) AS code
    CROSS JOIN LATERAL (SELECT {LIMITS_IN_FORCE}) AS e
    LEFT JOIN LATERAL {latest_start("a.name")} AS latest ON e.rate_count IS NOT NULL
    WHERE {running_of("a.name")} >= e.concurrency
       OR {starts_within("latest", "e.rate_seconds", "now()")} >= e.rate_count
       OR (a.run_group IS NOT NULL AND {running_of("a.name", "a.run_group")} >= e.group_concurrency)
"""

_HEALTH = text(f"""
    WITH finished AS (
        SELECT count(*) AS runs,
               count(*) FILTER (WHERE status <> {SUCCEEDED}) AS failed,
               avg(EXTRACT(EPOCH FROM finished_at - started_at))::double precision AS avg_s
        FROM runs WHERE {_FINISHED_SINCE}
    )
    SELECT finished.runs AS finished, finished.failed, finished.avg_s,
           (SELECT count(*) FROM runs WHERE status = {PENDING} AND run_at <= now()) AS backlog,
           (SELECT count(*) FROM runs WHERE {_WAITED_TOO_LONG}) AS backlog_waiting,
           (SELECT count(*) FROM workers WHERE {_LIVE_WORKER}) AS live_workers,
           (SELECT array_agg(id ORDER BY id) FROM workers WHERE stopped_at IS NULL
              AND heartbeat_at < now() - make_interval(secs => :stale)) AS silent_workers,
           (SELECT count(*) FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
              WHERE {_STUCK_WHERE}) AS stuck_runs,
           (SELECT max(finished_at) FROM runs WHERE finished_at IS NOT NULL) AS last_activity,
           (SELECT COALESCE(sum(held.runs), 0) FROM ({_HELD_BY_LIMITS}) AS held) AS limit_waiting,
           (SELECT array_agg(waiting.pipeline ORDER BY waiting.pipeline)
              FROM (SELECT pipeline FROM runs WHERE {_WAITED_TOO_LONG} GROUP BY pipeline) AS waiting
              WHERE NOT EXISTS (SELECT 1 FROM workers w
                                WHERE {_LIVE_WORKER} AND waiting.pipeline = ANY(w.pipelines))
                AND NOT EXISTS (SELECT 1 FROM pauses p WHERE waiting.pipeline LIKE p.like_pattern)
           ) AS unserved_pipelines
    FROM finished
""")


@dataclass(frozen=True)
class QueueDepth:
    pipeline: str
    status: str
    runs: int
    oldest_s: float


def queue_depth(conn: Connection) -> list[QueueDepth]:
    """Due pending and running runs by pipeline and status, with the age of the oldest."""
    return [QueueDepth(**row) for row in conn.execute(_QUEUE_DEPTH).mappings()]


def fleet_report(conn: Connection, window: timedelta) -> Row[Any]:
    """Counts and durations of the runs that finished within ``window`` (cancelled runs aside)."""
    return conn.execute(_FLEET_REPORT, {"window": window.total_seconds()}).one()


def health_snapshot(
    conn: Connection, *, window: timedelta, backlog_for: timedelta, stale_after: timedelta
) -> Row[Any]:
    """Everything the health rules read, in one statement."""
    params = {
        "window": window.total_seconds(),
        "backlog_for": backlog_for.total_seconds(),
        "stale": stale_after.total_seconds(),
    }
    return conn.execute(_HEALTH, params).one()
