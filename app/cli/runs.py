"""``orbit migrate``, ``enqueue``, ``status`` and ``runs``: the schema, and runs in and out."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from app import arguments, jsontext, queries
from app.cli.common import (
    MAX_LIMIT,
    Command,
    Failed,
    UsageError,
    in_transaction,
    like_pattern,
    load_settings,
    plain,
    print_json,
    print_table,
)
from app.database import migrate, resolve_or_fail
from app.enqueue import EnqueueError, new_run
from app.masking import one_line
from app.registry import discover
from app.registry import get as get_pipeline
from app.states import RunStatus


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    database = resolve_or_fail(settings)
    try:
        migrate(database.direct_url, args.revision)
    except SQLAlchemyError as exc:
        raise Failed(f"cannot migrate {database.masked}: {one_line(exc)}") from None
    print(f"Database {database.masked} is at the latest schema.")
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    if args.from_file is not None:
        return _enqueue_file(args)
    settings = load_settings()
    try:
        params = jsontext.loads(args.params)
    except RecursionError:
        raise UsageError("--params is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--params is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise UsageError(f"--params must be a JSON object, not {type(params).__name__}")
    discover(settings.pipeline_modules)
    run = new_run(
        args.pipeline,
        params,
        args.priority,
        args.delay,
        args.max_attempts,
        args.timeout,
        args.key,
        group=args.group,
    )
    run_id = in_transaction(lambda conn: queries.insert_run(conn, run))
    print(run_id)
    return 0


def _enqueue_file(args: argparse.Namespace) -> int:
    """All lines or none: every line is checked before the single INSERT."""
    for flag, value in (("--params", args.params != "{}"), ("--key", args.key), ("--timeout", args.timeout)):
        if value:
            raise UsageError(f"{flag} cannot be combined with --from-file")
    settings = load_settings()
    discover(settings.pipeline_modules)
    get_pipeline(args.pipeline)
    lines = _read_lines(args.from_file)
    progress = _Progress(len(lines)) if sys.stderr.isatty() else None
    runs = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            runs.append(_line_run(args, number, line))
        if progress is not None:
            progress.show(number)
    if progress is not None:
        progress.done()
    ids = in_transaction(lambda conn: queries.insert_runs(conn, runs)) if runs else []
    print(f"{len(ids)} run(s) of {args.pipeline} enqueued" + (f": ids {ids[0]}-{ids[-1]}" if ids else ""))
    return 0


def _read_lines(source: str) -> list[str]:
    try:
        if source == "-":
            return sys.stdin.read().splitlines()
        with open(source, encoding="utf-8") as file:
            return file.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {source}: {exc}") from None


def _line_run(args: argparse.Namespace, number: int, line: str) -> queries.NewRun:
    try:
        params = jsontext.loads(line)
    except RecursionError:
        raise UsageError(f"line {number}: nested too deeply; nothing was enqueued") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"line {number}: not valid JSON ({exc}); nothing was enqueued") from None
    if not isinstance(params, dict):
        kind = type(params).__name__
        raise UsageError(f"line {number}: must be a JSON object, not {kind}; nothing was enqueued")
    try:
        return new_run(args.pipeline, params, args.priority, args.delay, args.max_attempts, group=args.group)
    except EnqueueError as exc:
        raise UsageError(f"line {number}: {exc}; nothing was enqueued") from None


class _Progress:
    """A one-line bar on a terminal's stderr, redrawn at most once per percent."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.shown = -1

    def show(self, done: int) -> None:
        percent = done * 100 // self.total
        if percent != self.shown:
            self.shown = percent
            bar = "#" * (percent // 4)
            print(f"\r[{bar:<25}] {percent:3d}% {done}/{self.total} lines", end="", file=sys.stderr)

    def done(self) -> None:
        print(file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    def read(conn: Connection) -> tuple[Any, list[Any]]:
        return queries.get_run(conn, args.run_id), queries.run_steps(conn, args.run_id)

    run, steps = in_transaction(read)
    if run is None:
        raise Failed(f"run {args.run_id} does not exist")
    record = dict(run._mapping)
    record["steps"] = [dict(step._mapping) for step in steps]
    if args.json:
        print_json(record)
        return 0
    for name in (
        "id",
        "pipeline",
        "status",
        "attempt",
        "max_attempts",
        "priority",
        "worker_id",
        "created_at",
        "run_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "key",
        "code_version",
        "params",
        "result",
        "error",
    ):
        value = record.get(name)
        shown = json.dumps(value) if isinstance(value, dict | list) else plain(value)
        print(f"{name + ':':14} {'-' if shown is None else shown}")
    if record["steps"]:
        print("steps:")
        print_table(record["steps"], ["position", "name", "status", "attempt", "finished_at", "error"])
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.limit > MAX_LIMIT:
        raise UsageError(f"--limit must be at most {MAX_LIMIT}, not {args.limit}")
    like = None if args.pipeline is None else like_pattern(args.pipeline)
    status, limit = args.status, args.limit
    rows = in_transaction(lambda conn: queries.list_runs(conn, status=status, like=like, limit=limit))
    records = [dict(row._mapping) for row in rows]
    if args.json:
        print_json(records)
    else:
        print_table(records, ["id", "pipeline", "status", "attempt", "worker_id", "created_at", "error"])
    return 0


def add_commands(command: Command) -> None:
    sub = command("migrate", cmd_migrate, "bring the database schema up to date")
    sub.add_argument("--revision", default="head", help=argparse.SUPPRESS)

    sub = command("enqueue", cmd_enqueue, "enqueue a run and print its id")
    sub.add_argument("pipeline")
    sub.add_argument("--params", default="{}", help="a JSON object (default {})")
    sub.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    sub.add_argument("--delay", default=None, help="start no sooner than this (seconds or 5m)")
    sub.add_argument("--max-attempts", type=int, default=None)
    sub.add_argument("--timeout", default=None, help="time limit (seconds or 10m)")
    sub.add_argument("--key", default=None, help="idempotency key: reuse a live run with it")
    sub.add_argument(
        "--group",
        default=None,
        help="the run's group, for the pipeline's group_concurrency (a customer, say)",
    )
    sub.add_argument(
        "--from-file",
        metavar="FILE",
        help="enqueue one run per line of FILE, each a JSON params object (- reads stdin)",
    )

    sub = command("status", cmd_status, "show one run and its steps")
    sub.add_argument("run_id", type=arguments.run_id)
    sub.add_argument("--json", action="store_true")

    sub = command("runs", cmd_runs, "list runs, newest first")
    sub.add_argument("--status", choices=[str(s) for s in RunStatus])
    sub.add_argument("--pipeline", help="a name or glob")
    sub.add_argument("--limit", type=int, default=20)
    sub.add_argument("--json", action="store_true")
