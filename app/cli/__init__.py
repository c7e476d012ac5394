"""The ``orbit`` command line: run workers, enqueue, inspect and recover runs.

Exit status: 0 success, 1 an operational failure (database unreachable, run not found, or, for
``check-interrupted``, interrupted runs found), 2 bad input (unknown pipeline, bad params JSON,
a bad setting or flag, a resume a live run's key stands in the way of). ``orbit health`` is the
exception: 0 healthy, 1 warning, 2 error.

Commands are grouped by what they work on: ``runs`` (migrate, enqueue, status, runs), ``fleet``
(workers, metrics, health), ``interrupted`` (check-interrupted, recover, resume, cancel, outcomes)
``control`` (pause, unpause, pauses, drain, schedules, prune), ``limits`` (limit, limits) and
``access`` (serve, token);
``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from app import arguments, recovery, worker
from app.cli import access, control, fleet, interrupted, limits, runs
from app.cli.common import Failed, UsageError
from app.database import DatabaseError
from app.enqueue import EnqueueError
from app.masking import one_line
from app.registry import RegistryError

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.Parser(prog="orbit", description="Orbit pipeline-run queue")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    worker.add_arguments(command("worker", worker.start, "run a worker (same as python -m app.worker)"))
    runs.add_commands(command)
    fleet.add_commands(command)
    interrupted.add_commands(command)
    control.add_commands(command)
    limits.add_commands(command)
    interrupted.add_outcome_commands(command)
    access.add_commands(command)
    return parser
