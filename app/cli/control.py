"""``orbit pause``, ``unpause``, ``pauses``, ``drain``, ``schedules`` and ``prune``: steering the fleet."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from app import operations, queries, recovery
from app.cli.common import (
    Command,
    Failed,
    UsageError,
    connect_engine,
    in_transaction,
    like_pattern,
    load_settings,
    operator_name,
    positive_duration,
    print_json,
    print_table,
)
from app.durations import format_duration
from app.registry import discover
from app.states import FINISHED, ordered


def _pause(glob: str) -> bool:
    like_pattern(glob)
    known = set(discover(load_settings().pipeline_modules))
    try:
        return bool(in_transaction(lambda conn: operations.pause(conn, glob, known, operator_name())))
    except operations.OperationError as exc:
        raise UsageError(str(exc)) from None


def cmd_pause(args: argparse.Namespace) -> int:
    added = _pause(args.glob)
    state = "paused" if added else "already paused"
    print(f"{args.glob}: {state}; workers stop claiming its runs within one poll (enqueueing still works)")
    return 0


def cmd_unpause(args: argparse.Namespace) -> int:
    like_pattern(args.glob)
    removed = in_transaction(lambda conn: queries.unpause(conn, args.glob))
    print(f"{args.glob}: unpaused" if removed else f"{args.glob}: was not paused (see `orbit pauses`)")
    return 0


def cmd_pauses(args: argparse.Namespace) -> int:
    records = [dict(row._mapping) for row in in_transaction(queries.list_pauses)]
    if args.json:
        print_json(records)
    elif not records:
        print("No pauses: every pipeline is claimed.")
    else:
        print_table(records, ["pattern", "paused_at", "paused_by", "pending"])
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    timeout = positive_duration("--timeout", args.timeout)
    _pause(args.glob)
    print(f"{args.glob}: paused; waiting for its running runs (at most {format_duration(timeout)})")

    def progress(running: list[Any]) -> None:
        ids = ", ".join(str(row.id) for row in running[:20]) + (" ..." if len(running) > 20 else "")
        print(f"  {len(running)} run(s) still running: {ids}", flush=True)

    engine = connect_engine(load_settings())
    try:
        result = operations.drain(engine, args.glob, timeout, progress)
    finally:
        engine.dispose()
    if not result.drained:
        still = ", ".join(f"{r.id} ({r.pipeline} on {r.worker_id})" for r in result.still_running)
        raise Failed(f"drain timed out after {format_duration(timeout)}; still running: {still}")
    print(f"{args.glob}: drained, nothing running. `orbit unpause {args.glob}` resumes claiming.")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.older_than is None:
        retention = settings.retention
    else:
        age = positive_duration("--older-than", args.older_than)
        retention = {str(status): age for status in ordered(FINISHED)}
    if args.dry_run:
        counts = in_transaction(lambda conn: queries.count_expired(conn, retention))
        for status in ordered(FINISHED):
            print(f"would delete {counts.get(status, 0)} {status} run(s)")
        print(f"would delete {sum(counts.values())} run(s) in all")
        return 0
    engine = connect_engine(settings)
    batch = settings.RETENTION_BATCH

    def delete_batch() -> int:
        with engine.begin() as conn:
            return queries.prune_runs(conn, retention, batch)

    try:
        total = recovery.prune_in_batches(delete_batch, batch)
    finally:
        engine.dispose()
    print(f"deleted {total} finished run(s) and their steps")
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    from app import schedules

    settings = load_settings()
    scheduled = [p for _, p in sorted(discover(settings.pipeline_modules).items()) if p.schedule]

    def read(conn: Connection) -> tuple[datetime, dict[str, Any]]:
        return queries.db_now(conn), queries.list_schedules(conn)

    now, stored = in_transaction(read)
    records = []
    for p in scheduled:
        state = stored.get(p.name)
        records.append(
            {
                "pipeline": p.name,
                "schedule": p.schedule,
                "tz": p.schedule_tz,
                "backfill": p.backfill,
                "last_slot": None if state is None else state.last_slot,
                "next_fire": schedules.next_slot(p, now),
            }
        )
    if args.json:
        print_json(records)
    elif not records:
        print("No scheduled pipelines.")
    else:
        print_table(records, ["pipeline", "schedule", "tz", "backfill", "last_slot", "next_fire"])
    return 0


def add_commands(command: Command) -> None:
    sub = command("pause", cmd_pause, "stop claiming runs of the pipelines matching GLOB (fleet-wide)")
    sub.add_argument("glob", metavar="GLOB")
    sub = command("unpause", cmd_unpause, "lift the pause GLOB: its runs are claimed again")
    sub.add_argument("glob", metavar="GLOB")
    sub = command("pauses", cmd_pauses, "list the pauses in force")
    sub.add_argument("--json", action="store_true")
    sub = command("drain", cmd_drain, "pause GLOB, then wait until none of its runs is running")
    sub.add_argument("glob", metavar="GLOB", nargs="?", default="*", help="default * (everything)")
    sub.add_argument("--timeout", default="10m", help="give up after this (seconds or 10m; default 10m)")

    sub = command("schedules", cmd_schedules, "list scheduled pipelines and their next fire times")
    sub.add_argument("--json", action="store_true")

    sub = command("prune", cmd_prune, "delete finished runs past their retention (RETENTION)")
    sub.add_argument("--older-than", metavar="AGE", help="instead of RETENTION, for every status (e.g. 30d)")
    sub.add_argument("--dry-run", action="store_true", help="count what would be deleted")
