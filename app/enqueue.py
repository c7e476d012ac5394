"""Enqueueing runs from Python: one at a time (optionally in the caller's transaction) or many."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from app import jsontext, queries, registry
from app.deadlines import DEADLINES
from app.durations import parse_duration
from app.queries import NewRun

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.database import Database, KeptConnection

MAX_PARAMS_BYTES = 1024 * 1024
MAX_KEY_LENGTH = 500
MAX_GROUP_LENGTH = 200  # the run_group column's check


class EnqueueError(ValueError):
    """The run cannot be enqueued as asked; nothing was inserted. One line for the user."""


@cache
def default_database() -> Database:
    """The configured database, for callers that pass no connection."""
    from app.database import resolve
    from app.settings import load_settings

    return resolve(load_settings())


@cache
def default_engine() -> Engine:
    """An engine of the configured database, for callers that pass no connection."""
    return default_database().engine(pool_size=5)


_local = threading.local()


def _kept() -> KeptConnection:
    """This thread's kept connection to the default engine: no check-out or ping per enqueue."""
    kept: KeptConnection | None = getattr(_local, "kept", None)
    if kept is None:
        from app.database import KeptConnection

        kept = _local.kept = KeptConnection(default_engine())
    return kept


def enqueue(
    pipeline: str,
    params: Mapping[str, Any] | None = None,
    *,
    priority: int = 0,
    run_at: datetime | None = None,
    delay: float | str | timedelta | None = None,
    max_attempts: int | None = None,
    timeout: float | str | timedelta | None = None,
    key: str | None = None,
    group: str | None = None,
    connection: Connection | Session | None = None,
) -> int:
    """Enqueue one run of ``pipeline`` and return its id.

    With ``connection`` (a SQLAlchemy Connection or Session) the run is inserted in the caller's
    transaction: it exists only if the caller commits. ``delay`` and ``timeout`` are seconds or a
    duration (``"5m"``). With ``key``, while a run with that key is pending or running, its id is
    returned instead of inserting another. ``group`` names the run's group for the pipeline's
    ``group_concurrency`` (at most that many runs of one group run at once).
    """
    run = new_run(pipeline, params, priority, delay, max_attempts, timeout, key, run_at, group)
    if connection is not None:
        conn = connection if isinstance(connection, Connection) else connection.connection()
        return queries.insert_run(conn, run)
    # One statement, committed on its own: no BEGIN and COMMIT round trips. insert_run's key
    # check needs no transaction (each statement sees what is committed when it starts).
    kept = _kept()
    conn = kept.get()
    try:
        with DEADLINES.bound(kept.socket, default_database().deadline):
            return queries.insert_run(conn, run)
    except SQLAlchemyError:
        kept.drop()
        raise


def _bounded(conn: Connection) -> AbstractContextManager[None]:
    """The deadline of a statement Orbit runs on its own connection (the driver's statements
    bypass the engine's, see app.database.bound_statements)."""
    fileno = conn.connection.driver_connection.fileno()  # type: ignore[union-attr]
    return DEADLINES.bound(fileno, default_database().deadline)


def enqueue_many(
    runs: Iterable[tuple[str, Mapping[str, Any] | None]],
    *,
    priority: int = 0,
    connection: Connection | Session | None = None,
) -> list[int]:
    """Enqueue many ``(pipeline, params)`` runs in one statement; all or nothing."""
    batch = _new_runs(runs, priority)
    if not batch:
        return []
    if connection is not None:
        conn = connection if isinstance(connection, Connection) else connection.connection()
        return queries.insert_runs(conn, batch)
    with default_engine().begin() as conn, _bounded(conn):
        return queries.insert_runs(conn, batch)


def new_run(
    pipeline: str,
    params: Mapping[str, Any] | None,
    priority: int = 0,
    delay: float | str | timedelta | None = None,
    max_attempts: int | None = None,
    timeout: float | str | timedelta | None = None,
    key: str | None = None,
    run_at: datetime | None = None,
    group: str | None = None,
) -> NewRun:
    """Validate one run before anything touches the database."""
    model = _check_pipeline(pipeline).params
    params, encoded = _checked_params(params if model is None else _validated(model, params))
    _check_priority(priority)
    problem = None if max_attempts is None else registry.attempts_problem(max_attempts)
    if problem:
        raise EnqueueError(f"max_attempts {problem}")
    _check_key(key)
    _check_text("group", group, MAX_GROUP_LENGTH, shortest=1)
    return NewRun(
        pipeline,
        params,  # already encoded, above: later changes to the caller's dict change nothing
        priority,
        _seconds("delay", delay, allow_zero=True),
        run_at,
        max_attempts,
        None if timeout is None else _seconds("timeout", timeout, allow_zero=False),
        key,
        encoded,
        group,
    )


def _new_runs(runs: Iterable[tuple[str, Mapping[str, Any] | None]], priority: int) -> list[NewRun]:
    """``new_run`` for each run of a batch, checking once what is the same for many runs (the
    priority, each pipeline): per run, that was a third of ``enqueue_many``'s own time."""
    _check_priority(priority)
    models: dict[str, type[BaseModel] | None] = {}
    batch = []
    for pipeline, given in runs:
        if pipeline not in models:
            models[pipeline] = _check_pipeline(pipeline).params
        model = models[pipeline]
        params, encoded = _checked_params(given if model is None else _validated(model, given))
        batch.append(NewRun(pipeline, params, priority, 0.0, None, None, None, None, encoded))
    return batch


def _check_pipeline(pipeline: str) -> registry.Pipeline:
    if not isinstance(pipeline, str):
        raise EnqueueError(f"pipeline must be a name, not {pipeline!r}")
    if not registry.all_pipelines():
        registry.discover(_extra_modules())
    try:
        return registry.get(pipeline)
    except registry.RegistryError as exc:
        raise EnqueueError(str(exc)) from None


def _validated(model: type[BaseModel], params: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The params as the pipeline's model accepts them, or EnqueueError naming the first problem."""
    if params is not None and not isinstance(params, Mapping):
        raise EnqueueError(f"params must be a JSON object, not {type(params).__name__}")
    try:
        return model.model_validate(dict(params or {})).model_dump(mode="json")
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "params"
        more = exc.error_count() - 1
        also = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise EnqueueError(f"params.{where}: {error['msg']}{also}") from None


def _checked_params(params: Mapping[str, Any] | None) -> tuple[Mapping[str, Any], str]:
    """The params (``{}`` for None) and their JSON text."""
    if params is None:
        params = {}
    if type(params) is not dict and not isinstance(params, Mapping):  # the ABC check is slow
        raise EnqueueError(f"params must be a JSON object, not {type(params).__name__}")
    return params, _check_json(params)


def _check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 2**31 - 1:
        raise EnqueueError(f"priority must be a whole number, not {priority!r}")


def _check_key(key: str | None) -> None:
    # The key is in a unique index, whose entries must fit an index page (2,704 bytes).
    _check_text("key", key, MAX_KEY_LENGTH)


def _check_text(what: str, value: str | None, longest: int, shortest: int = 0) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not shortest <= len(value) <= longest:
        size = f"at most {longest}" if shortest == 0 else f"{shortest} to {longest}"
        raise EnqueueError(f"{what} must be text of {size} characters, not {value!r:.80}")
    if "\x00" in value:
        raise EnqueueError(f"{what} cannot hold a NUL character (PostgreSQL text cannot store it)")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise EnqueueError(f"{what} is not valid text (a lone surrogate): {value!r:.80}") from None


def _check_json(params: Mapping[str, Any]) -> str:
    """The params as JSON text, checked: encoded once, here, and stored as they are."""
    try:
        encoded = queries.to_json(params)
    except RecursionError:
        raise EnqueueError("params are nested too deeply to be stored as JSON") from None
    except (TypeError, ValueError) as exc:
        raise EnqueueError(f"params are not valid JSON: {exc}") from None
    if jsontext.too_deep(encoded):
        raise EnqueueError(f"params are nested too deeply (more than {jsontext.MAX_DEPTH} levels)")
    # A character is at most 4 bytes of UTF-8: short text needs no second encoding to measure.
    if len(encoded) > MAX_PARAMS_BYTES // 4 and len(encoded.encode()) > MAX_PARAMS_BYTES:
        raise EnqueueError(f"params are larger than {MAX_PARAMS_BYTES} bytes of JSON")
    return encoded


def _seconds(name: str, value: float | str | timedelta | None, *, allow_zero: bool) -> float:
    if value is None:
        return 0.0
    try:
        seconds = parse_duration(value, bare_unit="s").total_seconds()
    except ValueError as exc:
        raise EnqueueError(f"{name} must be seconds or {exc}, not {value!r}") from None
    if not math.isfinite(seconds) or (seconds <= 0 and not allow_zero):
        raise EnqueueError(f"{name} must be greater than zero, not {value!r}")
    return seconds


def _extra_modules() -> list[str]:
    from app.settings import load_settings

    return load_settings().pipeline_modules
