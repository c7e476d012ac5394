"""What a pipeline receives as ``ctx``: its run, durable steps, a logger and cooperation hooks."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import structlog
from sqlalchemy import Engine

from app import queries
from app.database import Database
from app.errors import LeaseLost, StepError
from app.queries import ClaimedRun
from app.states import StepStatus
from app.storable import storable, storable_json

P = ParamSpec("P")
T = TypeVar("T")


class ChildRuntime:
    """Per-executor-process state shared by the contexts of the runs it executes."""

    def __init__(self, worker_id: str, database: Database) -> None:
        self.worker_id = worker_id
        self.database = database
        self.stop_requested = False
        self.draining = False
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        # Opened on first use: a pipeline without steps never needs a connection.
        if self._engine is None:
            self._engine = self.database.engine(pool_size=1)
        return self._engine

    def request_stop(self) -> None:
        """The worker is shutting down: the current run should stop, and no queued run start."""
        self.stop_requested = True
        self.draining = True

    def reset(self) -> None:
        self.stop_requested = False


class Context:
    """The ``ctx`` of a pipeline call.

    ``ctx.step(name, fn, *args, **kwargs)`` runs ``fn`` once per run: its JSON return value is
    checkpointed before the next step starts, and a retried or resumed run gets the stored value
    back instead of running ``fn`` again. Every attempt gets the value as stored, the JSON round
    trip of what ``fn`` returned (keys are strings, tuples lists, NUL and lone surrogates U+FFFD).
    """

    def __init__(self, run: ClaimedRun, runtime: ChildRuntime, params: dict[str, Any]) -> None:
        self.run_id = run.id
        self.pipeline = run.pipeline
        self.attempt = run.attempt
        self.params = params
        self.worker_id = runtime.worker_id
        self._runtime = runtime
        self._steps_seen: set[str] = set()

    @functools.cached_property
    def log(self) -> Any:
        """A logger bound to this run (made on first use: most runs of a busy worker never log)."""
        return structlog.get_logger("orbit.pipeline").bind(
            run_id=self.run_id, pipeline=self.pipeline, attempt=self.attempt, worker_id=self.worker_id
        )

    @property
    def should_stop(self) -> bool:
        """True once the worker is shutting down: a long step may save its work and return."""
        return self._runtime.stop_requested

    def heartbeat(self) -> None:
        """Confirm this worker still owns the run; raises :class:`LeaseLost` when it does not."""
        with self._runtime.engine.begin() as conn:
            held = queries.heartbeat(conn, self.worker_id, {self.run_id: self.attempt})
        if self.run_id not in held:
            raise LeaseLost(f"run {self.run_id} is no longer owned by worker {self.worker_id}")

    def step(self, name: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` as the durable step ``name`` and return its value as stored."""
        if name in self._steps_seen:
            raise StepError(f"step {name!r} is used twice in run {self.run_id}: names must be unique")
        position = len(self._steps_seen)
        self._steps_seen.add(name)
        with self._runtime.engine.connect() as conn:
            done, output = queries.completed_step(conn, self.run_id, name)
        if done:
            self.log.debug("Step already completed", step=name)
            return output  # type: ignore[no-any-return]
        started = time.monotonic()
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            error = storable(f"{type(exc).__name__}: {exc}")
            self._save(name, position, started, status=StepStatus.FAILED, error=error)
            raise
        try:
            stored = storable_json(value)
        except (TypeError, ValueError, RecursionError) as exc:
            error = storable(f"step {name!r} returned a value that is not JSON: {exc}")
            self._save(name, position, started, status=StepStatus.FAILED, error=error)
            raise StepError(error) from exc
        # Every attempt gets the value as stored, its JSON round trip: a retry can only get that
        # one, and code that works on the first attempt must work on the next (a key 1 read
        # back as "1", a tuple as a list). Refusing such values instead would refuse every tuple.
        output = json.loads(stored)
        self._save(name, position, started, status=StepStatus.SUCCEEDED, output=output)
        return output  # type: ignore[no-any-return]

    def _save(self, name: str, position: int, started: float, **values: Any) -> None:
        values.setdefault("output", None)
        values.setdefault("error", None)
        with self._runtime.engine.begin() as conn:
            saved = queries.save_step(
                conn,
                run_id=self.run_id,
                name=name,
                position=position,
                attempt=self.attempt,
                worker_id=self.worker_id,
                elapsed=time.monotonic() - started,
                **values,
            )
        if not saved:
            raise LeaseLost(f"run {self.run_id} is no longer owned by worker {self.worker_id}")
