"""Pipelines: the ``@pipeline`` decorator and discovery of the modules that define them."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from app.durations import parse_duration
from app.limits import LimitError, Limits, limits
from app.sizes import parse_size

if TYPE_CHECKING:
    from app.context import Context

PipelineFn = Callable[["Context", dict[str, Any]], Any]

DEFAULT_MAX_ATTEMPTS = 3
# Past a thousand attempts a run is better served by Snooze; the bound also keeps the retry
# backoff (base * 2^attempt) a finite number.
MAX_ATTEMPTS = 1000


class RegistryError(Exception):
    """A pipeline cannot be registered or found; the message is one line for the user."""


@dataclass(frozen=True)
class Pipeline:
    name: str
    fn: PipelineFn
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: timedelta | None = None
    where: str = field(default="", compare=False)
    schedule: str | None = None
    schedule_tz: str = "UTC"
    backfill: bool = False
    # A pydantic model the params must validate against at enqueue (None: any JSON object).
    params: type[BaseModel] | None = None
    # Fleet-wide flow control (app.limits); overrides in the limits table win over these.
    limits: Limits = field(default_factory=Limits)
    # A run's memory limit in bytes (None: EXECUTOR_MAX_MEMORY, if set).
    max_memory: int | None = None

    def params_schema(self) -> dict[str, Any] | None:
        """The params' JSON Schema, for forms and the API; None without a model."""
        return None if self.params is None else self.params.model_json_schema()


_registry: dict[str, Pipeline] = {}


def pipeline(
    name: str,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | str | None = None,
    schedule: str | None = None,
    schedule_tz: str = "UTC",
    backfill: bool = False,
    params: type[BaseModel] | None = None,
    concurrency: int | None = None,
    rate: str | None = None,
    group_concurrency: int | None = None,
    max_memory: str | int | None = None,
) -> Callable[[PipelineFn], PipelineFn]:
    """Register ``fn(ctx, params)`` as the pipeline ``name``.

    ``timeout`` is in seconds (or a duration such as ``"10m"``); without it the worker's
    ``MAX_EXECUTION_TIMEOUT`` applies. ``max_attempts`` counts the first attempt. ``schedule``
    is a cron expression (``"0 6 * * *"``) read in ``schedule_tz``; slots missed while no worker
    ran are skipped unless ``backfill``. ``params``, a pydantic model, makes every enqueue
    validate the params against it (and store them as the model dumps them, defaults filled in).
    ``concurrency``: at most that many runs at once across the whole fleet; ``rate`` (``"100/m"``,
    also ``/s`` and ``/h``): at most that many started in any such window; ``group_concurrency``:
    at most that many running at once among the runs enqueued with the same ``group``.
    ``max_memory`` (``"500MB"``, or bytes): a run whose executor grows past it is stopped and
    fails with kind ``memory`` (retried like any failure); without it ``EXECUTOR_MAX_MEMORY``
    applies, if set.
    """
    if not isinstance(name, str) or not name or len(name) > 200:
        raise RegistryError(f"pipeline name must be 1 to 200 characters: {name!r}")
    problem = attempts_problem(max_attempts)
    if problem:
        raise RegistryError(f"pipeline {name}: max_attempts {problem}")
    limit = None if timeout is None else _timeout(name, timeout)
    if schedule is not None:
        check_schedule(name, schedule, schedule_tz)
    if params is not None and not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise RegistryError(f"pipeline {name}: params must be a pydantic model class, not {params!r:.60}")
    try:
        flow = limits(concurrency, rate, group_concurrency)
    except LimitError as exc:
        raise RegistryError(f"pipeline {name}: {exc}") from None
    memory = None if max_memory is None else _memory(name, max_memory)

    def register(fn: PipelineFn) -> PipelineFn:
        where = f"{fn.__module__}.{fn.__qualname__}"
        existing = _registry.get(name)
        if existing is not None and existing.where != where:
            raise RegistryError(f"pipeline {name!r} is defined twice: in {existing.where} and in {where}")
        _registry[name] = Pipeline(
            name, fn, max_attempts, limit, where, schedule, schedule_tz, backfill, params, flow, memory
        )
        return fn

    return register


def attempts_problem(max_attempts: object) -> str | None:
    """What is wrong with ``max_attempts`` (None: nothing), for a message naming where it came from."""
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        return f"must be a whole number, not {max_attempts!r}"
    if not 1 <= max_attempts <= MAX_ATTEMPTS:
        return f"must be 1 to {MAX_ATTEMPTS}, not {max_attempts!r}"
    return None


def _timeout(name: str, timeout: float | str) -> timedelta:
    try:
        limit = parse_duration(timeout, bare_unit="s")
    except ValueError as exc:
        raise RegistryError(f"pipeline {name}: timeout {timeout!r}: expected {exc}") from None
    if limit <= timedelta(0):
        raise RegistryError(f"pipeline {name}: timeout must be greater than zero")
    return limit


def _memory(name: str, max_memory: str | int) -> int:
    try:
        return parse_size(max_memory)
    except ValueError as exc:
        raise RegistryError(f"pipeline {name}: max_memory {max_memory!r}: expected {exc}") from None


def check_schedule(name: str, schedule: str, tz: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from croniter import croniter

    if not croniter.is_valid(schedule) or len(schedule.split()) != 5:
        raise RegistryError(
            f"pipeline {name}: bad cron expression {schedule!r} (expected 5 fields: 0 6 * * *)"
        )
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise RegistryError(f"pipeline {name}: unknown time zone {tz!r}") from None


def get(name: str) -> Pipeline:
    try:
        return _registry[name]
    except KeyError:
        raise RegistryError(f"unknown pipeline {name!r}") from None


def all_pipelines() -> dict[str, Pipeline]:
    return dict(_registry)


def discover(extra_modules: Iterable[str] = ()) -> dict[str, Pipeline]:
    """Import every module of ``app.pipelines`` and each of ``extra_modules``, which are looked
    for in the current directory too."""
    package = importlib.import_module("app.pipelines")
    names = [info.name for info in pkgutil.walk_packages(package.__path__, "app.pipelines.")]
    extra = list(extra_modules)
    if extra:
        _search_current_directory()
    for module in [*names, *extra]:
        try:
            importlib.import_module(module)
        except (ImportError, RegistryError) as exc:
            raise RegistryError(f"cannot import pipeline module {module!r}: {_one_line(exc)}") from None
        except Exception as exc:  # the module's own code failed (a SyntaxError included)
            message = f"{type(exc).__name__}: {_one_line(exc)}"
            raise RegistryError(f"cannot import pipeline module {module!r}: {message}") from None
    return all_pipelines()


def _search_current_directory() -> None:
    """Let ``import`` find modules in the current directory, as ``python -m app.worker`` does: the
    ``orbit`` command, started as a script, would otherwise miss the user's own pipelines there.
    Last on the path, so that a file there never shadows an installed module."""
    here = os.getcwd()
    if all(os.path.abspath(entry or ".") != here for entry in sys.path):
        sys.path.append(here)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
