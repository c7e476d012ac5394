"""The two lines a worker logs about every run, "Run started" and "Run succeeded": at thousands
of runs a second they are the worker's largest cost after the database, so they take the fast
path of app.logs (``run_lines``) when the output is JSON, and structlog's otherwise. Failures,
rarer and richer, are logged through structlog (app.worker.completer)."""

from __future__ import annotations

from typing import Any

from app.logs import run_lines
from app.queries import ClaimedRun
from app.worker.exchange import run_fields


class RunLog:
    def __init__(self, log: Any, worker_id: str) -> None:
        self.log = log  # bound to the worker id, as the fast path's lines are
        self.worker_id = worker_id

    def _fields(self, run: ClaimedRun) -> str:
        return f'"run_id": {run.id}, "pipeline": {run_lines.quote(run.pipeline)}, "attempt": {run.attempt}'

    def started(self, run: ClaimedRun) -> None:
        fields = f'"worker_id": {run_lines.quote(self.worker_id)}, {self._fields(run)}'
        if not run_lines.info(fields, "Run started"):
            self.log.info("Run started", **run_fields(run))

    def succeeded(self, run: ClaimedRun, duration_ms: int) -> None:
        worker = run_lines.quote(self.worker_id)
        fields = f'"worker_id": {worker}, "duration_ms": {duration_ms}, {self._fields(run)}'
        if not run_lines.info(fields, "Run succeeded"):
            self.log.info("Run succeeded", duration_ms=duration_ms, **run_fields(run))
