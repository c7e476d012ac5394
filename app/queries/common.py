"""What the statements share: the run states spelt as SQL (from app.states), the JSON encoding of
jsonb parameters, and the psycopg connection under a SQLAlchemy one for the hot paths."""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Iterable
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from app.states import (
    FINAL_OUTCOMES,
    FINISHED,
    LIVE,
    RESUMABLE,
    ErrorKind,
    RunStatus,
    StepStatus,
    sql_list,
    sql_literal,
)

# States as SQL, from app.states: no statement spells a state or the retry rule by hand.
PENDING = sql_literal(RunStatus.PENDING)
RUNNING = sql_literal(RunStatus.RUNNING)
SUCCEEDED = sql_literal(RunStatus.SUCCEEDED)
FAILED = sql_literal(RunStatus.FAILED)
CANCELLED = sql_literal(RunStatus.CANCELLED)
LIVE_SQL = sql_list(LIVE)
FINISHED_SQL = sql_list(FINISHED)
FINAL_OUTCOMES_SQL = sql_list(FINAL_OUTCOMES)
RESUMABLE_SQL = sql_list(RESUMABLE)
STEP_SUCCEEDED = sql_literal(StepStatus.SUCCEEDED)
INTERRUPTED_KIND = sql_literal(ErrorKind.INTERRUPTED)

_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
# JSONEncoder.encode builds a new C encoder on every call, which costs four times encoding a small
# object; this one is built once. Without a circular-reference check, a cycle ends in the
# RecursionError that deep nesting raises too.
_C_ENCODE = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)

# The channel a new run (the INSERT trigger, migration 0001) and freed room notify on.
RUNS_CHANNEL = "orbit_runs"


def single_line(sql: str) -> str:
    """``sql`` without its comments and runs of white space. psycopg parses a statement's
    placeholders once and keeps the result only for statements up to 4096 characters: the claim,
    written readably, was longer, and every turn parsed it again (about 50 µs). Statements given
    to it hold no string literal with "--" or significant white space."""
    return re.sub(r"\s+", " ", re.sub(r"--[^\n]*", "", sql)).strip()


def text_array(values: Iterable[str]) -> str:
    """``values`` as the text of a PostgreSQL ``text[]``, for a parameter cast to it. A list is
    adapted by psycopg at every execution, looking at its items to choose the array's type: for
    the claim's two lists, about 70 µs of a pickup on a worker that had been idle (measured),
    against nothing for text encoded once."""
    quoted = (value.replace("\\", "\\\\").replace('"', '\\"') for value in values)
    return "{" + ",".join(f'"{value}"' for value in quoted) + "}"


def to_json(value: Any) -> str:
    """JSON text for a jsonb parameter; rejects what Postgres cannot store (NaN, NUL, lone surrogates)."""
    encoded = "".join(_C_ENCODE(value, 0)) if _C_ENCODE is not None else _ENCODER.encode(value)
    if "\\u0000" in encoded:
        raise ValueError("JSON text cannot contain the NUL character (\\u0000)")
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("JSON text must be valid Unicode (a lone surrogate, or undecodable input)") from None
    return encoded


def on_driver(conn: Connection) -> OnDriver:
    """The psycopg connection under ``conn``, for statements run often enough that SQLAlchemy's
    execution (about 80 µs of CPU each, measured) would cost a third of an enqueue. The transaction
    is begun as ``conn.execute`` would begin it (in autocommit there is none to begin), and errors
    are raised as SQLAlchemy's."""
    return OnDriver(conn)


class OnDriver:
    """The block of :func:`on_driver`. A class rather than a generator: it is entered on every
    enqueue and every turn of a worker, and a generator's context manager cost 27 µs more there
    on a process that had been idle (86 against 59 µs, measured)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def __enter__(self) -> psycopg.Connection[Any]:
        conn = self._conn
        driver = conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        if not driver.autocommit and not conn.in_transaction():
            conn.begin()
        return driver

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if isinstance(error, psycopg.Error):
            raise DBAPIError.instance(None, None, error, psycopg.Error) from error
