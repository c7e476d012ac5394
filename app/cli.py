"""The ``orbit`` command line: run workers, enqueue, inspect and recover runs.

Exit status: 0 success, 1 an operational failure (database unreachable, run not found, or, for
``check-interrupted``, interrupted runs found), 2 bad input (unknown pipeline, bad params JSON,
a bad setting or flag, a resume a live run's key stands in the way of). ``orbit health`` is the
exception: 0 healthy, 1 warning, 2 error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from app import arguments, globs, health, operations, queries, recovery, worker
from app.database import Database, DatabaseError, connect, migrate, resolve
from app.durations import format_duration, parse_duration
from app.enqueue import EnqueueError, new_run
from app.masking import one_line
from app.registry import RegistryError, discover
from app.registry import get as get_pipeline
from app.settings import Settings, load_settings_or_exit
from app.states import FINISHED, RunStatus, ordered, retries
from app.stats import build_report

# A LIMIT past bigint fails in the database; a million rows is more than a terminal shows.
MAX_LIMIT = 1_000_000


class UsageError(Exception):
    """Bad input: exit status 2."""


class Failed(Exception):
    """An operational failure: exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except (UsageError, EnqueueError, RegistryError, recovery.KeyHeld) as exc:
        print(f"orbit: {exc}", file=sys.stderr)
        return 2
    except (Failed, DatabaseError, recovery.ResumeError) as exc:
        print(f"orbit: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"orbit: database error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = arguments.Parser(prog="orbit", description="Orbit pipeline-run queue")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> Any:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    sub = command("worker", worker.start, "run a worker (same as python -m app.worker)")
    worker.add_arguments(sub)
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

    sub = command("workers", cmd_workers, "list registered workers")
    sub.add_argument("--json", action="store_true")

    sub = command("metrics", cmd_metrics, "the metrics report of the whole fleet, from the runs table")
    sub.add_argument("--since", default="1h", help="runs that finished within this (default 1h)")
    sub.add_argument("--json", action="store_true")

    sub = command("health", cmd_health, "the fleet's health (exit 0 healthy, 1 warning, 2 error)")
    sub.add_argument("--json", action="store_true")

    sub = command("check-interrupted", cmd_check, "list interrupted runs (exit 1 when any)")
    sub.add_argument("--json", action="store_true")

    sub = command("recover", cmd_recover, "show, or with --auto-resume do, the recovery")
    sub.add_argument("--auto-resume", action="store_true", help="resume every interrupted run")

    sub = command("resume", cmd_resume, "resume one interrupted, failed or timed-out run")
    sub.add_argument("run_id", type=arguments.run_id)

    sub = command("cancel", cmd_cancel, "cancel a pending or running run")
    sub.add_argument("run_id", type=arguments.run_id)

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

    sub = command("outcomes", cmd_outcomes, "apply the outcomes a worker stopped in an outage saved")
    sub.add_argument("action", choices=["apply"])
    sub.add_argument("file", metavar="FILE", nargs="?", help="default: every one saved in DATA_DIR")
    return parser


# --- plumbing ------------------------------------------------------------------------------------


def _settings() -> Settings:
    from app import logs

    settings = load_settings_or_exit()
    logs.configure(settings.LOG_LEVEL if settings.LOG_LEVEL != "info" else "warning", "console")
    return settings


def _database(settings: Settings) -> Database:
    try:
        return resolve(settings)
    except Exception as exc:
        raise Failed(f"cannot start the embedded database: {one_line(exc)}") from None


def _engine(settings: Settings) -> Engine:
    return connect(settings).engine(pool_size=1)


def _transaction(action: Callable[[Connection], Any]) -> Any:
    engine = _engine(_settings())
    try:
        with engine.begin() as conn:
            return action(conn)
    finally:
        engine.dispose()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=_plain, indent=2))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        text = str(_plain(value)).replace("\n", " ")
        return text if len(text) <= 60 else text[:57] + "..."

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


# --- commands ------------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    database = _database(settings)
    try:
        migrate(database.direct_url, args.revision)
    except SQLAlchemyError as exc:
        raise Failed(f"cannot migrate {database.masked}: {one_line(exc)}") from None
    print(f"Database {database.masked} is at the latest schema.")
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    if args.from_file is not None:
        return _enqueue_file(args)
    settings = _settings()
    try:
        params = json.loads(args.params)
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
    )
    run_id = _transaction(lambda conn: queries.insert_run(conn, run))
    print(run_id)
    return 0


def _enqueue_file(args: argparse.Namespace) -> int:
    """All lines or none: every line is checked before the single INSERT."""
    for flag, value in (("--params", args.params != "{}"), ("--key", args.key), ("--timeout", args.timeout)):
        if value:
            raise UsageError(f"{flag} cannot be combined with --from-file")
    settings = _settings()
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
    ids = _transaction(lambda conn: queries.insert_runs(conn, runs)) if runs else []
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
        params = json.loads(line)
    except RecursionError:
        raise UsageError(f"line {number}: nested too deeply; nothing was enqueued") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"line {number}: not valid JSON ({exc}); nothing was enqueued") from None
    if not isinstance(params, dict):
        kind = type(params).__name__
        raise UsageError(f"line {number}: must be a JSON object, not {kind}; nothing was enqueued")
    try:
        return new_run(args.pipeline, params, args.priority, args.delay, args.max_attempts)
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

    run, steps = _transaction(read)
    if run is None:
        raise Failed(f"run {args.run_id} does not exist")
    record = dict(run._mapping)
    record["steps"] = [dict(step._mapping) for step in steps]
    if args.json:
        _print_json(record)
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
        shown = json.dumps(value) if isinstance(value, dict | list) else _plain(value)
        print(f"{name + ':':14} {'-' if shown is None else shown}")
    if record["steps"]:
        print("steps:")
        _table(record["steps"], ["position", "name", "status", "attempt", "finished_at", "error"])
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.limit > MAX_LIMIT:
        raise UsageError(f"--limit must be at most {MAX_LIMIT}, not {args.limit}")
    like = None if args.pipeline is None else _like(args.pipeline)
    rows = _transaction(lambda conn: queries.list_runs(conn, status=args.status, like=like, limit=args.limit))
    records = [dict(row._mapping) for row in rows]
    if args.json:
        _print_json(records)
    else:
        _table(records, ["id", "pipeline", "status", "attempt", "worker_id", "created_at", "error"])
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    records = [dict(row._mapping) for row in _transaction(queries.list_workers)]
    if args.json:
        _print_json(records)
    else:
        for record in records:
            record["state"] = "stopped" if record["stopped_at"] else "running"
            record["heartbeat_age"] = f"{record['heartbeat_age_s']:.1f}s"
        _table(records, ["id", "state", "concurrency", "running", "heartbeat_age", "version"])
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings()
    rows = _transaction(lambda conn: queries.interrupted(conn, settings.stale_after))
    records = [dict(row._mapping) for row in rows]
    if args.json:
        _print_json(records)
    elif not records:
        print("No interrupted runs.")
    else:
        print(f"{len(records)} interrupted run(s):")
        _table(records, ["id", "pipeline", "worker_id", "heartbeat_at", "last_step"])
    return 1 if records else 0


def cmd_recover(args: argparse.Namespace) -> int:
    settings = _settings()
    if not args.auto_resume:
        rows = _transaction(lambda conn: queries.interrupted(conn, settings.stale_after))
        if not rows:
            print("No interrupted runs: nothing to recover.")
            return 0
        for row in rows:
            action = "resume" if retries(row.attempt, row.max_attempts) else "fail (attempts spent)"
            after = f" after step {row.last_step!r}" if row.last_step else " from the start"
            print(f"would {action}: run {row.id} ({row.pipeline}){after}")
        print("Run `orbit recover --auto-resume` to do it.")
        return 0
    rows = _transaction(lambda conn: recovery.recover_interrupted(conn, settings.stale_after))
    for row in rows:
        print(f"run {row.id} ({row.pipeline}): {row.status}")
    print(f"Recovered {len(rows)} run(s).")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    settings = _settings()
    row = _transaction(lambda conn: recovery.resume(conn, args.run_id, settings.stale_after))
    print(f"run {row.id} ({row.pipeline}) is {row.status}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    def cancel(conn: Connection) -> tuple[str | None, Any]:
        return queries.cancel(conn, args.run_id), queries.get_run(conn, args.run_id)

    previous, run = _transaction(cancel)
    if run is None:
        raise Failed(f"run {args.run_id} does not exist")
    if previous is None:
        raise Failed(f"run {args.run_id} is {run.status}: only pending or running runs cancel")
    when = "its worker stops it within a heartbeat" if previous == RunStatus.RUNNING else "at once"
    print(f"run {args.run_id} cancelled ({when})")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    window = _positive_duration("--since", args.since)

    def read(conn: Connection) -> tuple[Any, list[queries.QueueDepth]]:
        return queries.fleet_report(conn, window), queries.queue_depth(conn)

    row, depth = _transaction(read)
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
        _print_json(report)
    else:
        print(f"Fleet Metrics Report (runs finished in the last {report['window']})")
        for name, value in report.items():
            print(f"  {name + ':':14} {value}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        engine = _engine(settings)
    except Failed as exc:
        result = health.Health([health.Problem(health.Status.ERROR, str(exc))])
    else:
        try:
            result = health.check(engine, settings)
        finally:
            engine.dispose()
    if args.json:
        _print_json(result.as_json())
    else:
        print(f"{result.status}: {result.message}")
        for problem in result.problems:
            print(f"  [{problem.status}] {problem.message}")
        print(f"  stuck runs: {result.stuck_runs}")
        last = result.last_activity
        print(f"  last activity: {'-' if last is None else last.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    return int(result.status)


def _paused_by() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _like(glob: str) -> str:
    try:
        return globs.to_like(glob)
    except globs.GlobError as exc:
        raise UsageError(str(exc)) from None


def _pause(glob: str) -> bool:
    like = _like(glob)
    known = set(discover(_settings().pipeline_modules))

    def pause(conn: Connection) -> bool:
        # A mistyped glob would pause nothing while the operator believes it does.
        if not any(globs.matches(glob, name) for name in known | queries.worker_pipelines(conn)):
            raise UsageError(
                f"no known pipeline matches {glob!r}: neither ORBIT_PIPELINES nor a registered "
                "worker has one; nothing was paused"
            )
        return queries.pause(conn, glob, like, _paused_by())

    return bool(_transaction(pause))


def cmd_pause(args: argparse.Namespace) -> int:
    added = _pause(args.glob)
    state = "paused" if added else "already paused"
    print(f"{args.glob}: {state}; workers stop claiming its runs within one poll (enqueueing still works)")
    return 0


def cmd_unpause(args: argparse.Namespace) -> int:
    _like(args.glob)
    removed = _transaction(lambda conn: queries.unpause(conn, args.glob))
    print(f"{args.glob}: unpaused" if removed else f"{args.glob}: was not paused (see `orbit pauses`)")
    return 0


def cmd_pauses(args: argparse.Namespace) -> int:
    records = [dict(row._mapping) for row in _transaction(queries.list_pauses)]
    if args.json:
        _print_json(records)
    elif not records:
        print("No pauses: every pipeline is claimed.")
    else:
        _table(records, ["pattern", "paused_at", "paused_by", "pending"])
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    timeout = _positive_duration("--timeout", args.timeout)
    _pause(args.glob)
    print(f"{args.glob}: paused; waiting for its running runs (at most {format_duration(timeout)})")

    def progress(running: list[Any]) -> None:
        ids = ", ".join(str(row.id) for row in running[:20]) + (" ..." if len(running) > 20 else "")
        print(f"  {len(running)} run(s) still running: {ids}", flush=True)

    engine = _engine(_settings())
    try:
        result = operations.drain(engine, args.glob, timeout, progress)
    finally:
        engine.dispose()
    if not result.drained:
        still = ", ".join(f"{r.id} ({r.pipeline} on {r.worker_id})" for r in result.still_running)
        raise Failed(f"drain timed out after {format_duration(timeout)}; still running: {still}")
    print(f"{args.glob}: drained, nothing running. `orbit unpause {args.glob}` resumes claiming.")
    return 0


def _positive_duration(flag: str, value: str) -> timedelta:
    try:
        duration = parse_duration(value, bare_unit="s")
    except ValueError as exc:
        raise UsageError(f"{flag} {value!r}: expected {exc}") from None
    if duration <= timedelta(0):
        raise UsageError(f"{flag} {value!r}: must be longer than zero")
    return duration


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.older_than is None:
        retention = settings.retention
    else:
        age = _positive_duration("--older-than", args.older_than)
        retention = {str(status): age for status in ordered(FINISHED)}
    if args.dry_run:
        counts = _transaction(lambda conn: queries.count_expired(conn, retention))
        for status in ordered(FINISHED):
            print(f"would delete {counts.get(status, 0)} {status} run(s)")
        print(f"would delete {sum(counts.values())} run(s) in all")
        return 0
    engine = _engine(settings)
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

    settings = _settings()
    scheduled = [p for _, p in sorted(discover(settings.pipeline_modules).items()) if p.schedule]

    def read(conn: Connection) -> tuple[datetime, dict[str, Any]]:
        return queries.db_now(conn), queries.list_schedules(conn)

    now, stored = _transaction(read)
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
        _print_json(records)
    elif not records:
        print("No scheduled pipelines.")
    else:
        _table(records, ["pipeline", "schedule", "tz", "backfill", "last_slot", "next_fire"])
    return 0


def cmd_outcomes(args: argparse.Namespace) -> int:
    """Exit 0 when every outcome is in the database, 1 when any was refused."""
    from pathlib import Path

    from app import spool

    settings = _settings()
    paths = [Path(args.file)] if args.file else spool.files(settings.DATA_DIR)
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        try:
            spool.load(path, path.read_text(encoding="utf-8"))  # every file checked before any write
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: cannot be read: {exc}") from None
        except spool.SpoolError as exc:
            raise UsageError(str(exc)) from None
    if not paths:
        print(f"No saved outcomes in {settings.DATA_DIR}.")
        return 0
    engine = _engine(settings)
    refused = 0
    try:
        for path in paths:
            applied = spool.apply_file(engine, path)
            if applied is None:
                print(f"{path}: applied meanwhile by another process")
            for done in applied or []:
                print(spool.describe(done))
                refused += done.result == "refused"
    except spool.SpoolError as exc:
        raise UsageError(str(exc)) from None
    finally:
        engine.dispose()
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
