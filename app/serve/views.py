"""What the API and the console show, read from the database: runs, the fleet's counts and report,
workers and pipelines. Each function returns plain data (JSON-ready) that both render."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import HTTPException
from sqlalchemy import Connection

from app import globs, memory, operations, queries, registry, schedules
from app.durations import format_duration
from app.queries import RunFilter
from app.settings import Settings
from app.states import RunStatus
from app.stats import build_report

# A page of runs: enough for a screen, small enough to read at once.
DEFAULT_PAGE = 50
MAX_PAGE = 500
CHART_MINUTES = 60


def plain(value: Any) -> Any:
    """A value as JSON holds it: times in ISO 8601, intervals in seconds."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def record(row: Any) -> dict[str, Any]:
    return {name: plain(value) for name, value in row._mapping.items()}


def run_detail(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """The run with its params, result, attempts' errors and steps; None when unknown."""
    row = queries.get_run(conn, run_id)
    if row is None:
        return None
    run = record(row)
    run["steps"] = [_step(step) for step in queries.run_steps(conn, run_id)]
    return run


def _step(row: Any) -> dict[str, Any]:
    step = record(row)
    started, finished = row.started_at, row.finished_at
    step["duration_s"] = None if finished is None else (finished - started).total_seconds()
    step.pop("run_id", None)
    return step


@dataclass(frozen=True)
class Page:
    runs: list[dict[str, Any]]
    next_before: int | None  # the cursor of the next page, None on the last


def runs_page(conn: Connection, where: RunFilter, before: int | None, limit: int) -> Page:
    rows = queries.search_runs(conn, where, before=before, limit=limit + 1)
    more = len(rows) > limit
    runs = [record(row) for row in rows[:limit]]
    return Page(runs, runs[-1]["id"] if more else None)


def stats(conn: Connection, window: timedelta) -> dict[str, Any]:
    """Counts by status and by pipeline (live runs now, finished ones within ``window``), and the
    fleet's report over the window in the worker guide's fields."""
    by_status: dict[str, int] = {}
    by_pipeline: dict[str, dict[str, int]] = {}
    for row in queries.counts(conn, window.total_seconds()):
        by_status[row.status] = by_status.get(row.status, 0) + row.runs
        by_pipeline.setdefault(row.pipeline, {})[row.status] = row.runs
    return {
        "window": format_duration(window),
        "byStatus": by_status,
        "byPipeline": by_pipeline,
        "report": fleet_report(conn, window),
    }


def fleet_report(conn: Connection, window: timedelta) -> dict[str, Any]:
    """The metrics report of the whole fleet over ``window`` (seed fields, and lastRunTime)."""
    row = queries.fleet_report(conn, window)
    report = build_report(
        uptime_s=window.total_seconds(),
        succeeded=row.succeeded,
        failed=row.failed,
        avg_s=row.avg_s,
        min_s=row.min_s,
        max_s=row.max_s,
        hours=window.total_seconds() / 3600,
    )
    del report["uptime"]  # a fleet has no uptime: the window takes its place
    report["avgExecutionTime"] = report.pop("avgDuration")
    report["min"] = report.pop("minDuration")
    report["max"] = report.pop("maxDuration")
    report["lastRunTime"] = plain(queries.last_finished(conn))
    return {"window": format_duration(window), **report}


def workers(conn: Connection) -> list[dict[str, Any]]:
    """Registered workers, newest first, each with what it is running now."""
    running: dict[str, list[dict[str, Any]]] = {}
    for row in queries.running_matching(conn, "%"):
        running.setdefault(row.worker_id, []).append(record(row))
    result = []
    for row in queries.list_workers(conn):
        worker = record(row)
        worker["state"] = "stopped" if row.stopped_at else "running"
        worker["memory_summary"] = memory.summary(row.memory)
        worker["runs"] = running.get(row.id, [])
        result.append(worker)
    return result


def pipelines(conn: Connection, known: dict[str, registry.Pipeline]) -> list[dict[str, Any]]:
    """Every pipeline this process loads or a worker runs: its settings, schedule, pause and counts."""
    from app import globs

    now = queries.db_now(conn)
    pauses = [row.pattern for row in queries.list_pauses(conn)]
    stored = queries.list_schedules(conn)
    served = queries.worker_pipelines(conn)
    live: dict[str, dict[str, int]] = {}
    for depth in queries.queue_depth(conn):
        live.setdefault(depth.pipeline, {})[depth.status] = depth.runs
    result = []
    in_force = operations.limits_in_force(conn, {name: p.limits for name, p in known.items()})
    flow = {row["pipeline"]: row for row in in_force["pipelines"]}
    for name in sorted(set(known) | served):
        p = known.get(name)
        item: dict[str, Any] = {
            "name": name,
            "loaded": p is not None,
            "served": name in served,
            "paused_by": [glob for glob in pauses if globs.matches(glob, name)],
            "now": live.get(name, {}),
            "limits": flow.get(name),
        }
        if p is not None:
            state = stored.get(name)
            item.update(
                max_attempts=p.max_attempts,
                timeout_s=None if p.timeout is None else p.timeout.total_seconds(),
                schedule=p.schedule,
                schedule_tz=p.schedule_tz if p.schedule else None,
                next_fire=plain(schedules.next_slot(p, now)) if p.schedule else None,
                last_slot=plain(state.last_slot) if state is not None else None,
                params_schema=p.params_schema(),
            )
        result.append(item)
    return result


def overview(conn: Connection, settings: Settings) -> dict[str, Any]:
    """The console's first page: now, the last hour, the oldest waiting run, the workers."""
    hour = timedelta(hours=1)
    oldest = queries.oldest_due(conn)
    alive = [w for w in workers(conn) if w["state"] == "running"]
    stale = settings.stale_after.total_seconds()
    return {
        "stats": stats(conn, hour),
        "chart": chart(conn),
        "oldest_due": None if oldest is None else record(oldest),
        "workers_alive": sum(1 for w in alive if w["heartbeat_age_s"] < stale),
        "workers": alive,
    }


def chart(conn: Connection, minutes: int = CHART_MINUTES) -> list[dict[str, Any]]:
    """One point per minute of the last hour, oldest first, zero-filled: finished and failed."""
    now = queries.db_now(conn).replace(second=0, microsecond=0)
    seen = {row.minute: row for row in queries.per_minute(conn, minutes)}
    points = []
    for back in range(minutes - 1, -1, -1):
        minute = now - timedelta(minutes=back)
        row = seen.get(minute)
        succeeded, failed = (0, 0) if row is None else (row.succeeded, row.failed)
        points.append({"minute": minute.isoformat(), "succeeded": succeeded, "failed": failed})
    return points


def run_filter(
    status: RunStatus | None, pipeline: str | None, text: str | None, since: Any, until: Any
) -> RunFilter:
    try:
        like = None if not pipeline else globs.to_like(pipeline)
    except globs.GlobError as exc:
        raise HTTPException(400, str(exc)) from None
    if text is not None and "\x00" in text:
        raise HTTPException(400, "text cannot hold a NUL character")
    contains = None if not text else "%" + globs.escape_like(text) + "%"
    return RunFilter(None if status is None else str(status), like, contains, since, until)
