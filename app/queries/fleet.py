"""Workers and their runs: registration, heartbeats, and interrupted runs (recovery, resume,
cancel)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row, text

from app.queries.common import (
    CANCELLED,
    FAILED,
    INTERRUPTED_KIND,
    LIVE_SQL,
    PENDING,
    RESUMABLE_SQL,
    RUNNING,
    STEP_SUCCEEDED,
)
from app.states import (
    RETRIES_SQL,
)

# An id is taken over only from a process that is gone: stopped, silent for STALE_AFTER, or the
# one the caller found no longer running on its host (:gone_pid). Decided in the upsert itself, so
# two processes registering at once cannot both win.
_REGISTER_WORKER = text("""
    INSERT INTO workers (id, hostname, pid, concurrency, pipeline_filter, pipelines, version, limits)
    VALUES (:id, :hostname, :pid, :concurrency, :pipeline_filter, :pipelines, :version, CAST(:limits AS jsonb))
    ON CONFLICT (id) DO UPDATE
    SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, started_at = now(), heartbeat_at = now(),
        stopped_at = NULL, concurrency = EXCLUDED.concurrency,
        pipeline_filter = EXCLUDED.pipeline_filter, pipelines = EXCLUDED.pipelines,
        version = EXCLUDED.version, limits = EXCLUDED.limits
    WHERE workers.stopped_at IS NOT NULL
       OR workers.heartbeat_at < now() - make_interval(secs => :stale)
       OR (workers.hostname = EXCLUDED.hostname AND workers.pid = CAST(:gone_pid AS integer))
    RETURNING id
""")

_REGISTERED_WORKER = text("""
    SELECT hostname, pid, stopped_at,
           EXTRACT(EPOCH FROM now() - heartbeat_at)::double precision AS heartbeat_age_s
    FROM workers WHERE id = :id
""")

# The runs a worker holds, still its own, beat; the ids of those that are come back.
_RUNS_BEAT = f"""
    UPDATE runs r SET heartbeat_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[])) AS v(id, attempt)
    WHERE r.id = v.id AND r.attempt = v.attempt AND r.status = {RUNNING} AND r.worker_id = :worker_id
    RETURNING r.id"""
_RUNS_HEARTBEAT = text(_RUNS_BEAT)

_STOP_WORKER = text("""
    UPDATE workers SET stopped_at = now(), heartbeat_at = now()
    WHERE id = :worker_id AND hostname = :hostname AND pid = :pid
""")

_PRUNE_WORKERS = text(f"""
    DELETE FROM workers
    WHERE COALESCE(stopped_at, heartbeat_at) < now() - make_interval(secs => :retention)
      AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.worker_id = workers.id AND runs.status = {RUNNING})
""")


def register_worker(
    conn: Connection, *, stale_after: timedelta, gone_pid: int | None = None, **values: Any
) -> bool:
    """Register a worker process under ``values["id"]``; False when a live process holds that id."""
    params = {**values, "stale": stale_after.total_seconds(), "gone_pid": gone_pid}
    return conn.execute(_REGISTER_WORKER, params).first() is not None


def registered_worker(conn: Connection, worker_id: str) -> Row[Any] | None:
    """Who is registered under ``worker_id``: hostname, pid, stopped_at, heartbeat_age_s."""
    return conn.execute(_REGISTERED_WORKER, {"id": worker_id}).first()


# A worker's heartbeat in one statement (one round trip, one commit: a heartbeat that took three
# delayed the pickups that came during it): it beats for the worker and for the runs it holds,
# and reads the live workers (which pipelines each serves) and whether any limit is overridden.
_BEAT = text(f"""
    WITH worker AS (
        UPDATE workers SET heartbeat_at = now(), memory = COALESCE(CAST(:memory AS jsonb), memory)
        WHERE id = :worker_id
    ), held AS ({_RUNS_BEAT}
    )
    SELECT 'held' AS kind, CAST(id AS text) AS id, NULL AS pipelines FROM held
    UNION ALL
    SELECT 'worker', id, pipelines FROM workers
    WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => :within)
    UNION ALL
    SELECT 'overrides', NULL, NULL WHERE EXISTS (SELECT 1 FROM limits)
""")


@dataclass(frozen=True)
class Beat:
    """What a heartbeat learnt: the runs still this worker's, the live workers (id, pipelines
    served), whether any limit is overridden."""

    still_ours: set[int]
    workers: list[tuple[str, list[str]]]
    overrides: bool


def beat(conn: Connection, worker_id: str, held: dict[int, int], memory: str | None, within: float) -> Beat:
    """A worker's heartbeat (``memory``: app.memory's JSON); the workers that beat within
    ``within`` seconds before it count as live."""
    params = {
        "worker_id": worker_id,
        "memory": memory,
        "ids": list(held),
        "attempts": list(held.values()),
        "within": within,
    }
    rows = conn.execute(_BEAT, params).all()
    return Beat(
        still_ours={int(row.id) for row in rows if row.kind == "held"},
        workers=[(row.id, list(row.pipelines)) for row in rows if row.kind == "worker"],
        overrides=any(row.kind == "overrides" for row in rows),
    )


def heartbeat(conn: Connection, worker_id: str, held: dict[int, int]) -> set[int]:
    """A run's own heartbeat (ctx.heartbeat, from its executor): the runs of ``held`` still
    ``worker_id``'s beat; returns them. The worker's row is left to the worker's own heartbeat.
    When the executor wrote it too, it held the worker's row while it waited for a run's row,
    which the worker's heartbeat (_BEAT) could hold while it waited for the worker's row: the two
    deadlocked now and then, and a second of lock waits was enough for a run to look stale. It
    also kept a frozen worker's row alive."""
    if not held:
        return set()
    rows = conn.execute(
        _RUNS_HEARTBEAT,
        {"ids": list(held), "attempts": list(held.values()), "worker_id": worker_id},
    )
    return {int(i) for i in rows.scalars()}


def stop_worker(conn: Connection, worker_id: str, hostname: str, pid: int) -> None:
    """Mark this process's registration stopped (not another's that took the id over since)."""
    conn.execute(_STOP_WORKER, {"worker_id": worker_id, "hostname": hostname, "pid": pid})


def prune_workers(conn: Connection, retention: timedelta) -> int:
    return conn.execute(_PRUNE_WORKERS, {"retention": retention.total_seconds()}).rowcount


INTERRUPTED_WHERE = f"""
    r.status = {RUNNING}
    AND (r.heartbeat_at IS NULL OR r.heartbeat_at < now() - make_interval(secs => :stale)
         OR w.stopped_at IS NOT NULL)
"""

_INTERRUPTED = text(f"""
    SELECT r.id, r.pipeline, r.worker_id, r.attempt, r.max_attempts, r.heartbeat_at,
           (SELECT s.name FROM run_steps s
            WHERE s.run_id = r.id AND s.status = {STEP_SUCCEEDED}
            ORDER BY s.position DESC LIMIT 1) AS last_step
    FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
    WHERE {INTERRUPTED_WHERE}
    ORDER BY r.id
""")

# One transaction; SKIP LOCKED and the re-checked status make concurrent recoveries resume a
# run once. The interrupted attempt counts: a run that kills its worker every time ends failed.
_RECOVER = text(f"""
    WITH victims AS (
        SELECT r.id FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
        WHERE {INTERRUPTED_WHERE} AND (CAST(:only_id AS bigint) IS NULL OR r.id = :only_id)
        FOR UPDATE OF r SKIP LOCKED
    )
    UPDATE runs r
    SET status = CASE WHEN {RETRIES_SQL} THEN {PENDING} ELSE {FAILED} END,
        run_at = now(),
        finished_at = CASE WHEN {RETRIES_SQL} THEN NULL ELSE now() END,
        error = 'interrupted: worker ' || r.worker_id || ' stopped heartbeating',
        errors = r.errors || jsonb_build_array(jsonb_build_object(
            'attempt', r.attempt, 'kind', {INTERRUPTED_KIND}, 'type', 'WorkerLost',
            'message', 'worker ' || r.worker_id || ' stopped heartbeating', 'at', now()))
    FROM victims
    WHERE r.id = victims.id AND r.status = {RUNNING}
    RETURNING r.id, r.pipeline, r.status, r.attempt, r.worker_id
""")

_RESUME_FINISHED = text(f"""
    UPDATE runs
    SET status = {PENDING}, run_at = now(), finished_at = NULL,
        max_attempts = GREATEST(COALESCE(max_attempts, 1), attempt + 1)
    WHERE id = :id AND status IN {RESUMABLE_SQL}
    RETURNING id, pipeline, status, attempt, worker_id
""")

_CANCEL = text(f"""
    WITH before AS (SELECT id, status FROM runs WHERE id = :id FOR UPDATE)
    UPDATE runs r SET status = {CANCELLED}, finished_at = now(), error = 'cancelled'
    FROM before
    WHERE r.id = before.id AND before.status IN {LIVE_SQL}
    RETURNING before.status AS previous
""")


def interrupted(conn: Connection, stale_after: timedelta) -> list[Row[Any]]:
    return list(conn.execute(_INTERRUPTED, {"stale": stale_after.total_seconds()}))


def recover(conn: Connection, stale_after: timedelta, only_id: int | None = None) -> list[Row[Any]]:
    params = {"stale": stale_after.total_seconds(), "only_id": only_id}
    return list(conn.execute(_RECOVER, params))


def resume_finished(conn: Connection, run_id: int) -> Row[Any] | None:
    return conn.execute(_RESUME_FINISHED, {"id": run_id}).first()


def cancel(conn: Connection, run_id: int) -> str | None:
    """Cancel a pending or running run; returns its previous status, None if nothing changed."""
    previous = conn.execute(_CANCEL, {"id": run_id}).scalar()
    return None if previous is None else str(previous)
