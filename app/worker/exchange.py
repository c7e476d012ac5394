"""The worker's turn with the database: outcomes written and runs claimed in one transaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from app import queries
from app.limits import Limits
from app.queries import ClaimedRun, Success, Transition


@dataclass(frozen=True)
class Exchange:
    """``queries.exchange`` with what is fixed for one worker: its id, its pipelines' defaults
    (max attempts, time limit in seconds), the code version it stamps on the runs it claims, and
    its pipelines' limits from the code."""

    worker_id: str
    defaults: dict[str, tuple[int, float]]
    version: str
    limits: Mapping[str, Limits] = field(default_factory=dict)

    def __call__(
        self, conn: Connection, successes: list[Success], transitions: list[Transition], limit: int = 0
    ) -> tuple[set[int], list[ClaimedRun]]:
        """Write the outcomes, claim up to ``limit`` runs; returns the ids still owned (whose
        outcome was written) and the runs claimed."""
        return queries.exchange(
            conn,
            worker_id=self.worker_id,
            successes=successes,
            transitions=transitions,
            limit=limit,
            defaults=self.defaults,
            version=self.version,
            limits=self.limits,
        )


def run_fields(run: ClaimedRun) -> dict[str, Any]:
    """The fields every log line about a run carries."""
    return {"run_id": run.id, "pipeline": run.pipeline, "attempt": run.attempt}
