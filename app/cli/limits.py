"""``orbit limit`` and ``orbit limits``: fleet-wide flow control changed at run time.

An override (the limits table) wins over the code's ``@pipeline(..., concurrency=, rate=,
group_concurrency=)`` field by field; workers obey it on their next claim, without a restart."""

from __future__ import annotations

import argparse

from app import operations
from app.cli.common import (
    Command,
    UsageError,
    in_transaction,
    load_settings,
    operator_name,
    print_json,
    print_table,
)
from app.limits import LimitError, limits
from app.registry import discover


def cmd_limit(args: argparse.Namespace) -> int:
    given = (args.concurrency, args.rate, args.group_concurrency)
    try:
        if args.clear:
            if any(value is not None for value in given):
                raise UsageError("--clear takes no limits: it removes the override GLOB")
            removed = in_transaction(lambda conn: operations.clear_limit(conn, args.glob))
            print(
                f"{args.glob}: override removed"
                if removed
                else f"{args.glob}: had no override (see `orbit limits`)"
            )
            return 0
        if all(value is None for value in given):
            raise UsageError("give --concurrency, --rate or --group-concurrency (or --clear)")
        try:
            flow = limits(*given)
        except LimitError as exc:
            raise UsageError(f"--{str(exc).replace('_', '-')}") from None
        known = set(discover(load_settings().pipeline_modules))
        in_transaction(lambda conn: operations.set_limit(conn, args.glob, flow, known, operator_name()))
    except operations.OperationError as exc:
        raise UsageError(str(exc)) from None
    print(f"{args.glob}: {operations.describe(flow.as_claim())}; workers apply it on their next claim")
    return 0


def cmd_limits(args: argparse.Namespace) -> int:
    known = {name: p.limits for name, p in discover(load_settings().pipeline_modules).items()}
    shown = in_transaction(lambda conn: operations.limits_in_force(conn, known))
    if args.json:
        print_json(shown)
        return 0
    if shown["pipelines"]:
        print_table(
            shown["pipelines"], ["pipeline", "concurrency", "rate", "group_concurrency", "running", "due"]
        )
    else:
        print("No limits: every pipeline runs as fast as the workers take it.")
    if shown["overrides"]:
        print("\nOverrides (orbit limit GLOB ...):")
        print_table(shown["overrides"], ["pattern", "limits", "set_at", "set_by"])
    return 0


def add_commands(command: Command) -> None:
    sub = command("limit", cmd_limit, "cap the pipelines matching GLOB fleet-wide (overrides the code)")
    sub.add_argument("glob", metavar="GLOB")
    sub.add_argument("--concurrency", type=int, help="at most N running at once across the fleet")
    sub.add_argument("--rate", help="at most N started per window: 100/m, 5/s, 1000/h")
    sub.add_argument("--group-concurrency", type=int, help="at most N running at once per group")
    sub.add_argument("--clear", action="store_true", help="remove the override GLOB")
    sub = command("limits", cmd_limits, "the limits in force, and where each comes from")
    sub.add_argument("--json", action="store_true")
