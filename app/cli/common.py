"""What every ``orbit`` command shares: its errors (exit 2 and 1), the settings, the database,
output as JSON or as a table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from app import globs
from app.database import connect
from app.durations import parse_duration
from app.settings import Settings, load_settings_or_exit

# A LIMIT past bigint fails in the database; a million rows is more than a terminal shows.
MAX_LIMIT = 1_000_000


class UsageError(Exception):
    """Bad input: exit status 2."""


class Failed(Exception):
    """An operational failure: exit status 1."""


# A subcommand's parser, given its name, handler and one-line help.
Command = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def load_settings() -> Settings:
    from app import logs

    settings = load_settings_or_exit()
    logs.configure(settings.LOG_LEVEL if settings.LOG_LEVEL != "info" else "warning", "console")
    return settings


def connect_engine(settings: Settings) -> Engine:
    return connect(settings).engine(pool_size=1)


def in_transaction(action: Callable[[Connection], Any]) -> Any:
    engine = connect_engine(load_settings())
    try:
        with engine.begin() as conn:
            return action(conn)
    finally:
        engine.dispose()


def plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def print_json(value: Any) -> None:
    print(json.dumps(value, default=plain, indent=2))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        text = str(plain(value)).replace("\n", " ")
        return text if len(text) <= 60 else text[:57] + "..."

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def positive_duration(flag: str, value: str) -> timedelta:
    try:
        duration = parse_duration(value, bare_unit="s")
    except ValueError as exc:
        raise UsageError(f"{flag} {value!r}: expected {exc}") from None
    if duration <= timedelta(0):
        raise UsageError(f"{flag} {value!r}: must be longer than zero")
    return duration


def like_pattern(glob: str) -> str:
    try:
        return globs.to_like(glob)
    except globs.GlobError as exc:
        raise UsageError(str(exc)) from None


def operator_name() -> str:
    """Who is at the keyboard, as user@host: kept with a pause or a limit they set."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
