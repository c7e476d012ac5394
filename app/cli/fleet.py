"""``orbit workers``, ``metrics`` and ``health``: the fleet as a whole."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import Connection

from app import health, memory, queries
from app.cli.common import (
    Command,
    Failed,
    connect_engine,
    in_transaction,
    load_settings,
    positive_duration,
    print_json,
    print_table,
)
from app.database import DatabaseError
from app.durations import format_duration
from app.states import RunStatus
from app.stats import build_report


def cmd_workers(args: argparse.Namespace) -> int:
    records = [dict(row._mapping) for row in in_transaction(queries.list_workers)]
    if args.json:
        print_json(records)
    else:
        for record in records:
            record["state"] = "stopped" if record["stopped_at"] else "running"
            record["heartbeat_age"] = f"{record['heartbeat_age_s']:.1f}s"
            record["memory"] = memory.summary(record["memory"])
        print_table(records, ["id", "state", "concurrency", "running", "heartbeat_age", "memory", "version"])
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    window = positive_duration("--since", args.since)

    def read(conn: Connection) -> tuple[Any, list[queries.QueueDepth]]:
        return queries.fleet_report(conn, window), queries.queue_depth(conn)

    row, depth = in_transaction(read)
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
    report = {"window": format_duration(window), **report}
    for status in (RunStatus.PENDING, RunStatus.RUNNING):
        report[f"{status}Now"] = sum(d.runs for d in depth if d.status == status)
    if args.json:
        print_json(report)
    else:
        print(f"Fleet Metrics Report (runs finished in the last {report['window']})")
        for name, value in report.items():
            print(f"  {name + ':':14} {value}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        engine = connect_engine(settings)
    except (Failed, DatabaseError) as exc:
        result = health.Health([health.Problem(health.Status.ERROR, str(exc))])
    else:
        try:
            result = health.check(engine, settings)
        finally:
            engine.dispose()
    if args.json:
        print_json(result.as_json())
    else:
        print(f"{result.status}: {result.message}")
        for problem in result.problems:
            print(f"  [{problem.status}] {problem.message}")
        print(f"  stuck runs: {result.stuck_runs}")
        last = result.last_activity
        print(f"  last activity: {'-' if last is None else last.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    return int(result.status)


def add_commands(command: Command) -> None:
    sub = command("workers", cmd_workers, "list registered workers")
    sub.add_argument("--json", action="store_true")

    sub = command("metrics", cmd_metrics, "the metrics report of the whole fleet, from the runs table")
    sub.add_argument("--since", default="1h", help="runs that finished within this (default 1h)")
    sub.add_argument("--json", action="store_true")

    sub = command("health", cmd_health, "the fleet's health (exit 0 healthy, 1 warning, 2 error)")
    sub.add_argument("--json", action="store_true")
