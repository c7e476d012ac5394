"""``orbit limit`` and ``orbit limits``: fleet-wide flow control changed at run time.

An override (the limits table) wins over the code's ``@pipeline(..., concurrency=, rate=,
group_concurrency=)`` field by field; workers obey it on their next claim, without a restart."""

from __future__ import annotations

import argparse
from typing import Any

from app import queries
from app.cli.common import (
    Command,
    UsageError,
    in_transaction,
    like_pattern,
    load_settings,
    operator_name,
    print_json,
    print_table,
)
from app.limits import LimitError, Rate, limits
from app.registry import discover


def cmd_limit(args: argparse.Namespace) -> int:
    like = like_pattern(args.glob)
    given = (args.concurrency, args.rate, args.group_concurrency)
    if args.clear:
        if any(value is not None for value in given):
            raise UsageError("--clear takes no limits: it removes the override GLOB")
        removed = in_transaction(lambda conn: queries.clear_limit(conn, args.glob))
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
    values = flow.as_claim()
    in_transaction(lambda conn: queries.set_limit(conn, args.glob, like, values, operator_name()))
    print(f"{args.glob}: {_describe(values)}; workers apply it on their next claim")
    return 0


def cmd_limits(args: argparse.Namespace) -> int:
    known = discover(load_settings().pipeline_modules)

    def read(conn: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        code = {name: p.limits for name, p in known.items()}
        for name in queries.worker_pipelines(conn):
            code.setdefault(name, limits())
        overrides = [dict(row._mapping) for row in queries.list_limits(conn)]
        return queries.effective_limits(conn, code), overrides

    effective, overrides = in_transaction(read)
    rows = [_shown(row) for row in effective if _limited(row)]
    if args.json:
        print_json({"pipelines": rows, "overrides": overrides})
        return 0
    if rows:
        print_table(rows, ["pipeline", "concurrency", "rate", "group_concurrency", "running", "due"])
    else:
        print("No limits: every pipeline runs as fast as the workers take it.")
    if overrides:
        print("\nOverrides (orbit limit GLOB ...):")
        print_table(
            [
                {
                    "pattern": o["pattern"],
                    "limits": _describe(o),
                    "set_at": o["set_at"],
                    "set_by": o["set_by"],
                }
                for o in overrides
            ],
            ["pattern", "limits", "set_at", "set_by"],
        )
    return 0


def _limited(row: dict[str, Any]) -> bool:
    return any(row[field] is not None for field in ("concurrency", "rate_count", "group_concurrency"))


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """A pipeline's limits, each with where it comes from: (code) or (override GLOB)."""

    def source(value: Any, pattern: str | None) -> str | None:
        if value is None:
            return None
        return f"{value} ({'code' if pattern is None else 'override ' + pattern})"

    rate = None if row["rate_count"] is None else Rate(row["rate_count"], row["rate_seconds"])
    return {
        "pipeline": row["name"],
        "concurrency": source(row["concurrency"], row["concurrency_from"]),
        "rate": source(rate, row["rate_from"]),
        "group_concurrency": source(row["group_concurrency"], row["group_concurrency_from"]),
        "running": row["running"],
        "due": row["due"],
    }


def _describe(values: dict[str, Any]) -> str:
    parts = []
    if values.get("concurrency") is not None:
        parts.append(f"concurrency {values['concurrency']}")
    if values.get("rate_count") is not None:
        parts.append(f"rate {Rate(values['rate_count'], values['rate_seconds'])}")
    if values.get("group_concurrency") is not None:
        parts.append(f"group concurrency {values['group_concurrency']}")
    return ", ".join(parts)


def add_commands(command: Command) -> None:
    sub = command("limit", cmd_limit, "cap the pipelines matching GLOB fleet-wide (overrides the code)")
    sub.add_argument("glob", metavar="GLOB")
    sub.add_argument("--concurrency", type=int, help="at most N running at once across the fleet")
    sub.add_argument("--rate", help="at most N started per window: 100/m, 5/s, 1000/h")
    sub.add_argument("--group-concurrency", type=int, help="at most N running at once per group")
    sub.add_argument("--clear", action="store_true", help="remove the override GLOB")
    sub = command("limits", cmd_limits, "the limits in force, and where each comes from")
    sub.add_argument("--json", action="store_true")
