"""``orbit check-interrupted``, ``recover``, ``resume``, ``cancel`` and ``outcomes apply``: runs
a worker left behind."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import Connection

from app import arguments, queries, recovery
from app.cli.common import (
    Command,
    Failed,
    UsageError,
    connect_engine,
    in_transaction,
    load_settings,
    print_json,
    print_table,
)
from app.states import RunStatus, retries


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_settings()
    rows = in_transaction(lambda conn: queries.interrupted(conn, settings.stale_after))
    records = [dict(row._mapping) for row in rows]
    if args.json:
        print_json(records)
    elif not records:
        print("No interrupted runs.")
    else:
        print(f"{len(records)} interrupted run(s):")
        print_table(records, ["id", "pipeline", "worker_id", "heartbeat_at", "last_step"])
    return 1 if records else 0


def cmd_recover(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not args.auto_resume:
        rows = in_transaction(lambda conn: queries.interrupted(conn, settings.stale_after))
        if not rows:
            print("No interrupted runs: nothing to recover.")
            return 0
        for row in rows:
            action = "resume" if retries(row.attempt, row.max_attempts) else "fail (attempts spent)"
            after = f" after step {row.last_step!r}" if row.last_step else " from the start"
            print(f"would {action}: run {row.id} ({row.pipeline}){after}")
        print("Run `orbit recover --auto-resume` to do it.")
        return 0
    rows = in_transaction(lambda conn: recovery.recover_interrupted(conn, settings.stale_after))
    for row in rows:
        print(f"run {row.id} ({row.pipeline}): {row.status}")
    print(f"Recovered {len(rows)} run(s).")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    settings = load_settings()
    row = in_transaction(lambda conn: recovery.resume(conn, args.run_id, settings.stale_after))
    print(f"run {row.id} ({row.pipeline}) is {row.status}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    def cancel(conn: Connection) -> tuple[str | None, Any]:
        return queries.cancel(conn, args.run_id), queries.get_run(conn, args.run_id)

    previous, run = in_transaction(cancel)
    if run is None:
        raise Failed(f"run {args.run_id} does not exist")
    if previous is None:
        raise Failed(f"run {args.run_id} is {run.status}: only pending or running runs cancel")
    when = "its worker stops it within a heartbeat" if previous == RunStatus.RUNNING else "at once"
    print(f"run {args.run_id} cancelled ({when})")
    return 0


def cmd_outcomes(args: argparse.Namespace) -> int:
    """Exit 0 when every outcome is in the database, 1 when any was refused."""
    from pathlib import Path

    from app import spool

    settings = load_settings()
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
    engine = connect_engine(settings)
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


def add_commands(command: Command) -> None:
    sub = command("check-interrupted", cmd_check, "list interrupted runs (exit 1 when any)")
    sub.add_argument("--json", action="store_true")

    sub = command("recover", cmd_recover, "show, or with --auto-resume do, the recovery")
    sub.add_argument("--auto-resume", action="store_true", help="resume every interrupted run")

    sub = command("resume", cmd_resume, "resume one interrupted, failed or timed-out run")
    sub.add_argument("run_id", type=arguments.run_id)

    sub = command("cancel", cmd_cancel, "cancel a pending or running run")
    sub.add_argument("run_id", type=arguments.run_id)


def add_outcome_commands(command: Command) -> None:
    sub = command("outcomes", cmd_outcomes, "apply the outcomes a worker stopped in an outage saved")
    sub.add_argument("action", choices=["apply"])
    sub.add_argument("file", metavar="FILE", nargs="?", help="default: every one saved in DATA_DIR")
